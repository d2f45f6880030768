"""A trial's status: one enum for the trial, Ray's saved state, MLflow's tags and the report.

The trial itself reports `running`, `finished` or `diverged` each epoch; the service adds what only
it can see: `stopped` (ASHA ended it early), `failed` (it raised), `retrying` and `interrupted`.
It lives beside the trial, the lowest layer that names statuses, so every layer above reads the
same values. `StrEnum`: a status is its value wherever it is written (JSON, MLflow tags, CSV).
"""
from __future__ import annotations

from enum import StrEnum
from typing import Any


class TrialStatus(StrEnum):
    RUNNING = "running"
    FINISHED = "finished"
    DIVERGED = "diverged"  # the loss became non-finite: a result, not a crash
    STOPPED = "stopped"  # ended before its last epoch by the scheduler (ASHA)
    FAILED = "failed"  # the trainable raised
    RETRYING = "retrying"
    INTERRUPTED = "interrupted"  # its sweep was interrupted (Ctrl+C, a killed driver)


ENDED_BY_TRIAL = (TrialStatus.FINISHED, TrialStatus.DIVERGED)


def final_status(reported: Any) -> TrialStatus:
    """A trial's status once Tune ended it: its own last one (finished / diverged), or `stopped`
    when it ended before its last epoch (an ASHA stop)."""
    return TrialStatus(reported) if reported in ENDED_BY_TRIAL else TrialStatus.STOPPED


def saved_status(trial: Any) -> TrialStatus | None:
    """The status of a trial as Ray saved it (an `ExperimentAnalysis` trial): failed, its final
    status once terminated, or None while Tune would still run it."""
    if trial.status == "ERROR":
        return TrialStatus.FAILED
    if trial.status == "TERMINATED":
        return final_status((trial.last_result or {}).get("status"))
    return None
