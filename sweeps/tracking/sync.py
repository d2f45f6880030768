"""Making MLflow agree with Ray's result files, the sweep's ground truth: `dals sweep sync` after a
tracking outage, the repair after a killed driver (`reconcile_tracking`), the report upload.

The report itself is written by `sweeps.report` (files only); uploading it lives here.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from sweeps.experiment.folder import SPEC_COPY, read_meta, saved_trials, spec_copy
from sweeps.experiment.resume import trial_rows
from sweeps.experiment.storage import read_text
from sweeps.report.tables import write_report
from sweeps.tracking.outbox import attempt
from sweeps.tracking.store import (
    RUN_STATUS, TAG_EPOCH, TAG_KEY, TAG_RAY_ID, TAG_ROLE, TAG_STATUS, TAG_SWEEP, Store,
    TrackingUnavailable, Writes, child_tags, create_child, end_run, find_parent, log_folder,
    logged_epoch, open_parent, reason, result_step, result_values, run_facts, run_params, search_runs,
    sweep_runs, transient,
)
from sweeps.train.status import saved_status


def log_report(store: Store, sweep_id: str, folder: Path) -> bool:
    """Log a report folder to the sweep's parent run; False (and counted) when the store is down."""
    def log() -> None:
        parent, _ = sweep_runs(store, sweep_id)
        if parent is not None:
            log_folder(store, parent.info.run_id, folder, "report")

    return attempt(store, Writes(artifacts=1), log)


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



def upload_report(folder: str, report_dir: Path) -> None:
    """Log a written report folder to the sweep's parent run (when tracked; an unreachable store is
    counted as not recorded, see `outbox.unrecorded_line`)."""
    meta = read_meta(folder)
    if meta and meta.tracking_uri:
        log_report(Store(meta.tracking_uri, meta.experiment), meta.sweep_id, report_dir)


def reconcile_tracking(store: Any, sweep_id: str, trials: list) -> int:
    """Make MLflow agree with the saved trials (`sync_trial`) where a look at each child
    run's logged epochs and status says it does not. A killed driver can leave a run without epochs
    it had reported (a resumed trial does not report them again) or still RUNNING (its trial,
    finished in Tune's state, is never run again). Returns how many runs were repaired."""
    client = store.client()
    exp_id = store.experiment_id(client)
    parent, children = sweep_runs(store, sweep_id)
    if parent is None:
        return 0
    runs = {c.data.tags.get(TAG_KEY): c for c in children}
    repaired = 0
    for trial in trials:
        entry = trial.config.get("trial")
        rows = trial_rows(trial)
        if not entry or not rows:
            continue
        status = saved_status(trial)
        run = runs.get(entry["key"])
        if run is not None and (status is None or (
                run.data.tags.get(TAG_STATUS) == status
                and run.info.status == RUN_STATUS.get(status, "FINISHED"))):
            if logged_epoch(client, run) >= max(int(r.get("epoch", 0)) for r in rows):
                continue
        sync_trial(client, exp_id, parent.info.run_id, sweep_id, trial)
        repaired += 1
    return repaired


# ----------------------------------------------------------------------------- dals sweep sync


def _first_per_epoch(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Epoch -> its first report (an epoch re-run after a restore keeps its first, as logged live)."""
    out: dict[int, dict[str, Any]] = {}
    for row in rows:
        out.setdefault(result_step(row), row)
    return out


def sync_trial(client: MlflowClient, exp_id: str, parent_id: str, sweep_id: str, trial: Any) -> Writes:
    """Record in MLflow what Ray has of one trial and MLflow lacks: its child run and params,
    each epoch's metrics (those steps MLflow does not have), and its final status."""
    spec = trial.config["trial"]
    done = Writes()
    found = search_runs(client, exp_id, **{TAG_ROLE: "trial", TAG_SWEEP: sweep_id, TAG_KEY: spec["key"]})
    if found:
        run = found[0]
    else:
        run = client.get_run(create_child(client, exp_id, parent_id, sweep_id, spec,
                                          **{TAG_RAY_ID: trial.trial_id}))
        done.tags += len(child_tags(parent_id, sweep_id, spec)) + 1
        done.params += len(run_params(spec))
    run_id = run.info.run_id
    epochs = _first_per_epoch(trial_rows(trial))
    params = [p for p in run_params(spec) if p.key not in run.data.params]
    if epochs:
        params += run_facts(epochs[min(epochs)], {*run.data.params, *(p.key for p in params)})
    if params:
        client.log_batch(run_id, params=params)
        done.params += len(params)
    have: dict[str, set[int]] = {}
    missing: list[Metric] = []
    for step, row in sorted(epochs.items()):
        at_ms = int(float(row.get("timestamp", time.time())) * 1000)
        for key, value in result_values(row, step).items():
            if key not in have:
                have[key] = {m.step for m in client.get_metric_history(run_id, key)}
            if step not in have[key]:
                missing.append(Metric(key, value, at_ms, step))
    for i in range(0, len(missing), 1000):  # MLflow's log_batch limit
        client.log_batch(run_id, metrics=missing[i:i + 1000])
    done.metrics += len(missing)
    if epochs and logged_epoch(client, run) < max(epochs):
        client.log_batch(run_id, tags=[RunTag(TAG_EPOCH, str(max(epochs)))])
        done.tags += 1
    status = saved_status(trial)
    if status and (run.data.tags.get(TAG_STATUS) != status
                   or run.info.status != RUN_STATUS.get(status, "FINISHED")):
        done.tags += end_run(client, run_id, status)
        done.statuses += 1
    return done


def sync_sweep(folder: str, say=print) -> Writes:
    """`dals sweep sync`: make the sweep's MLflow runs match Ray's results in `folder` (missing
    runs, params, per-epoch metrics, final statuses; the parent ended and the report logged once
    every trial has ended). Idempotent: a second sync records nothing."""
    meta = read_meta(folder)
    if meta is None:
        raise ValueError(f"{folder}: not a sweep folder (no dals-sweep.json)")
    if not meta.tracking_uri:
        raise ValueError(f"sweep {meta.name} is not tracked (tracking.enabled: false): nothing to sync")
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
        with tempfile.TemporaryDirectory() as tmp:  # the spec copy, local for MLflow's upload
            copy = Path(tmp) / SPEC_COPY
            copy.write_text(read_text(folder, SPEC_COPY) or "")
            parent_id = open_parent(store, meta.sweep_id, meta.name, meta.spec_hash, copy,
                                    {"storage": folder})
    else:
        parent_id = parent.info.run_id
    trials = saved_trials(folder)
    done = Writes()
    for trial in trials:
        done += sync_trial(client, exp_id, parent_id, meta.sweep_id, trial)
    if trials and all(t.status in ("TERMINATED", "ERROR") for t in trials) \
            and len(trials) == _grid_size(folder):
        parent = client.get_run(parent_id)
        if not [a for a in client.list_artifacts(parent_id, "report")]:
            log_folder(store, parent_id, write_report(folder).parent, "report")
            done.artifacts += 1
        if parent.info.status != "FINISHED":
            client.set_terminated(parent_id, "FINISHED")
            done.statuses += 1
    say(f"sync {meta.name}: recorded {done.describe()} in MLflow at {store.shown} "
        f"(experiment {meta.experiment!r})")
    return done


def _grid_size(folder: str) -> int:
    """How many trials the sweep's spec (its copy in the folder) stands for."""
    return len(spec_copy(folder).trials())
