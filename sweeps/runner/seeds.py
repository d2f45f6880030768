"""A tuning trial's seeds as one resumable unit: every (dataset, seed) `Trial` of a sampled point,
trained epoch by epoch together, saved in one checkpoint and restored from it (`resume.Resumable`),
so a killed tuning trial continues from its last epoch instead of starting over."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from sweeps.train.status import TrialStatus
from sweeps.train.trial import Trial

# (epoch, each member's metrics of that epoch or its last one) -> what the trial reports
Report = Callable[[int, list[dict[str, Any]]], dict[str, Any]]


def member_dir(index: int) -> str:
    return f"seed-{index}"


class SeedGroup:
    """The members train in lockstep (an ended member, diverged or done, keeps its last metrics);
    `history` is the group's report per epoch, rebuilt from the members' own histories on restore."""

    def __init__(self, trials: list[Trial], report: Report):
        self.trials, self.report = trials, report
        self.history: list[dict[str, Any]] = []

    @property
    def epoch(self) -> int:
        return len(self.history)

    @property
    def done(self) -> bool:
        return all(t.done for t in self.trials)

    @property
    def status(self) -> str:
        return str(TrialStatus.FINISHED if self.done else TrialStatus.RUNNING)

    def last(self, epoch: int) -> list[dict[str, Any]]:
        """Each member's metrics of `epoch`, or of its last epoch when it ended before."""
        return [t.history[min(epoch, len(t.history)) - 1] for t in self.trials]

    def run_epoch(self) -> dict[str, Any]:
        for t in self.trials:
            if not t.done:
                t.run_epoch()
        epoch = self.epoch + 1
        self.history.append(self.report(epoch, self.last(epoch)))
        return self.history[-1]

    def save(self, path: str | Path) -> None:
        for i, t in enumerate(self.trials):
            t.save(Path(path) / member_dir(i))

    def restore(self, path: str | Path) -> None:
        for i, t in enumerate(self.trials):
            t.restore(Path(path) / member_dir(i))
        epochs = max(len(t.history) for t in self.trials)
        self.history = [self.report(e, self.last(e)) for e in range(1, epochs + 1)]
