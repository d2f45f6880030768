"""The ``dals`` command line. Subcommands register themselves: each entry of :data:`COMMANDS` is a
``register(subparsers)`` that adds its parser and sets ``func(args) -> int`` (the exit code).

Bad input (``ValueError``, ``FileNotFoundError``) is one ``dals: error: ...`` line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Callable, Sequence

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
METRIC_COLUMNS = (  # (key, header, width, format spec)
    ("epoch", "epoch", 5, "d"), ("train_loss", "train_loss", 10, ".4f"), ("eval_accuracy", "eval_acc", 8, ".4f"),
    ("eval_loss", "eval_loss", 9, ".4f"), ("lr_bottom", "lr_bottom", 9, ".2e"), ("lr_top", "lr_top", 9, ".2e"),
    ("seconds", "sec", 7, ".2f"),
)


def parse_hp(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs -> dict; values are JSON when they parse (1e-3, true, 5), else strings."""
    hp: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--hp expects key=value, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        hp[key.strip()] = value
    return hp


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: non-finite floats become null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def header_row() -> str:
    return "  ".join(f"{header:>{width}}" for _, header, width, _ in METRIC_COLUMNS)


def format_row(metrics: dict[str, Any]) -> str:
    """One epoch as a table row (non-finite values print as nan/inf)."""
    return "  ".join(f"{'-':>{w}}" if metrics.get(k) is None else f"{metrics[k]:>{w}{spec}}"
                     for k, _, w, spec in METRIC_COLUMNS)


def _train(args: argparse.Namespace) -> int:
    from sweeps.trainable import Trial

    hp = parse_hp(args.hp or [])
    if args.lr is not None:
        hp["lr"] = args.lr
    keys = ("strategy", "dataset", "seed", "epochs", "batch_size", "max_train", "max_eval", "max_length",
            "model", "regime", "data_dir", "eval_file", "text_column", "text_column2", "label_column",
            "device")
    config = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    config.update(hp=hp, augment=args.augment)
    trial = Trial(config)
    if args.checkpoint and _has_checkpoint(args.checkpoint):
        trial.restore(args.checkpoint)
    cfg = trial.config
    if not args.json:
        print(f"dals train: {cfg['strategy']} on {cfg['dataset']} ({cfg['regime']}, {cfg['model']}), "
              f"seed {cfg['seed']}, {cfg['epochs']} epochs x {trial.steps_per_epoch} steps, "
              f"{len(trial.train_y)} train / {len(trial.eval_y)} eval, hp {json.dumps(cfg['hp'])}")
        print(header_row(), flush=True)
    while not trial.done:
        metrics = trial.run_epoch()
        if args.checkpoint:
            trial.save(args.checkpoint)
        if args.json:
            print(json.dumps({k: _finite(v) for k, v in metrics.items() if k != "status"}), flush=True)
        else:
            print(format_row(metrics), flush=True)
    best = max(trial.history, key=lambda m: m["eval_accuracy"]) if trial.history else None
    final = {"status": trial.status, "epochs": trial.epoch,
             "final_eval_accuracy": trial.history[-1]["eval_accuracy"] if trial.history else None,
             "best_eval_accuracy": best["eval_accuracy"] if best else None,
             "best_epoch": best["epoch"] if best else None}
    if args.json:
        print(json.dumps({k: _finite(v) for k, v in final.items()}))
    else:
        print(f"status: {final['status']} after {final['epochs']} epochs; "
              f"best eval_accuracy {final['best_eval_accuracy']:.4f} at epoch {final['best_epoch']}")
    return 0


def _has_checkpoint(path: str) -> bool:
    from pathlib import Path

    from sweeps.trainable import CHECKPOINT_FILE

    return (Path(path) / CHECKPOINT_FILE).is_file()


def register_train(subparsers: argparse._SubParsersAction) -> None:
    """``dals train``: one trial, its curve printed per epoch (flags mirror the trial config keys)."""
    p = subparsers.add_parser(
        "train", help="train one strategy on one dataset and print the per-epoch curve",
        description="Train one trial. Datasets: synthetic, synthetic-gmm, cifar10, trec6, trec6-scratch, rte, "
                    "imdb, file:PATH (csv/tsv/jsonl/parquet) or hf:ID[:CONFIG]. Unset flags take the "
                    "dataset's defaults (sweeps.trainable.DEFAULTS).")
    p.add_argument("--strategy", default="dals", help="a dalsopt strategy id (default: dals)")
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float, help="learning rate (same as --hp lr=...)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-train", type=int, help="stratified seeded subset of the train split")
    p.add_argument("--max-eval", type=int, help="stratified subset of the eval split")
    p.add_argument("--max-length", type=int, help="tokens per text (truncation)")
    p.add_argument("--model", help="mlp[:H1,H2..], cnn, resnet18, textcnn, bilstm, minilm, HF id or folder")
    p.add_argument("--regime", choices=("scratch", "finetune"))
    p.add_argument("--data-dir", help="folder holding the dataset folders (trec/, rte/, imdb/, cifar-10-batches-py/)")
    p.add_argument("--eval-file", help="file: datasets: a separate eval table (hf: the eval split's name)")
    p.add_argument("--text-column", help="file:/hf: datasets: text column (default: text)")
    p.add_argument("--text-column2", help="file:/hf: datasets: second text column, for sentence pairs")
    p.add_argument("--label-column", help="file:/hf: datasets: label column (default: label)")
    p.add_argument("--hp", action="append", metavar="KEY=VALUE", help="strategy hyperparameter (repeatable)")
    p.add_argument("--augment", action="store_true", help="random crop + flip (image datasets)")
    p.add_argument("--device", help="cpu, cuda[:N] (default: cuda if available)")
    p.add_argument("--checkpoint", metavar="DIR", help="save every epoch to DIR; resume from it if it holds one")
    p.add_argument("--json", action="store_true", help="one JSON object per epoch, then a status line")
    p.set_defaults(func=_train)


def _other_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """The sweep service's subcommands (sweeps.commands.REGISTER), when that module is present."""
    try:
        from sweeps.commands import REGISTER
    except ModuleNotFoundError as exc:
        if exc.name != "sweeps.commands":
            raise
        return []
    return list(REGISTER)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [register_train]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dals", description="Learning-rate strategies, trials and sweeps.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS + [r for r in _other_commands() if r not in COMMANDS]:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dals`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"dals: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("dals: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
