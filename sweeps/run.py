"""Ray Tune runner: a validated spec -> a grid of trials, resumable, tracked, reported.

The experiment folder `<storage>/<spec name>` is the sweep's identity: running the same spec again
restores it (`Tuner.can_restore` / `Tuner.restore`), `fresh=True` deletes it first. Beside Ray's
files it holds `dals-sweep.json` (sweep id, spec hash, MLflow store) and a copy of the spec, so a
report can be regenerated from the folder alone and a changed spec is refused, not mixed in.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ray.tune import Callback

from sweeps.spec import Spec, SpecError, TrialSpec

META_FILE = "dals-sweep.json"
SPEC_COPY = "dals-spec.yaml"


# ----------------------------------------------------------------------------- the trainable


def train_trial(config: dict[str, Any]) -> None:
    """Ray function trainable: one `Trial`, resumed from its newest checkpoint, reported every epoch.

    Epochs the driver never recorded (it was killed) are reported again from the checkpoint or the
    trial's final record, not trained again (`recovery.resume`); `DALS_FAULT` injects a failure
    for tests (`recovery.Faults`).
    """
    from ray import tune

    from sweeps import recovery
    from sweeps.trainable import Trial

    trial = Trial(config["trial"]["config"])
    folder = recovery.TrialFolder.current()
    checkpoint = tune.get_checkpoint()
    with contextlib.ExitStack() as stack:
        given = None
        if checkpoint is not None:  # on local storage, read in place (a deleted one is skipped)
            given = Path(checkpoint.path if folder.local()
                         else stack.enter_context(checkpoint.as_directory()))
        replay = recovery.resume(trial, given, folder)
    for metrics in replay:
        tune.report(dict(metrics))
    faults = recovery.Faults.from_env(config["trial"]["key"], folder)
    while not trial.done:
        metrics = trial.run_epoch()
        faults.after_epoch(trial.epoch)
        with tempfile.TemporaryDirectory() as tmp:
            trial.save(tmp)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def trial_entry(trial: TrialSpec) -> dict[str, Any]:
    """What Ray carries per trial: the stable key, labels, the trainable's full config and the
    strategy's effective hyperparameters (its defaults under the config's overrides)."""
    import dalsopt

    config = trial.config()
    return {"key": trial.key, "slug": trial.slug, "labels": trial.labels(), "config": config,
            "hp": dalsopt.resolve(trial.strategy, **config["hp"])}


def final_status(reported: str | None) -> str:
    """A trial's status once Tune ended it: the trainable's own (finished / diverged), or
    `stopped` when it ended before its last epoch (an ASHA stop)."""
    return reported if reported in ("finished", "diverged") else "stopped"


def trial_name(trial: Any) -> str:
    """Ray trial name and folder: the trial key as a slug (module level so Ray can pickle it)."""
    return trial.config["trial"]["slug"]


# ----------------------------------------------------------------------------- the experiment folder


@dataclass(frozen=True)
class SweepMeta:
    sweep_id: str
    name: str
    spec_hash: str
    tracking_uri: str | None
    experiment: str
    metric: str
    mode: str
    created: float


def experiment_dir(spec: Spec) -> str:
    return f"{spec.storage_path().rstrip('/')}/{spec.name}"


def _fs(path: str):
    import pyarrow.fs

    if "://" in path:
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), path


def read_text(folder: str, name: str) -> str | None:
    fs, base = _fs(folder)
    try:
        with fs.open_input_stream(f"{base}/{name}") as f:
            return f.read().decode()
    except (FileNotFoundError, OSError):
        return None


def write_text(folder: str, name: str, text: str) -> None:
    fs, base = _fs(folder)
    fs.create_dir(base, recursive=True)
    with fs.open_output_stream(f"{base}/{name}") as f:
        f.write(text.encode())


def read_meta(folder: str) -> SweepMeta | None:
    text = read_text(folder, META_FILE)
    return SweepMeta(**json.loads(text)) if text else None


def delete_dir(folder: str) -> None:
    fs, base = _fs(folder)
    import pyarrow.fs

    if fs.get_file_info(base).type != pyarrow.fs.FileType.NotFound:
        fs.delete_dir(base)


def start_or_resume(spec: Spec, spec_file: Path, fresh: bool) -> tuple[SweepMeta, bool]:
    """The sweep's meta (new or the one on disk) and whether an earlier run is being resumed."""
    folder = experiment_dir(spec)
    if fresh:
        delete_dir(folder)
    meta = read_meta(folder)
    if meta is not None:
        if meta.spec_hash != spec.digest:
            raise SpecError(
                f"{spec_file}: the spec changed since sweep {spec.name!r} started in {folder}; "
                "run it with --fresh to start over, or give the spec another name"
            )
        return meta, True
    meta = SweepMeta(
        sweep_id=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}",
        name=spec.name, spec_hash=spec.digest,
        tracking_uri=spec.tracking_uri() if spec.tracking.enabled else None,
        experiment=spec.experiment(), metric=spec.metric, mode=spec.mode, created=time.time(),
    )
    write_text(folder, SPEC_COPY, spec_file.read_text())
    write_text(folder, META_FILE, json.dumps(asdict(meta), indent=2))
    return meta, False


