"""The ``dals`` command line. Subcommands register themselves: each entry of :data:`COMMANDS` is a
``register(subparsers)`` that adds its parser and sets ``func(args) -> int`` (the exit code).

Bad input (a bad argument, ``ValueError``, ``OSError``) is one ``dals...: error: ...`` line on stderr,
exit 2, before anything starts: no traceback, no Ray, no files.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Callable, NoReturn, Sequence
from urllib.parse import urlsplit

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
MAX_MESSAGE = 1000  # characters of an error line (a message may quote a huge bad value)
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


def check_address(address: str, flag: str = "--address") -> str:
    """`auto`, `local`, HOST:PORT or SCHEME://HOST[:PORT]; ValueError naming the flag otherwise, so a
    typo fails here rather than after a sweep has made its folders and MLflow run."""
    if address in ("auto", "local"):
        return address
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if not parts.hostname or port == -1 or any(c.isspace() for c in address) or parts.path not in ("", "/"):
        raise ValueError(f"{flag} {address!r}: expected HOST:PORT, SCHEME://HOST:PORT, auto or local")
    return address


def one_line(message: str) -> str:
    """The first line of a message, cut to MAX_MESSAGE characters, any URL password masked."""
    from sweeps.redact import redact

    line = redact((message.strip().splitlines() or [""])[0])
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 3] + "..."


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (no usage block): `dals sweep run: error: ... (-h: help)`."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {one_line(message)} (see `{self.prog} -h`)\n")


def _seed(text: str) -> int:
    """--seed: a whole number the trainers' 32-bit seeding takes."""
    from sweeps.spec import MAX_SEED

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected 0..{MAX_SEED}, got {value}")
    return value


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
    from pathlib import Path

    from sweeps.trainable import Trial

    if args.checkpoint and Path(args.checkpoint).exists() and not Path(args.checkpoint).is_dir():
        raise ValueError(f"--checkpoint {args.checkpoint}: a file, not a folder")
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
    p.add_argument("--seed", type=_seed, default=0)
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
    parser = Parser(prog="dals", description="Learning-rate strategies, trials and sweeps.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS + [r for r in _other_commands() if r not in COMMANDS]:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dals`` console script; returns the exit code (argparse's too: -h is 0)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as exc:  # OSError: an unreadable file, a folder given for a file...
        print(f"dals: error: {one_line(str(exc)) or type(exc).__name__}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("dals: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
