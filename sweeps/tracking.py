"""MLflow tracking of a sweep: one parent run per sweep, one child run per trial.

All writes happen in the driver (a Ray Tune callback), never in trial workers, so a SQLite store
has one writer. Runs are found again by tags, not remembered: a resumed sweep reopens its parent
and each resumed trial continues its own child run (one run per trial key, never two), and the
callback holds no state that Ray's pickled experiment would have to carry.

A tracking outage never stops training: what cannot be written is queued in order and retried
(every `RETRY_EVERY_S` and at the end); what is still unwritten when the sweep ends is counted in
one line, and `dals sweep sync` records it later from Ray's result files, the sweep's ground truth.
Secrets in the URI are masked (`sweeps.redact`) wherever it is shown or logged.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback
from ray.tune.result import AUTO_RESULT_KEYS

from sweeps.redact import redact
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

NOTE = "mlflow.note.content"  # the run's description in the MLflow UI
# MLflow run status per final trial status: a diverged trial ran to its end (a result, not a
# crash), so it is FINISHED with dals.status=diverged; FAILED is kept for crashes.
RUN_STATUS = {"failed": "FAILED", "interrupted": "KILLED"}
NOTES = {"diverged": "diverged: the loss became non-finite, so training stopped (not a crash)",
         "failed": "failed: the trial raised; see error.txt in its folder of the sweep's Ray results"}

# Ray's bookkeeping in every result; the trial's own metrics are the other numbers.
_NOT_METRICS = frozenset(AUTO_RESULT_KEYS) | {"epoch", "done", "trial_id", "experiment_tag"}

# MLflow's HTTP client retries a refused connection 7 times with exponential backoff (~4 minutes
# per call) and prints "View run at URL" (password included) on every set_terminated. It reads
# these settings from the environment on each request and has no per-client setting, so they are
# set process-wide, as defaults (values the user exported win), when the driver makes a client:
# the driver is the only MLflow user in its process (trial workers never call MLflow). A call to a
# dead server then fails in ~3 s; the callback queues it and retries.
CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
RETRY_EVERY_S = 10.0
# MLflow error codes that a retry cannot fix (anything else, e.g. a refused connection, a 5xx or a
# locked SQLite file, is treated as an outage and retried)
_PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
              "BAD_REQUEST", "INVALID_STATE", "PERMISSION_DENIED", "UNAUTHENTICATED",
              "CUSTOMER_UNAUTHORIZED"}


def configure_client() -> None:
    """Bounded MLflow client retries and no URL printing (see CLIENT_DEFAULTS)."""
    for key, value in CLIENT_DEFAULTS.items():
        os.environ.setdefault(key, value)


class TrackingUnavailable(ValueError):
    """The tracking store cannot be reached (one line, secrets masked)."""


def reason(exc: BaseException) -> str:
    """A short, secret-free reason for a failed MLflow call ("[Errno 111] Connection refused")."""
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\][^'\")\]]*", text)
    if errno:
        return errno.group(0).strip()
    if "timed out" in text.lower():
        return "timed out"
    line = (text.strip().splitlines() or [type(exc).__name__])[0]
    return redact(line[:200])


def transient(exc: BaseException) -> bool:
    """Whether retrying could succeed: a connection or database outage, or an MLflow error that is
    not final (a bug in our code is not an outage: it is raised, or counted, never retried)."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import OperationalError

    if isinstance(exc, MlflowException):
        return exc.error_code not in _PERMANENT
    return isinstance(exc, (OSError, OperationalError))  # requests' errors are OSErrors


@dataclass
class Writes:
    """MLflow writes by kind (those not recorded, or those a sync recorded)."""

    metrics: int = 0  # metric values (one metric at one step)
    params: int = 0
    tags: int = 0
    statuses: int = 0  # run status changes (a trial's end, the sweep's end)
    artifacts: int = 0  # artifact folders or files

    def __iadd__(self, other: "Writes") -> "Writes":
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    def describe(self) -> str:
        names = {"metrics": "metric values", "params": "params", "tags": "tags",
                 "statuses": "run statuses", "artifacts": "artifact uploads"}
        return ", ".join(f"{getattr(self, k)} {v}" for k, v in names.items())


