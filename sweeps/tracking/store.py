"""The MLflow side of a sweep: where it is tracked (`Store`), its run layout (one parent run per
sweep, one child run per trial, found again by tags) and the conventions of its writes.

Secrets in the URI are masked (`sweeps.redact`) wherever it is shown or logged.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Collection

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune.result import AUTO_RESULT_KEYS

from sweeps.redact import redact
from sweeps.spec.common import DEFAULT_ARTIFACTS
from sweeps.tracking.conventions import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, dataset_inputs, source_tags

TAG_ROLE = "dals.role"  # "sweep" | "trial"
TAG_SWEEP = "dals.sweep_id"
TAG_SPEC_HASH = "dals.spec_hash"
TAG_KEY = "dals.trial_key"
TAG_RAY_ID = "dals.ray_trial_id"
# running | finished | diverged | stopped (by ASHA) | failed | retrying | interrupted
TAG_STATUS = "dals.status"
# The last epoch logged to a run, written with that epoch's metrics: the epoch is each metric's
# step, never a metric of its own (MLflow would chart it).
TAG_EPOCH = "dals.epoch"
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


_WAL_FILES: set[str] = set()  # the MLflow SQLite files this process writes in WAL mode


def sqlite_wal(uri: str) -> None:
    """Write a `sqlite:` MLflow store in WAL mode with synchronous=NORMAL: a commit no longer
    waits for an fsync (measured: 0.33 -> 0.13 s of MLflow writes per trial), readers (`dals ui`)
    still read while the driver writes, and a killed driver loses no committed write (only the
    machine losing power could drop the last ones, which `dals sweep sync` records again from
    Ray's results). Set per connection, for this file only (Optuna's SQLite storage keeps its own)."""
    from sqlalchemy.engine import make_url

    if not uri.startswith("sqlite:"):
        return
    database = make_url(uri).database
    if not database or database == ":memory:":
        return
    if not _WAL_FILES:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.listen(Engine, "connect", _on_connect)
    _WAL_FILES.add(os.path.realpath(database))


def _on_connect(dbapi_connection: Any, record: Any) -> None:
    import sqlite3

    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    files = [row[2] for row in dbapi_connection.execute("PRAGMA database_list") if row[1] == "main"]
    if files and os.path.realpath(files[0]) in _WAL_FILES:
        try:
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.OperationalError:  # another process holds it: its journal mode stays
            pass


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

    def __sub__(self, other: "Writes") -> "Writes":
        return Writes(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    def describe(self) -> str:
        """Every kind, zeros included: the sweep's end line and the sync's line read alike."""
        return ", ".join(f"{getattr(self, k)} {v}" for k, v in _WRITE_NAMES.items())

    def brief(self) -> str:
        """The kinds there are, e.g. `11 metric values, 1 tags`."""
        return ", ".join(f"{getattr(self, k)} {v}" for k, v in _WRITE_NAMES.items() if getattr(self, k))


_WRITE_NAMES = {"metrics": "metric values", "params": "params", "tags": "tags",
                "statuses": "run statuses", "artifacts": "artifact uploads"}


@dataclass(frozen=True)
class Store:
    """Where a sweep is tracked: an MLflow URI and experiment (artifacts beside a local store)."""

    uri: str
    experiment: str

    def client(self) -> MlflowClient:
        configure_client()
        sqlite_wal(self.uri)
        return MlflowClient(tracking_uri=self.uri)

    @property
    def shown(self) -> str:
        """The URI as printed and logged: any password masked."""
        return redact(self.uri)

    def experiment_id(self, client: MlflowClient | None = None) -> str:
        """The experiment's id, created on first use; tagged as a model-training experiment
        (`EXPERIMENT_KIND`) unless it already has a kind (one a user picked in the UI stays)."""
        client = client or self.client()
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            if EXPERIMENT_KIND_TAG not in found.tags:
                client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return found.experiment_id
        artifacts = None
        if self.uri.startswith("sqlite:"):  # keep artifacts in the working folder, not a server's
            artifacts = Path(DEFAULT_ARTIFACTS).resolve().as_uri()
        return client.create_experiment(self.experiment, artifact_location=artifacts,
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})


def _tag_filter(**tags: str) -> str:
    return " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())


def search_runs(client: MlflowClient, exp_id: str, **tags: str) -> list:
    return client.search_runs([exp_id], _tag_filter(**tags), max_results=10_000)


def find_parent(client: MlflowClient, exp_id: str, sweep_id: str):
    runs = search_runs(client, exp_id, **{TAG_ROLE: "sweep", TAG_SWEEP: sweep_id})
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
    tags = {**source_tags(), TAG_ROLE: "sweep", TAG_SWEEP: sweep_id, TAG_SPEC_HASH: spec_hash,
            RUN_NAME: spec_name}
    run_id = client.create_run(exp_id, tags=tags, run_name=spec_name).info.run_id
    client.log_batch(run_id, params=[Param(k, redact(str(v))) for k, v in params.items()
                                     if v is not None])
    with tempfile.TemporaryDirectory() as folder:  # the spec as written, secrets masked
        copy = Path(folder) / Path(spec_file).name
        copy.write_text(redact(Path(spec_file).read_text()))
        client.log_artifact(run_id, str(copy), "spec")
    return run_id


def log_folder(store: Store, run_id: str, folder: Path, artifact_path: str) -> None:
    store.client().log_artifacts(run_id, str(folder), artifact_path)


def sweep_runs(store: Store, sweep_id: str) -> tuple[Any, list]:
    """(parent run or None, child runs) of one sweep, for reports and checks."""
    client = store.client()
    found = client.get_experiment_by_name(store.experiment)
    if found is None:
        return None, []
    exp_id = found.experiment_id
    children = search_runs(client, exp_id, **{TAG_ROLE: "trial", TAG_SWEEP: sweep_id})
    return find_parent(client, exp_id, sweep_id), children


def epoch_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The trial's own numeric metrics in a Ray result (Ray's counters and the config left out)."""
    return {
        k: float(v) for k, v in result.items()
        if k not in _NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def child_tags(parent_id: str, sweep_id: str, trial: dict[str, Any]) -> dict[str, str]:
    """The tags a trial's run is created with: its place in the sweep and its source."""
    return {**source_tags(), PARENT: parent_id, TAG_ROLE: "trial", TAG_SWEEP: sweep_id,
            TAG_KEY: trial["key"], RUN_NAME: trial["slug"]}


def create_child(client: MlflowClient, exp_id: str, parent_id: str, sweep_id: str,
                 trial: dict[str, Any], **extra_tags: str) -> str:
    """A new run for a trial: tags, params and its data as dataset inputs; returns its id."""
    tags = {**child_tags(parent_id, sweep_id, trial), **extra_tags}
    run_id = client.create_run(exp_id, tags=tags, run_name=trial["slug"]).info.run_id
    client.log_batch(run_id, params=run_params(trial))
    inputs = dataset_inputs(trial.get("config", {}))
    if inputs:
        client.log_inputs(run_id, datasets=inputs)
    return run_id


def _last_step(client: MlflowClient, run_id: str, key: str) -> int:
    return int(max((m.step for m in client.get_metric_history(run_id, key)), default=0))


def logged_epoch(client: MlflowClient, run: Any, key: str | None = None) -> int:
    """The last epoch a run holds: its `TAG_EPOCH` (runs logged before that tag existed kept the
    epoch as a metric). The tag is written after the epoch's metrics, and MLflow's SQL store commits
    a batch's metrics and tags apart, so a driver killed in between leaves it one epoch behind: with
    `key`, a metric every epoch logs, its last step counts too."""
    tag = run.data.tags.get(TAG_EPOCH)
    last = int(tag) if tag is not None and tag.isdigit() else _last_step(client, run.info.run_id, "epoch")
    return max(last, _last_step(client, run.info.run_id, key)) if key else last


def run_params(trial: dict[str, Any]) -> list[Param]:
    """Labels (strategy, generation, dataset, regime, seed), every hyperparameter the strategy
    runs with (`hp.NAME`) and the rest of the trainable's config, flattened. Unset (None) values
    are left out: MLflow would show them as the string "None"."""
    flat: dict[str, Any] = dict(trial["labels"])
    flat.update({f"hp.{k}": v for k, v in trial.get("hp", {}).items()})

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat.setdefault(prefix, value)

    walk("", trial["config"])
    return [Param(k, str(v)[:6000]) for k, v in flat.items() if v is not None]


RUN_FACTS = ("precision",)  # decided on the trial's device (bf16 or fp32 when unset), reported per epoch


def run_facts(result: dict[str, Any], held: Collection[str]) -> list[Param]:
    """Params a trial learns only when it runs (the precision its device resolved), from one of its
    results, less those the run already holds: a spec that left `precision` unset still shows which
    one ran."""
    return [Param(k, str(result[k])) for k in RUN_FACTS if k in result and k not in held]


def result_step(result: dict[str, Any]) -> int:
    return int(result.get("epoch", result.get("training_iteration", 0)))


def result_values(result: dict[str, Any], step: int) -> dict[str, float]:
    """The metrics a result logs at `step` (its epoch, which is their step, not a metric)."""
    return epoch_metrics(result)


def epoch_batch(result: dict[str, Any], step: int, at_ms: int) -> tuple[list[Metric], list[RunTag]]:
    """One epoch's log_batch: its metrics at `step` and the run's last-epoch tag."""
    metrics = [Metric(k, v, at_ms, step) for k, v in result_values(result, step).items()]
    return metrics, [RunTag(TAG_EPOCH, str(step))]


def end_run(client: MlflowClient, run_id: str, status: str) -> int:
    """A trial's final status: the dals.status tag, a note saying why for a diverged or failed
    trial, and the MLflow run status (FAILED only for crashes; see RUN_STATUS). Returns the
    number of tags written."""
    tags = [RunTag(TAG_STATUS, status)] + ([RunTag(NOTE, NOTES[status])] if status in NOTES else [])
    client.log_batch(run_id, tags=tags)
    client.set_terminated(run_id, RUN_STATUS.get(status, "FINISHED"))
    return len(tags)
