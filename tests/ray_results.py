"""Reading Ray Tune's result.json files while a sweep may still write them."""
from __future__ import annotations

import json
import os
from pathlib import Path


def polled_sweep_env(**extra: str) -> dict[str, str]:
    """The environment of a `dals` subprocess whose storage a test polls: Tune snapshots its state
    every second (not "auto", ~10 s), since trial rows reach the storage with a snapshot and whole
    sweeps here last seconds; unbuffered output for the test's log."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "TUNE_GLOBAL_CHECKPOINT_S": "1", **extra}


def rows(result: Path) -> list[dict]:
    """A result.json's rows, whole lines only: a test polling a running sweep may meet a row half
    written, which is not there yet rather than an error."""
    if not result.exists():
        return []
    return [json.loads(line) for line in result.read_text().splitlines(keepends=True)
            if line.endswith("\n") and line.strip()]


def trial_rows(folder: str | Path) -> dict[str, list[dict]]:
    """Trial key -> the result rows Ray wrote for it (trials with none yet left out)."""
    out: dict[str, list[dict]] = {}
    for result in Path(folder).glob("*/result.json"):
        found = rows(result)
        if found:
            out[found[0]["config"]["trial"]["key"]] = found
    return out