@dataclass(frozen=True)
class Store:
    """Where a sweep is tracked: an MLflow URI and experiment (artifacts beside a local store)."""

    uri: str
    experiment: str

    def client(self) -> MlflowClient:
        configure_client()
        return MlflowClient(tracking_uri=self.uri)

    @property
    def shown(self) -> str:
        """The URI as printed and logged: any password masked."""
        return redact(self.uri)

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
    """The sweep's parent run id, created on first use (with the spec, secrets masked, as an
    artifact). An unreachable store is a one-line `TrackingUnavailable`: a sweep does not start
    untracked by accident."""
    try:
        return _open_parent(store, sweep_id, spec_name, spec_hash, spec_file, params)
    except Exception as exc:
        if not transient(exc):
            raise
        raise TrackingUnavailable(
            f"MLflow tracking at {store.shown} is unreachable ({reason(exc)}); start it, fix "
            "tracking.uri, or set tracking.enabled: false") from None


def _open_parent(store: Store, sweep_id: str, spec_name: str, spec_hash: str, spec_file: Path,
                 params: dict[str, Any]) -> str:
    client = store.client()
    exp_id = store.experiment_id(client)
    run = find_parent(client, exp_id, sweep_id)
    if run is not None:
        client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id
    tags = {TAG_ROLE: "sweep", TAG_SWEEP: sweep_id, TAG_SPEC_HASH: spec_hash, RUN_NAME: spec_name}
    run_id = client.create_run(exp_id, tags=tags, run_name=spec_name).info.run_id
    client.log_batch(run_id, params=[Param(k, redact(str(v))) for k, v in params.items()])
    with tempfile.TemporaryDirectory() as folder:  # the spec as written, secrets masked
        copy = Path(folder) / Path(spec_file).name
        copy.write_text(redact(Path(spec_file).read_text()))
        client.log_artifact(run_id, str(copy), "spec")
    return run_id


def close_parent(store: Store, run_id: str, status: str) -> None:
    """End the sweep's parent run (counted as not recorded when the store is down)."""
    attempt(store, Writes(statuses=1), lambda: store.client().set_terminated(run_id, status))


def log_folder(store: Store, run_id: str, folder: Path, artifact_path: str) -> None:
    store.client().log_artifacts(run_id, str(folder), artifact_path)


def log_report(store: Store, sweep_id: str, folder: Path) -> bool:
    """Log a report folder to the sweep's parent run; False (and counted) when the store is down."""
    def log() -> None:
        parent, _ = sweep_runs(store, sweep_id)
        if parent is not None:
            log_folder(store, parent.info.run_id, folder, "report")

    return attempt(store, Writes(artifacts=1), log)


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


@dataclass(frozen=True)
class _Job:
    """One queued MLflow write job: `kind` is the callback method (`_child`, `_log`, `_end`, `_tag`)."""

    kind: str
    trial_id: str
    spec: dict[str, Any]
    arg: Any = None  # the result (`_log`) or the status (`_end`, `_tag`)
    at_ms: int = 0  # when Tune reported it: logged metrics keep that time, not the replay's