# ----------------------------------------------------------------------------- running


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Local Ray (no dashboard, worker logs kept off the terminal) or a cluster at `address`."""
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune snapshots its state whenever a trial has saved `num_to_keep` checkpoints: good for
    # resume, cheap at our trial sizes, and not worth a warning each time.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Failed trials get one line from ProgressCallback (error and traceback file), not Tune's
    # traceback on the terminal.
    for name in ("ray.tune.execution.tune_controller", "ray.tune.tune"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.ERROR)
    if address:
        ray.init(address=address, **kwargs)
    else:
        # No worker_process_setup_hook importing torch early: torch would fix its thread count
        # before Ray sets OMP_NUM_THREADS for the trial, and two trials on two cores would each
        # run two threads (measured: 4x slower epochs).
        ray.init(include_dashboard=False, num_cpus=num_cpus, **kwargs)


def _scheduler(spec: Spec, entries: list[dict[str, Any]]):
    if spec.scheduler.type != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    max_t = max(int(e["config"].get("epochs", 1)) for e in entries)
    return ASHAScheduler(time_attr="epoch", max_t=max_t,
                         grace_period=min(spec.scheduler.grace_period, max_t),
                         reduction_factor=spec.scheduler.reduction_factor)


def _tuner(spec: Spec, entries: list[dict[str, Any]], callbacks: list):
    from ray import tune

    from sweeps.recovery import storage_filesystem

    trainable = tune.with_resources(train_trial, {"cpu": spec.resources.cpu,
                                                  "gpu": spec.resources.gpu})
    folder = experiment_dir(spec)
    fs = storage_filesystem(folder)  # files appear whole: a kill never leaves a truncated one
    if tune.Tuner.can_restore(folder, storage_filesystem=fs):
        return tune.Tuner.restore(folder, trainable=trainable, resume_errored=True,
                                  storage_filesystem=fs), True
    tune_config = tune.TuneConfig(
        metric=spec.metric, mode=spec.mode, scheduler=_scheduler(spec, entries),
        max_concurrent_trials=spec.resources.max_concurrent, reuse_actors=True,
        trial_name_creator=trial_name, trial_dirname_creator=trial_name,
    )
    run_config = tune.RunConfig(
        name=spec.name, storage_path=spec.storage_path(), storage_filesystem=fs, verbose=0,
        callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=spec.failure.max_retries),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.keep_checkpoints),
    )
    tuner = tune.Tuner(trainable, param_space={"trial": tune.grid_search(entries)},
                       tune_config=tune_config, run_config=run_config)
    return tuner, False


def saved_trials(folder: str) -> list:
    """Trials as Tune last saved them (what a resume starts from). After Ctrl+C, Tune's in-memory
    trials show the interrupted ones as terminated; the saved state does not."""
    from ray.tune import ExperimentAnalysis

    return ExperimentAnalysis(folder).trials


def saved_counts(folder: str) -> tuple[int, int]:
    """(finished, failed) trials as Tune saved them."""
    statuses = [t.status for t in saved_trials(folder)]
    return statuses.count("TERMINATED"), statuses.count("ERROR")


class DropFinalCheckpoints(Callback):
    """Delete a trial's checkpoints once it has finished (local storage): a finished trial is
    never resumed, and its metrics live in result.json and MLflow. Should the driver die before
    Tune saves the trial as finished, the trial's final record (`recovery.FINAL_FILE`) lets the
    resumed trainable report it finished instead of training it again."""

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        from sweeps import recovery

        if trial.path and "://" not in trial.path:
            recovery.record_final(trial)
            recovery.empty_checkpoints(trial.path)  # the folders go once Tune has saved its state


@dataclass(frozen=True)
class Outcome:
    """What one `run_sweep` call did; `complete` is False when it was interrupted."""

    name: str
    sweep_id: str
    folder: str
    total: int
    finished: int
    failed: int
    finished_before: int
    wall_s: float
    report: str | None

    @property
    def complete(self) -> bool:
        return self.finished + self.failed == self.total


def run_sweep(spec: Spec, spec_file: Path, *, address: str | None = None, fresh: bool = False,
              report: bool = True, num_cpus: int | None = None, say=print) -> Outcome:
    """Run (or resume) the sweep; returns counts. Ctrl+C stops it with its state saved."""
    from sweeps import progress, recovery, tracking

    start = time.monotonic()
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "creating tables" chatter
    meta, _ = start_or_resume(spec, spec_file, fresh)
    entries = [trial_entry(t) for t in spec.trials()]
    store = tracking.Store(meta.tracking_uri, meta.experiment) if meta.tracking_uri else None
    callbacks: list = [progress.ProgressCallback(spec.name, len(entries), spec.metric, spec.mode)]
    if not spec.keep_final_checkpoint:
        callbacks.append(DropFinalCheckpoints())
    parent_id = None
    with ThreadPoolExecutor(max_workers=1) as pool:  # MLflow set-up overlaps Ray's start-up
        parent = store and pool.submit(
            tracking.open_parent, store, meta.sweep_id, spec.name, spec.digest, spec_file,
            {"trials": len(entries), "metric": spec.metric, "mode": spec.mode,
             "storage": experiment_dir(spec), "scheduler": spec.scheduler.type},
        )
        init_ray(address, num_cpus)
        if store is not None:
            parent_id = parent.result()
            callbacks.append(tracking.MlflowCallback(store, meta.sweep_id))
    tuner, restored = _tuner(spec, entries, callbacks)
    before = saved_counts(experiment_dir(spec))[0] if restored else 0
    where = f"MLflow {store.shown} (experiment {meta.experiment})" if store else "MLflow off"
    state = f"resuming, {before} finished before" if restored else "new"
    say(f"sweep {spec.name}: {len(entries)} trials ({state}) · {experiment_dir(spec)} · {where}")

    tuner.fit()
    if store is not None:
        tracking.flush_all()
    trials = saved_trials(experiment_dir(spec))
    recovery.complete_results(trials)
    recovery.drop_empty_checkpoints(trials)
    if store is not None:  # skipped, and counted, while MLflow is unreachable
        tracking.attempt(store, tracking.Writes(),
                         lambda: recovery.reconcile_tracking(store, meta.sweep_id, trials))
    statuses = [t.status for t in trials]
    finished, failed = statuses.count("TERMINATED"), statuses.count("ERROR")
    outcome = Outcome(
        name=spec.name, sweep_id=meta.sweep_id, folder=experiment_dir(spec), total=len(entries),
        finished=finished, failed=failed, finished_before=before,
        wall_s=time.monotonic() - start, report=None,
    )
    if store is not None and not outcome.complete:
        tracking.mark_interrupted(store, meta.sweep_id)
    report_file = None
    if outcome.complete and report:
        from sweeps import report as reporting

        report_file = reporting.make_report(experiment_dir(spec))
        say(f"report: {report_file}")
    if store is not None:
        tracking.close_parent(store, parent_id, "FINISHED" if outcome.complete else "KILLED")
        missing = tracking.unrecorded_line(store, experiment_dir(spec), spec_file)
        if missing:  # MLflow was down at the end: say what it lacks and how to record it
            say(missing)
    return replace(outcome, report=str(report_file) if report_file else None)


def dry_run(spec: Spec, say=print) -> int:
    """Print the trials a sweep would run; returns their count."""
    trials = spec.trials()
    for t in trials:
        cfg, given = t.config(), t.settings.trial_kwargs()
        shown = {"epochs": cfg["epochs"], "batch_size": cfg["batch_size"], "model": cfg["model"],
                 **{k: v for k, v in given.items() if k != "hp"}, **given.get("hp", {})}
        say(f"  {t.key:<40} gen{t.generation} {t.regime:<9} "
            + " ".join(f"{k}={v}" for k, v in shown.items()))
    res = spec.resources
    say(f"{spec.name}: {len(trials)} trials ({len(spec.grid.strategies)} strategies x "
        f"{len(spec.grid.datasets)} datasets x {len(spec.grid.seeds)} seeds), "
        f"{res.cpu:g} CPU + {res.gpu:g} GPU per trial, scheduler {spec.scheduler.type}, "
        f"storage {experiment_dir(spec)}")
    return len(trials)
