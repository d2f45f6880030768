"""Optimizer steps for a sweep's epoch rows, so curves can be drawn against steps: fine-tuning
datasets differ in size and batch, and an epoch of RTE is not an epoch of IMDb. Rows written before
trials reported `steps` get it from their config (the rows and batch their trial trained on)."""
from __future__ import annotations

import json

import pandas as pd

from sweeps.spec.sweep import Spec
from sweeps.train.trial import steps_per_epoch


def with_steps(df: pd.DataFrame, spec: Spec) -> pd.DataFrame:
    """``df`` (one row per trial and epoch, with `key` and `epoch`) with a `steps` column: the trial's
    own where it reported one, else epoch x the steps per epoch of the spec's trial of that key."""
    out = df.copy()
    if "steps" not in out:
        out["steps"] = float("nan")
    missing = out["steps"].isna()
    if missing.any():
        wanted = set(out.loc[missing, "key"])
        per_epoch: dict[str, int] = {}  # trials that differ only in strategy or seed draw as many rows
        spe = {}
        for t in spec.trials():
            if t.key in wanted:
                cfg = t.config()
                sig = json.dumps({**cfg.to_dict(), "strategy": None, "seed": None, "hp": None}, sort_keys=True)
                if sig not in per_epoch:
                    per_epoch[sig] = steps_per_epoch(cfg)
                spe[t.key] = per_epoch[sig]
        out.loc[missing, "steps"] = out.loc[missing, "epoch"] * out.loc[missing, "key"].map(spe)
    return out