class MlflowCallback(Callback):
    """Ray Tune callback: child run per trial under the sweep's parent run.

    The hooks only copy what they need from the trial and queue the MLflow writes on one
    background thread (in order), so a SQLite write (~20 ms) never stalls Tune's event loop.
    When a write fails because the store is unreachable, it and every later one wait in a
    backlog (in order) that is retried every `RETRY_EVERY_S` and by `flush()`; `unrecorded()`
    counts what is still waiting. `flush()` waits for the queue; the runner calls `flush_all()`
    after `Tuner.fit`.
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
        self._backlog: deque[_Job] = deque()  # logging thread only; the oldest first
        self._lost = Writes()  # refused for good (not retried): counted, never silently dropped
        self._down_since: float | None = None
        self._last_try = 0.0
        self._retry_queued = False
        _LIVE.add(self)

    def _say(self, line: str) -> None:
        print(f"dals: {line}", file=sys.stderr, flush=True)

    def _submit(self, kind: str | Callable[..., Any], trial_id: str, spec: dict[str, Any],
                arg: Any = None) -> None:
        """Queue a write job; `kind` names the method (or is the bound method, as subclasses pass)."""
        kind = kind if isinstance(kind, str) else kind.__name__
        job = _Job(kind, trial_id, spec, arg, int(time.time() * 1000))
        self._queue.submit(self._accept, job)

    # -- the backlog (logging thread)
    def _accept(self, job: _Job) -> None:
        """Run the job now, or behind the backlog while the store is down."""
        self._backlog.append(job)
        if len(self._backlog) == 1 or self._retry_due():
            self._drain()

    def _retry_due(self) -> bool:
        return time.monotonic() - self._last_try >= RETRY_EVERY_S

    def _drain(self) -> None:
        """Run backlog jobs in order until one fails on a store outage (then wait for a retry)."""
        self._retry_queued = False
        self._last_try = time.monotonic()
        while self._backlog:
            job = self._backlog[0]
            try:
                getattr(self, job.kind)(job.trial_id, job.spec, job.arg, job.at_ms)
            except Exception as exc:
                if transient(exc):
                    if self._down_since is None:
                        self._down_since = time.monotonic()
                        self._say(f"MLflow at {self.store.shown} is unreachable ({reason(exc)}); "
                                  f"training goes on, its writes wait and are retried every "
                                  f"{RETRY_EVERY_S:.0f} s")
                    return
                self._lost += self._writes([job])
                self._say(f"MLflow refused a write for trial {job.spec['key']} ({reason(exc)}); "
                          "`dals sweep sync` records it from Ray's results")
            self._backlog.popleft()
        if self._down_since is not None:
            self._say(f"MLflow at {self.store.shown} is reachable again after "
                      f"{time.monotonic() - self._down_since:.0f} s; the waiting writes are recorded")
            self._down_since = None

    def _retry(self) -> None:
        try:
            if self._backlog:
                self._drain()
        except Exception as exc:  # the logging thread must survive anything
            self._say(f"MLflow retry failed: {reason(exc)}")

    def flush(self) -> None:
        """Wait for the queued writes, with one more try of any the store was down for."""
        if hasattr(self, "_queue"):
            self._queue.submit(self._retry).result()

    def down(self) -> bool:
        """Whether the store was unreachable at the last try (and no retry is due yet)."""
        return self._down_since is not None and bool(self._backlog) and not self._retry_due()

    def unrecorded(self) -> Writes:
        """What this sweep could not write so far: the backlog and what was refused."""
        if not hasattr(self, "_queue"):
            return Writes()
        pending = self._queue.submit(lambda: list(self._backlog)).result()
        total = self._writes(pending)
        total += self._lost
        return total

    def abandon(self) -> None:
        """Forget the backlog (once reported): `dals sweep sync` records it from Ray's results."""
        if hasattr(self, "_queue"):
            self._queue.submit(self._backlog.clear).result()
            self._lost = Writes()

    def _writes(self, jobs: list[_Job]) -> Writes:
        """The MLflow writes `jobs` would make, given what this callback has written so far."""
        out = Writes()
        known = set(self._runs)
        last = {t: self._last_step.get(r, 0) for t, r in self._runs.items()}
        for job in jobs:
            if job.trial_id not in known:  # the run would be created (or reopened)
                known.add(job.trial_id)
                last.setdefault(job.trial_id, 0)
                out.params += len(_params(job.spec))
                out.tags += 7  # parent, role, sweep, key, run name + Ray id, status
            if job.kind == "_log":
                step = _step(job.arg)
                if step > last[job.trial_id]:
                    out.metrics += len(_values(job.arg, step))
                    last[job.trial_id] = step
            elif job.kind == "_end":
                out.tags += 1 + (job.arg in NOTES)
                out.statuses += 1
                known.discard(job.trial_id)
            elif job.kind == "_tag":
                out.tags += 1
        return out

    # -- work on the logging thread
    def _child(self, trial_id: str, spec: dict[str, Any], arg: Any = None, at_ms: int = 0) -> str:
        """The trial's child run: the one it had (reopened) or a new one."""
        if trial_id in self._runs:
            return self._runs[trial_id]
        client = self._client
        found = _search(client, self._exp_id, **{TAG_ROLE: "trial", TAG_SWEEP: self.sweep_id,
                                                 TAG_KEY: spec["key"]})
        if found:
            run_id = found[0].info.run_id
            if not found[0].data.params:  # created, but its params did not get through
                client.log_batch(run_id, params=_params(spec))
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

    def _log(self, trial_id: str, spec: dict[str, Any], result: dict[str, Any], at_ms: int = 0) -> None:
        run_id = self._child(trial_id, spec)
        step = _step(result)
        if step <= self._last_step.get(run_id, 0):
            return  # an epoch re-run after a restore: its first report is already logged
        values = _values(result, step)
        at_ms = at_ms or int(time.time() * 1000)
        self._client.log_batch(run_id, metrics=[Metric(k, v, at_ms, step) for k, v in values.items()])
        self._last_step[run_id] = step

    def _end(self, trial_id: str, spec: dict[str, Any], status: str, at_ms: int = 0) -> None:
        run_id = self._child(trial_id, spec)
        end_run(self._client, run_id, status)
        self._runs.pop(trial_id, None)

    def _tag(self, trial_id: str, spec: dict[str, Any], status: str, at_ms: int = 0) -> None:
        self._client.set_tag(self._child(trial_id, spec), TAG_STATUS, status)

    # -- Ray Tune hooks (event-loop thread): copy, queue, return
    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._submit("_child", trial.trial_id, trial.config["trial"])

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._submit("_log", trial.trial_id, trial.config["trial"], dict(result))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._submit("_end", trial.trial_id, trial.config["trial"],
                     final_status((trial.last_result or {}).get("status")))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._submit("_end", trial.trial_id, trial.config["trial"], "failed")

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self._submit("_tag", trial.trial_id, trial.config["trial"], "retrying")

    def on_step_end(self, iteration, trials, **info) -> None:
        """While the store is down, queue a retry every RETRY_EVERY_S (even with no new result)."""
        if getattr(self, "_backlog", None) and not self._retry_queued and self._retry_due():
            self._retry_queued = True
            self._queue.submit(self._retry)

    def on_experiment_end(self, trials, **info) -> None:
        self.flush()


