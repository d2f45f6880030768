"""A one-line sweep status (done / running / pending, best so far, ETA) instead of Ray's tables.

On a terminal the line is rewritten in place whenever a trial changes state; in a log (CI, a
pipe) a new line is printed when a trial ends, and every `every_s` seconds otherwise.

The ETA is the epochs still to train (each unfinished trial's budget less the epochs it reported)
over the rate epochs were reported at since this run started: it counts the finished trials'
epochs and the running trials' progress, and the concurrency is in the rate. Trials that ASHA
stops early make it an overestimate.
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from ray.tune import Callback

from sweeps.runner import resources

Best = tuple[float, str]  # (metric value, trial key)
PENDING_NOTE_S = 60.0  # a trial pending longer than this: the line says what it waits for


def clock(seconds: float) -> str:
    """`1:05`, or `2:03:09` past an hour."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def status_line(name: str, elapsed_s: float, total: int, trials: list, metric: str,
                best: Best | None, eta_s: float | None = None) -> str:
    """`[quick 1:05] 5/18 done, 1 failed · 2 running · 10 pending · best eval_accuracy 0.9810 (dals/synthetic/0) · ETA 2:10`.

    `total` is the grid's size: Ray creates trials lazily, so `trials` may not hold them all yet.
    """
    counts = Counter(t.status for t in trials)
    done = counts["TERMINATED"] + counts["ERROR"]
    parts = [f"{done}/{total} done" + (f", {counts['ERROR']} failed" if counts["ERROR"] else ""),
             f"{counts['RUNNING']} running", f"{total - done - counts['RUNNING']} pending"]
    if best is not None:
        parts.append(f"best {metric} {best[0]:.4f} ({best[1]})")
    if eta_s is not None and done < total:
        parts.append(f"ETA {clock(eta_s)}")
    return f"[{name} {clock(elapsed_s)}] " + " · ".join(parts)


def trial_budget(trial: Any, default: int | None) -> int | None:
    """The epochs a trial trains at most: its config's (a sweep trial), else `default`."""
    epochs = trial.config.get("trial", {}).get("config", {}).get("epochs")
    return int(epochs) if isinstance(epochs, int) else default


def epochs_left(trials: list, total: int, default: int | None) -> int | None:
    """Epochs the unfinished trials still have to train (trials Ray has not created yet: the
    known trials' mean budget, or `default`); None when no budget is known."""
    budgets = [trial_budget(t, default) for t in trials]
    known = [b for b in budgets if b is not None]
    if len(known) < len(trials) or (total > len(trials) and not known):
        return None
    left = sum(max(b - int((t.last_result or {}).get("epoch", 0) or 0), 0)
               for t, b in zip(trials, budgets) if t.status not in ("TERMINATED", "ERROR"))
    unknown_budget = default if default is not None else sum(known) / len(known)
    return int(left + max(total - len(trials), 0) * unknown_budget)


def eta(trials: list, total: int, default: int | None, epochs_seen: int, elapsed_s: float) -> float | None:
    """Seconds until the last epoch at this run's rate so far (None before its first epoch)."""
    left = epochs_left(trials, total, default)
    if left is None or epochs_seen < 1 or elapsed_s <= 0:
        return None
    return left * elapsed_s / epochs_seen


def better(best: Best | None, value: Any, key: str, mode: str) -> Best | None:
    """`best`, or (value, key) when that is a finite value beating it."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return best
    if best is None or (value > best[0] if mode == "max" else value < best[0]):
        return float(value), key
    return best


def error_summary(trial: Any) -> str:
    """The last line of a failed trial's traceback (`FileNotFoundError: ...`) and where the rest is."""
    try:
        lines = [line for line in Path(trial.error_file).read_text().splitlines() if line.strip()]
    except (OSError, TypeError):
        lines = []
    stored = f"{trial.path}/error.txt" if getattr(trial, "path", None) else trial.error_file
    return f"{lines[-1].strip() if lines else 'unknown error'} (traceback: {stored})"


