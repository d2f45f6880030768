"""MLflow tracking of a sweep: one parent run per sweep, one child run per trial.

All writes happen in the driver (a Ray Tune callback), never in trial workers, so a SQLite store
has one writer. Runs are found again by tags, not remembered: a resumed sweep reopens its parent
and each resumed trial continues its own child run (one run per trial key, never two), and the
callback holds no state that Ray's pickled experiment would have to carry.
"""

from __future__ import annotations

import sys
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback
from ray.tune.result import AUTO_RESULT_KEYS

from sweeps.run import final_status
from sweeps.spec import DEFAULT_ARTIFACTS

TAG_ROLE = "dals.role"  # "sweep" | "trial"
TAG_SWEEP = "dals.sweep_id"
TAG_SPEC_HASH = "dals.spec_hash"
TAG_KEY = "dals.trial_key"
TAG_RAY_ID = "dals.ray_trial_id"
# running | finished | diverged | stopped (by ASHA) | failed | retrying | interrupted
TAG_STATUS = "dals.status"
PARENT = "mlflow.parentRunId"
RUN_NAME = "mlflow.runName"

# Ray's bookkeeping in every result; the trial's own metrics are the other numbers.
_NOT_METRICS = frozenset(AUTO_RESULT_KEYS) | {"epoch", "done", "trial_id", "experiment_tag"}


@dataclass(frozen=True)
class Store:
    """Where a sweep is tracked: an MLflow URI and experiment (artifacts beside a local store)."""

    uri: str
    experiment: str

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri)

    def experiment_id(self, client: MlflowClient | None = None) -> str:
        client = client or self.client()
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        artifacts = None
        if self.uri.startswith("sqlite:"):  # keep artifacts in the working folder, not a server's
            artifacts = Path(DEFAULT_ARTIFACTS).resolve().as_uri()
        return client.create_experiment(self.experiment, artifact_location=artifacts)


def _tag_filter(**tags: str) -> str:
    return " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())


def _search(client: MlflowClient, exp_id: str, **tags: str) -> list:
    return client.search_runs([exp_id], _tag_filter(**tags), max_results=10_000)


def find_parent(client: MlflowClient, exp_id: str, sweep_id: str):
    runs = _search(client, exp_id, **{TAG_ROLE: "sweep", TAG_SWEEP: sweep_id})
    return runs[0] if runs else None


def open_parent(store: Store, sweep_id: str, spec_name: str, spec_hash: str, spec_file: Path,
                params: dict[str, Any]) -> str:
    """The sweep's parent run id, created on first use (with the spec as an artifact)."""
    client = store.client()
    exp_id = store.experiment_id(client)
    run = find_parent(client, exp_id, sweep_id)
    if run is not None:
        client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id
    tags = {TAG_ROLE: "sweep", TAG_SWEEP: sweep_id, TAG_SPEC_HASH: spec_hash, RUN_NAME: spec_name}
    run_id = client.create_run(exp_id, tags=tags, run_name=spec_name).info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    client.log_artifact(run_id, str(spec_file), "spec")
    return run_id


def close_parent(store: Store, run_id: str, status: str) -> None:
    store.client().set_terminated(run_id, status)


def log_folder(store: Store, run_id: str, folder: Path, artifact_path: str) -> None:
    store.client().log_artifacts(run_id, str(folder), artifact_path)


def sweep_runs(store: Store, sweep_id: str) -> tuple[Any, list]:
    """(parent run or None, child runs) of one sweep, for reports and checks."""
    client = store.client()
    found = client.get_experiment_by_name(store.experiment)
    if found is None:
        return None, []
    exp_id = found.experiment_id
    children = _search(client, exp_id, **{TAG_ROLE: "trial", TAG_SWEEP: sweep_id})
    return find_parent(client, exp_id, sweep_id), children


def epoch_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The trial's own numeric metrics in a Ray result (Ray's counters and the config left out)."""
    return {
        k: float(v) for k, v in result.items()
        if k not in _NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _params(trial: dict[str, Any]) -> list[Param]:
    """Labels (strategy, generation, dataset, regime, seed), every hyperparameter the strategy
    runs with (`hp.NAME`) and the rest of the trainable's config, flattened."""
    flat: dict[str, Any] = dict(trial["labels"])
    flat.update({f"hp.{k}": v for k, v in trial.get("hp", {}).items()})

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat.setdefault(prefix, value)

    walk("", trial["config"])
    return [Param(k, str(v)[:6000]) for k, v in flat.items()]