def _step(result: dict[str, Any]) -> int:
    return int(result.get("epoch", result.get("training_iteration", 0)))


def _values(result: dict[str, Any], step: int) -> dict[str, float]:
    return {**epoch_metrics(result), "epoch": float(step)}


def end_run(client: MlflowClient, run_id: str, status: str) -> int:
    """A trial's final status: the dals.status tag, a note saying why for a diverged or failed
    trial, and the MLflow run status (FAILED only for crashes; see RUN_STATUS). Returns the
    number of tags written."""
    tags = [RunTag(TAG_STATUS, status)] + ([RunTag(NOTE, NOTES[status])] if status in NOTES else [])
    client.log_batch(run_id, tags=tags)
    client.set_terminated(run_id, RUN_STATUS.get(status, "FINISHED"))
    return len(tags)


_LIVE: "weakref.WeakSet[MlflowCallback]" = weakref.WeakSet()
_MISSED: dict[Store, Writes] = {}  # writes outside the callbacks that did not get through


def flush_all() -> None:
    """Wait until every live callback's queued MLflow writes are done (or still waiting on an
    unreachable store: see `unrecorded_line`)."""
    for callback in list(_LIVE):
        callback.flush()


def attempt(store: Store, writes: Writes, call: Callable[[], Any]) -> bool:
    """Run one driver-side MLflow call; on a store outage count `writes` as not recorded
    (skipping the call while a callback already knows the store is down) and return False."""
    if any(c.store == store and c.down() for c in list(_LIVE)):
        _MISSED.setdefault(store, Writes()).__iadd__(writes)
        return False
    try:
        call()
        return True
    except Exception as exc:
        if not transient(exc):
            raise
        _MISSED.setdefault(store, Writes()).__iadd__(writes)
        return False


def unrecorded_line(store: Store, folder: str, spec_ref: str | Path) -> str | None:
    """One line saying what the sweep could not write to MLflow and how to record it, or None;
    the count is reported once (the callbacks' backlogs are then dropped)."""
    missed = _MISSED.pop(store, Writes())
    for callback in [c for c in list(_LIVE) if c.store == store]:
        missed += callback.unrecorded()
        callback.abandon()
    if not missed:
        return None
    return (f"dals: MLflow at {store.shown} did not record {missed.describe()}; all of it is in "
            f"Ray's results under {folder}: once MLflow is reachable, run `dals sweep sync "
            f"{spec_ref}` to record it")


def mark_interrupted(store: Store, sweep_id: str) -> None:
    """Child runs left running by an interrupted sweep: tagged so, until a resume reopens them."""
    def mark() -> None:
        client = store.client()
        _, children = sweep_runs(store, sweep_id)
        for run in children:
            if run.info.status == "RUNNING":
                client.set_tag(run.info.run_id, TAG_STATUS, "interrupted")
                client.set_terminated(run.info.run_id, "KILLED")

    attempt(store, Writes(), mark)


# ----------------------------------------------------------------------------- dals sweep sync


