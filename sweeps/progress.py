"""A one-line sweep status (done / running / pending, best so far) instead of Ray's tables.

On a terminal the line is rewritten in place; in a log (CI, a pipe) a new line is printed only
when the counts change, and at most every `every_s` seconds otherwise.
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from typing import Any, TextIO

from ray.tune import Callback


def status_line(name: str, elapsed_s: float, trials: list, metric: str, mode: str) -> str:
    """`[quick 1:05] 5/18 done, 1 failed · 2 running · 10 pending · best eval_accuracy 0.981 (dals/synthetic/0)`."""
    counts = Counter(t.status for t in trials)
    done = counts["TERMINATED"] + counts["ERROR"]
    parts = [f"{done}/{len(trials)} done" + (f", {counts['ERROR']} failed" if counts["ERROR"] else "")]
    parts.append(f"{counts['RUNNING']} running")
    parts.append(f"{counts['PENDING'] + counts['PAUSED']} pending")
    best = best_trial(trials, metric, mode)
    if best is not None:
        value, key = best
        parts.append(f"best {metric} {value:.4f} ({key})")
    minutes, seconds = divmod(int(elapsed_s), 60)
    return f"[{name} {minutes}:{seconds:02d}] " + " · ".join(parts)


def best_trial(trials: list, metric: str, mode: str) -> tuple[float, str] | None:
    """(value, trial key) of the best last-reported metric so far, NaNs ignored."""
    scored = [
        (float(t.last_result[metric]), t.config.get("trial", {}).get("key", t.trial_id))
        for t in trials
        if isinstance((t.last_result or {}).get(metric), (int, float))
        and math.isfinite(t.last_result[metric])
    ]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda s: s[0])


class ProgressCallback(Callback):
    def __init__(self, name: str, metric: str, mode: str, every_s: float = 30.0,
                 stream: TextIO | None = None):
        self.name, self.metric, self.mode, self.every_s = name, metric, mode, every_s
        self._stream = stream

    def __getstate__(self) -> dict[str, Any]:  # Ray pickles callbacks; streams don't pickle
        return {"name": self.name, "metric": self.metric, "mode": self.mode,
                "every_s": self.every_s, "_stream": None}

    def setup(self, **info: Any) -> None:
        self._start = time.monotonic()
        self._last_counts: list = []
        self._last_print = 0.0

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout

    def _show(self, trials: list, final: bool = False) -> None:
        counts = sorted(Counter(t.status for t in trials).items())
        tty = self.stream.isatty()
        due = time.monotonic() - self._last_print >= (1.0 if tty else self.every_s)
        if not (final or counts != self._last_counts or due):
            return
        line = status_line(self.name, time.monotonic() - self._start, trials, self.metric, self.mode)
        if tty:
            self.stream.write("\r\033[K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._last_counts, self._last_print = counts, time.monotonic()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._show(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._show(trials, final=True)