class MlflowCallback(Callback):
    """Ray Tune callback: child run per trial under the sweep's parent run.

    The hooks only copy what they need from the trial and queue the MLflow writes on one
    background thread (in order), so a SQLite write (~20 ms) never stalls Tune's event loop.
    `flush()` waits for the queue; the runner calls `flush_all()` after `Tuner.fit`.
    """

    def __init__(self, store: Store, sweep_id: str):
        self.store, self.sweep_id = store, sweep_id

    def __getstate__(self) -> dict[str, Any]:  # Ray pickles callbacks with the experiment
        return {"store": self.store, "sweep_id": self.sweep_id}

    def setup(self, **info: Any) -> None:
        self._client = self.store.client()
        self._exp_id = self.store.experiment_id(self._client)
        parent = find_parent(self._client, self._exp_id, self.sweep_id)
        if parent is None:
            raise RuntimeError(f"no MLflow parent run for sweep {self.sweep_id}")
        self._parent_id = parent.info.run_id
        self._runs: dict[str, str] = {}  # Ray trial id -> child run id
        self._last_step: dict[str, int] = {}  # child run id -> last epoch logged
        self._queue = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-log")
        self._warned = False
        _LIVE.add(self)

    def _submit(self, job: Callable[..., None], *args: Any) -> None:
        self._queue.submit(self._guarded, job, *args)

    def _guarded(self, job: Callable[..., None], *args: Any) -> None:
        try:
            job(*args)
        except Exception as e:  # tracking trouble must not stop a sweep; say so once
            if not self._warned:
                self._warned = True
                print(f"dals: warning: MLflow logging failed: {e}", file=sys.stderr, flush=True)

    def flush(self) -> None:
        if hasattr(self, "_queue"):
            self._queue.submit(lambda: None).result()

    # -- work on the logging thread
    def _child(self, trial_id: str, spec: dict[str, Any]) -> str:
        """The trial's child run: the one it had (reopened) or a new one."""
        if trial_id in self._runs:
            return self._runs[trial_id]
        client = self._client
        found = _search(client, self._exp_id, **{TAG_ROLE: "trial", TAG_SWEEP: self.sweep_id,
                                                 TAG_KEY: spec["key"]})
        if found:
            run_id = found[0].info.run_id
            history = client.get_metric_history(run_id, "epoch")
            self._last_step[run_id] = int(max((m.value for m in history), default=0))
            client.update_run(run_id, status="RUNNING")
        else:
            tags = {PARENT: self._parent_id, TAG_ROLE: "trial", TAG_SWEEP: self.sweep_id,
                    TAG_KEY: spec["key"], RUN_NAME: spec["slug"]}
            run_id = client.create_run(self._exp_id, tags=tags, run_name=spec["slug"]).info.run_id
            client.log_batch(run_id, params=_params(spec))
            self._last_step[run_id] = 0
        client.log_batch(run_id, tags=[RunTag(TAG_RAY_ID, trial_id), RunTag(TAG_STATUS, "running")])
        self._runs[trial_id] = run_id
        return run_id

    def _log(self, trial_id: str, spec: dict[str, Any], result: dict[str, Any]) -> None:
        run_id = self._child(trial_id, spec)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        if step <= self._last_step.get(run_id, 0):
            return  # an epoch re-run after a restore: its first report is already logged
        self._last_step[run_id] = step
        now = int(time.time() * 1000)
        values = {**epoch_metrics(result), "epoch": float(step)}
        self._client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def _end(self, trial_id: str, spec: dict[str, Any], status: str) -> None:
        run_id = self._child(trial_id, spec)
        self._client.set_tag(run_id, TAG_STATUS, status)
        self._client.set_terminated(run_id, "FAILED" if status == "failed" else "FINISHED")
        self._runs.pop(trial_id, None)

    def _tag(self, trial_id: str, spec: dict[str, Any], status: str) -> None:
        self._client.set_tag(self._child(trial_id, spec), TAG_STATUS, status)

    # -- Ray Tune hooks (event-loop thread): copy, queue, return
    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._submit(self._child, trial.trial_id, trial.config["trial"])

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._submit(self._log, trial.trial_id, trial.config["trial"], dict(result))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._submit(self._end, trial.trial_id, trial.config["trial"],
                     final_status((trial.last_result or {}).get("status")))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._submit(self._end, trial.trial_id, trial.config["trial"], "failed")

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self._submit(self._tag, trial.trial_id, trial.config["trial"], "retrying")

    def on_experiment_end(self, trials, **info) -> None:
        self.flush()


_LIVE: "weakref.WeakSet[MlflowCallback]" = weakref.WeakSet()


def flush_all() -> None:
    """Wait until every live callback's queued MLflow writes are done."""
    for callback in list(_LIVE):
        callback.flush()


def mark_interrupted(store: Store, sweep_id: str) -> None:
    """Child runs left running by an interrupted sweep: tagged so, until a resume reopens them."""
    client = store.client()
    _, children = sweep_runs(store, sweep_id)
    for run in children:
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, TAG_STATUS, "interrupted")
            client.set_terminated(run.info.run_id, "KILLED")