def _result_rows(trial_dir: Path) -> list[dict[str, Any]]:
    path = trial_dir / "result.json"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _first_per_epoch(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Epoch -> its first report (an epoch re-run after a restore keeps its first, as logged live)."""
    out: dict[int, dict[str, Any]] = {}
    for row in rows:
        out.setdefault(_step(row), row)
    return out


def sync_trial(client: MlflowClient, exp_id: str, parent_id: str, sweep_id: str, trial: Any) -> Writes:
    """Record in MLflow what Ray has of one trial and MLflow lacks: its child run and params,
    each epoch's metrics (those steps MLflow does not have), and its final status."""
    spec = trial.config["trial"]
    done = Writes()
    found = _search(client, exp_id, **{TAG_ROLE: "trial", TAG_SWEEP: sweep_id, TAG_KEY: spec["key"]})
    if found:
        run = found[0]
    else:
        tags = {PARENT: parent_id, TAG_ROLE: "trial", TAG_SWEEP: sweep_id, TAG_KEY: spec["key"],
                RUN_NAME: spec["slug"], TAG_RAY_ID: trial.trial_id}
        run = client.create_run(exp_id, tags=tags, run_name=spec["slug"])
        done.tags += len(tags)
    run_id = run.info.run_id
    params = [p for p in _params(spec) if p.key not in run.data.params]
    if params:
        client.log_batch(run_id, params=params)
        done.params += len(params)
    epochs = _first_per_epoch(_result_rows(Path(trial.path)))
    have: dict[str, set[int]] = {}
    missing: list[Metric] = []
    for step, row in sorted(epochs.items()):
        at_ms = int(float(row.get("timestamp", time.time())) * 1000)
        for key, value in _values(row, step).items():
            if key not in have:
                have[key] = {m.step for m in client.get_metric_history(run_id, key)}
            if step not in have[key]:
                missing.append(Metric(key, value, at_ms, step))
    for i in range(0, len(missing), 1000):  # MLflow's log_batch limit
        client.log_batch(run_id, metrics=missing[i:i + 1000])
    done.metrics += len(missing)
    status = {"ERROR": "failed", "TERMINATED": final_status((trial.last_result or {}).get("status"))
              }.get(trial.status)
    if status and (run.data.tags.get(TAG_STATUS) != status
                   or run.info.status != RUN_STATUS.get(status, "FINISHED")):
        done.tags += end_run(client, run_id, status)
        done.statuses += 1
    return done


def sync_sweep(folder: str, say=print) -> Writes:
    """`dals sweep sync`: make the sweep's MLflow runs match Ray's results in `folder` (missing
    runs, params, per-epoch metrics, final statuses; the parent ended and the report logged once
    every trial has ended). Idempotent: a second sync records nothing."""
    from ray.tune import ExperimentAnalysis

    from sweeps.run import SPEC_COPY, read_meta

    meta = read_meta(folder)
    if meta is None:
        raise ValueError(f"{folder}: not a sweep folder (no dals-sweep.json)")
    if not meta.tracking_uri:
        raise ValueError(f"sweep {meta.name} is not tracked (tracking.enabled: false): nothing to sync")
    if "://" in folder:
        raise ValueError(f"{folder}: sync reads Ray's result files from a local folder; copy it here first")
    store = Store(meta.tracking_uri, meta.experiment)
    try:
        client = store.client()
        exp_id = store.experiment_id(client)
        parent = find_parent(client, exp_id, meta.sweep_id)
    except Exception as exc:
        if not transient(exc):
            raise
        raise TrackingUnavailable(f"MLflow tracking at {store.shown} is unreachable ({reason(exc)}); "
                                  "run the sync again once it is up") from None
    if parent is None:  # the sweep started while the store was down
        parent_id = open_parent(store, meta.sweep_id, meta.name, meta.spec_hash,
                                Path(folder) / SPEC_COPY, {"storage": folder})
    else:
        parent_id = parent.info.run_id
    trials = ExperimentAnalysis(folder).trials
    done = Writes()
    for trial in trials:
        done += sync_trial(client, exp_id, parent_id, meta.sweep_id, trial)
    if trials and all(t.status in ("TERMINATED", "ERROR") for t in trials) \
            and len(trials) == _grid_size(folder):
        from sweeps import report as reporting

        parent = client.get_run(parent_id)
        if not [a for a in client.list_artifacts(parent_id, "report")]:
            reporting.make_report(folder)
            done.artifacts += 1
        if parent.info.status != "FINISHED":
            client.set_terminated(parent_id, "FINISHED")
            done.statuses += 1
    say(f"sync {meta.name}: recorded {done.describe()} in MLflow at {store.shown} "
        f"(experiment {meta.experiment!r})")
    return done


def _grid_size(folder: str) -> int:
    """How many trials the sweep's spec (its copy in the folder) stands for."""
    from sweeps.report import spec_copy

    return len(spec_copy(folder).trials())
