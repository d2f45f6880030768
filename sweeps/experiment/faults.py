"""Fault injection for tests: ``DALS_FAULT`` makes chosen trials raise or kill their own worker once,
at a chosen epoch."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from sweeps.experiment.resume import TrialFolder

FAULT_ENV = "DALS_FAULT"

@dataclass(frozen=True)
class Fault:
    kind: str  # "exception" | "kill"
    epoch: int
    key: str | None  # a trial key, or None for every trial


def parse_faults(text: str) -> list[Fault]:
    """``KIND@EPOCH[:TRIAL_KEY]``, comma-separated; KIND is ``exception`` or ``kill``."""
    faults = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        head, _, key = item.partition(":")
        kind, _, epoch = head.partition("@")
        if kind not in ("exception", "kill") or not epoch.isdigit() or int(epoch) < 1:
            raise ValueError(f"{FAULT_ENV}: expected KIND@EPOCH[:TRIAL_KEY] with KIND exception or "
                             f"kill, got {item!r}")
        faults.append(Fault(kind, int(epoch), key or None))
    return faults


class InjectedFault(RuntimeError):
    """The exception a ``DALS_FAULT=exception@N`` trial raises."""


class Faults:
    """Test hook: ``DALS_FAULT=exception@2`` (or ``kill@2``, optionally ``:TRIAL_KEY``, several
    comma-separated) makes a trial fail after training that epoch, before reporting it: raise
    `InjectedFault`, or SIGKILL its own worker process. Each fault fires once per trial (a marker
    file in the trial's folder), so the retry Ray makes from the last checkpoint runs clean.
    Without the variable this does nothing."""

    def __init__(self, key: str, folder: TrialFolder, faults: list[Fault]):
        self.folder = folder
        self.mine = [f for f in faults if f.key in (None, key)]

    @classmethod
    def from_env(cls, key: str, folder: TrialFolder) -> Faults:
        return cls(key, folder, parse_faults(os.environ.get(FAULT_ENV, "")))

    def after_epoch(self, epoch: int) -> None:
        for fault in self.mine:
            if fault.epoch != epoch:
                continue
            marker = f"dals-fault-{fault.kind}@{fault.epoch}"
            if self.folder.read(marker) is not None:
                continue  # fired before: this is the retry
            self.folder.write(marker, str(os.getpid()))
            if fault.kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise InjectedFault(f"{FAULT_ENV}: injected {fault.kind} after epoch {epoch}")
