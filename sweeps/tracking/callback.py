"""The Ray Tune callback that tracks a sweep in MLflow: a thin adapter from Tune's trial events
to the sweep's `Outbox` (child run per trial under the sweep's parent run).

All writes happen in the driver, never in trial workers, so a SQLite store has one writer. The
callback holds no state that Ray's pickled experiment would have to carry: runs are found again by
tags, so a resumed sweep reopens its parent and each resumed trial continues its own child run.
"""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

from sweeps.tracking.outbox import Outbox
from sweeps.tracking.store import Store
from sweeps.train.status import final_status


class MlflowCallback(Callback):
    """Child run per trial under the sweep's parent run; `entry(trial)` is what a run records
    (key, slug, labels, config, hp: the runner's per-trial entry)."""

    def __init__(self, store: Store, sweep_id: str):
        self.store, self.sweep_id = store, sweep_id

    def __getstate__(self) -> dict[str, Any]:  # Ray pickles callbacks with the experiment
        return {"store": self.store, "sweep_id": self.sweep_id}

    def setup(self, **info: Any) -> None:
        self._outbox = Outbox(self.store, self.sweep_id)

    def entry(self, trial: Any) -> dict[str, Any]:
        return trial.config["trial"]

    # -- Ray Tune hooks (event-loop thread): copy, queue, return
    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._outbox.submit("_child", trial.trial_id, self.entry(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._outbox.submit("_log", trial.trial_id, self.entry(trial), dict(result))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._outbox.submit("_end", trial.trial_id, self.entry(trial),
                     final_status((trial.last_result or {}).get("status")))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._outbox.submit("_end", trial.trial_id, self.entry(trial), "failed")

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self._outbox.submit("_tag", trial.trial_id, self.entry(trial), "retrying")

    def on_step_end(self, iteration, trials, **info) -> None:
        self._outbox.tick()

    def on_experiment_end(self, trials, **info) -> None:
        self._outbox.flush()
