"""Run `dals` in-process in a folder of its own, with everything past validation fenced off.

Bad-input tests need two things from a command: what it printed, and proof that it started nothing.
`fenced()` makes every entry point that would start Ray, MLflow or Optuna, or contact a cluster,
raise `Started` (which the CLI does not catch); `run_cli` reports the exit code, the output, and
anything left in the folder.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from sweeps.cli import main as cli
from sweeps.train.config import TrialConfig

WORK: Counter[str] = Counter()  # TrialConfig.create calls under fenced(): a command's work, counted
# A verdict's work, bounded: validation builds one trial config per strategy and dataset (at most 140
# today, the paper spec's 19 x 5 and its defaults), never one per trial, so a huge grid is refused
# before it expands. HANG_S only catches a hang: every verdict takes under 2 s today.
MAX_CONFIGS = 1_000
HANG_S = 120.0


class Started(Exception):
    """Raised where a command would start Ray, MLflow or Optuna, or contact a cluster."""


@contextlib.contextmanager
def fenced() -> Iterator[None]:
    """Reaching a sweep, a study, Ray or a cluster raises Started; no address or store comes from
    the environment, and no data from the network."""
    import ray.job_submission

    from sweeps.runner import grid, optuna, studies

    def started(*args: Any, **kwargs: Any) -> None:
        raise Started

    create = TrialConfig.create

    def counted(cls: type, **kwargs: Any) -> TrialConfig:
        WORK["configs"] += 1
        return create(**kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TrialConfig, "create", classmethod(counted))
        for module, name in ((grid, "run_sweep"), (grid, "init_ray"), (optuna, "run_tune"), (optuna, "init_ray"),
                             (studies, "export_preset"), (ray.job_submission, "JobSubmissionClient")):
            mp.setattr(module, name, started)
        for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI"):
            mp.delenv(var, raising=False)
        mp.setenv("DALS_OFFLINE", "1")
        _warm_up()
        yield


def _warm_up() -> None:
    """Import what validation imports (torch, the trainer, the strategies) once, so a command's
    time is its own."""
    from sweeps.spec.sweep import load_spec
    from sweeps.spec.tune import load_tune_spec

    load_spec("quick")
    load_tune_spec("tune-dals-cpu")


@dataclass
class Verdict:
    code: int | str  # the exit code, or "started"
    out: str
    err: str
    seconds: float
    left_behind: list[str]  # what the command added to its folder
    configs: int  # trial configs it built (validation is one per strategy and dataset, not per trial)


def run_cli(argv: list[str], folder: Path) -> Verdict:
    """`dals ARGV` with `folder` as the working directory."""
    import ray

    before = set(os.listdir(folder))
    WORK.clear()
    out, err = io.StringIO(), io.StringIO()
    start = time.monotonic()
    with contextlib.chdir(folder), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code: int | str = cli.main(argv)
        except Started:
            code = "started"
    assert not ray.is_initialized()
    left = sorted(set(os.listdir(folder)) - before)
    return Verdict(code, out.getvalue(), err.getvalue(), time.monotonic() - start, left, WORK["configs"])


def one_line_error(v: Verdict, *words: str) -> str:
    """Exit 2 and exactly one `dals...: error:` line on stderr with `words` in it, no traceback,
    nothing on stdout, nothing left behind; returns the line after `error: `."""
    assert v.code == 2, (v.code, v.err, v.out[-300:])
    assert v.err.endswith("\n") and v.err.count("\n") == 1, v.err
    assert v.err.startswith("dals") and ": error: " in v.err and "Traceback" not in v.err, v.err
    line = v.err.split(": error: ", 1)[1].rstrip("\n")
    for word in words:
        assert word in line, (word, line)
    assert v.out == "" and v.left_behind == [], (v.out[-300:], v.left_behind)
    return line