def trial_key(trial: Any) -> str:
    """A sweep trial's key; a tuning trial's Optuna number (sweeps.tune puts it in the config)."""
    number = trial.config.get("optuna_trial")
    return trial.config.get("trial", {}).get("key", trial.trial_id if number is None else f"#{number}")


def pending_note(trials: list, since: dict[str, float], now: float, wait_s: float = PENDING_NOTE_S) -> str | None:
    """`pending 1:05: waiting for 1 GPU per trial (0 free of 0)` for the longest-pending trial once it
    has waited `wait_s`; `since` maps trial ids to when they were first seen pending (kept here)."""
    pending = {t.trial_id: t for t in trials if t.status == "PENDING"}
    for key in [k for k in since if k not in pending]:
        del since[key]
    for key in pending:
        since.setdefault(key, now)
    if not pending or now - min(since.values()) < wait_s:
        return None
    import ray

    oldest = min(pending, key=since.__getitem__)
    ask = dict(pending[oldest].placement_group_factory.required_resources)
    why = resources.pending_reason(ask, ray.available_resources(), ray.cluster_resources())
    return f"pending {clock(now - since[oldest])}: {why}"


class ProgressCallback(Callback):
    """The status line of `total` trials of at most `epochs` epochs each (a sweep trial's own
    budget is in its config; a tuning trial's is `epochs`)."""

    def __init__(self, name: str, total: int, metric: str, mode: str, every_s: float = 30.0,
                 stream: TextIO | None = None, epochs: int | None = None):
        self.name, self.total, self.metric, self.mode = name, total, metric, mode
        self.every_s, self._stream, self.epochs = every_s, stream, epochs

    def __getstate__(self) -> dict[str, Any]:  # Ray pickles callbacks; streams don't pickle
        return {"name": self.name, "total": self.total, "metric": self.metric, "mode": self.mode,
                "every_s": self.every_s, "_stream": None, "epochs": self.epochs}

    def setup(self, **info: Any) -> None:
        self._start = time.monotonic()
        self._last_counts: object = None
        self._last_print = 0.0
        self._best: Best | None = None
        self._epochs_seen = 0  # results reported since this run started: the ETA's rate
        self._pending_since: dict[str, float] = {}

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout

    def _show(self, trials: list, final: bool = False) -> None:
        tty = self.stream.isatty()
        statuses = Counter(t.status for t in trials)
        counts = sorted(statuses.items()) if tty else statuses["TERMINATED"] + statuses["ERROR"]
        due = time.monotonic() - self._last_print >= (1.0 if tty else self.every_s)
        if not ((final and tty) or counts != self._last_counts or due):
            return
        if self._best is None:  # resumed: start from what earlier runs reported
            for t in trials:
                if (t.last_result or {}).get("status") != "diverged":
                    self._best = better(self._best, (t.last_result or {}).get(self.metric),
                                        trial_key(t), self.mode)
        elapsed = time.monotonic() - self._start
        line = status_line(self.name, elapsed, self.total, trials, self.metric, self._best,
                           eta(trials, self.total, getattr(self, "epochs", None), self._epochs_seen, elapsed))
        note = pending_note(trials, self._pending_since, time.monotonic())
        line += f" · {note}" if note else ""
        self.stream.write(("\r\033[K" + line + ("\n" if final else "")) if tty else line + "\n")
        self.stream.flush()
        self._last_counts, self._last_print = counts, time.monotonic()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._epochs_seen += 1
        if result.get("status") != "diverged":  # what a diverged epoch measured is no result
            self._best = better(self._best, result.get(self.metric), trial_key(trial), self.mode)

    def _say(self, line: str) -> None:
        tty = self.stream.isatty()
        self.stream.write(("\r\033[K" if tty else "") + line + "\n")
        self.stream.flush()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._say(f"trial {trial_key(trial)} failed: {error_summary(trial)}")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._say(f"trial {trial_key(trial)} failed, retrying: {error_summary(trial)}")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._show(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._show(trials, final=True)
