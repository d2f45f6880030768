"""`dals train`: one trial, its curve printed per epoch. Its flags are `TrialConfig`'s fields."""
from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from sweeps.cli.args import finite, parse_hp, seed
from sweeps.train.config import TrialConfig
from sweeps.train.trial import CHECKPOINT_FILE, Trial

METRIC_COLUMNS = (  # (key, header, width, format spec)
    ("epoch", "epoch", 5, "d"), ("train_loss", "train_loss", 10, ".4f"), ("eval_accuracy", "eval_acc", 8, ".4f"),
    ("eval_loss", "eval_loss", 9, ".4f"), ("lr_bottom", "lr_bottom", 9, ".2e"), ("lr_top", "lr_top", 9, ".2e"),
    ("seconds", "sec", 7, ".2f"),
)
FLAG_TYPES = {"seed": seed}  # other int fields take int, float fields float, the rest str


def header_row() -> str:
    return "  ".join(f"{header:>{width}}" for _, header, width, _ in METRIC_COLUMNS)


def format_row(metrics: dict[str, Any]) -> str:
    """One epoch as a table row (non-finite values print as nan/inf)."""
    return "  ".join(f"{'-':>{w}}" if metrics.get(k) is None else f"{metrics[k]:>{w}{spec}}"
                     for k, _, w, spec in METRIC_COLUMNS)


def _train(args: argparse.Namespace) -> int:
    if args.checkpoint and Path(args.checkpoint).exists() and not Path(args.checkpoint).is_dir():
        raise ValueError(f"--checkpoint {args.checkpoint}: a file, not a folder")
    hp = parse_hp(args.hp or [])
    if args.lr is not None:
        hp["lr"] = args.lr
    given = {k: getattr(args, k) for k in TrialConfig.keys() if k != "hp"}
    trial = Trial(TrialConfig.create(**given, hp=hp))
    if args.checkpoint and (Path(args.checkpoint) / CHECKPOINT_FILE).is_file():
        trial.restore(args.checkpoint)
    cfg = trial.config
    if not args.json:
        print(f"dals train: {cfg.strategy} on {cfg.dataset} ({cfg.regime}, {cfg.model}), "
              f"seed {cfg.seed}, {cfg.epochs} epochs x {trial.steps_per_epoch} steps, "
              f"{len(trial.train_y)} train / {len(trial.eval_y)} eval, hp {json.dumps(cfg.hp)}")
        print(header_row(), flush=True)
    while not trial.done:
        metrics = trial.run_epoch()
        if args.checkpoint:
            trial.save(args.checkpoint)
        if args.json:
            print(json.dumps({k: finite(v) for k, v in metrics.items() if k != "status"}), flush=True)
        else:
            print(format_row(metrics), flush=True)
    best = max(trial.history, key=lambda m: m["eval_accuracy"]) if trial.history else None
    final = {"status": str(trial.status), "epochs": trial.epoch,
             "final_eval_accuracy": trial.history[-1]["eval_accuracy"] if trial.history else None,
             "best_eval_accuracy": best["eval_accuracy"] if best else None,
             "best_epoch": best["epoch"] if best else None}
    if args.json:
        print(json.dumps({k: finite(v) for k, v in final.items()}))
    else:
        print(f"status: {final['status']} after {final['epochs']} epochs; "
              f"best eval_accuracy {final['best_eval_accuracy']:.4f} at epoch {final['best_epoch']}")
    return 0


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per `TrialConfig` field (`--batch-size` for `batch_size`); unset flags take the
    dataset's defaults."""
    for f in fields(TrialConfig):
        flag, meta = "--" + f.name.replace("_", "-"), dict(f.metadata)
        if f.name == "hp":
            p.add_argument("--hp", action="append", metavar="KEY=VALUE",
                           help=f"{meta['help']}: KEY=VALUE, repeatable (values parse as JSON)")
        elif f.type in (bool, "bool"):
            p.add_argument(flag, action="store_true", help=meta["help"])
        else:
            default = f.default if f.name in ("strategy", "dataset", "seed") else None
            kind = FLAG_TYPES.get(f.name, int if "int" in str(f.type) else float if "float" in str(f.type) else str)
            p.add_argument(flag, type=kind, default=default, **meta)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train one strategy on one dataset and print the per-epoch curve",
        description="Train one trial. Unset flags take the dataset's defaults "
                    "(sweeps.train.config.DATASET_DEFAULTS).")
    _add_config_flags(p)
    p.add_argument("--lr", type=float, help="learning rate (same as --hp lr=...)")
    p.add_argument("--checkpoint", metavar="DIR", help="save every epoch to DIR; resume from it if it holds one")
    p.add_argument("--json", action="store_true", help="one JSON object per epoch, then a status line")
    p.set_defaults(func=_train)
