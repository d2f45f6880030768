"""Grid sweeps on Ray Tune: a validated spec -> a grid of trials, resumable, tracked, reported.

Running the same spec again restores its experiment folder (`Tuner.can_restore` / `Tuner.restore`;
see `sweeps.experiment.folder`), `fresh=True` deletes it first.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from ray import tune
from ray.tune import Callback

from sweeps.experiment import resume
from sweeps.experiment.faults import Faults
from sweeps.experiment.folder import REPORTED_FILE, experiment_dir, saved_trials, start_or_resume
from sweeps.experiment.storage import filesystem
from sweeps.report.tables import write_report
from sweeps.runner import resources
from sweeps.runner.progress import ProgressCallback
from sweeps.runner.ray_setup import init_ray, scheduler
from sweeps.spec.sweep import Spec, TrialSpec
from sweeps.tracking import outbox, sync
from sweeps.tracking.callback import MlflowCallback
from sweeps.tracking.store import Store, Writes, open_parent
from sweeps.tracking.summary import log_sweep_summary
from sweeps.tracking.system import SystemSampler
from sweeps.train.config import TrialConfig
from sweeps.train.trial import Trial


# ----------------------------------------------------------------------------- the trainable


def train_trial(config: dict[str, Any], every: dict[str, Any] | None = None) -> None:
    """Ray function trainable: one `Trial`, resumed from its newest checkpoint, reported every
    epoch, checkpointed when `every` (`resume.CheckpointEvery`'s arguments) says.

    Epochs the driver never recorded (it was killed) are reported again from the checkpoint or the
    trial's final record, not trained again (`resume.resume`, which finds the newest checkpoint in
    the trial's folder on any storage: Ray's is among them); `DALS_FAULT` injects a failure for
    tests (`faults.Faults`).
    """
    trial = Trial(TrialConfig.restore(config["trial"]["config"]))
    folder = resume.TrialFolder.current()
    replay = resume.resume(trial, folder, restored=tune.get_checkpoint() is not None)
    for metrics in replay:
        tune.report(dict(metrics))
    run_epochs(trial, folder, resume.CheckpointEvery(**(every or {})),
               Faults.from_env(config["trial"]["key"], folder), _report)


def _report(metrics: dict[str, Any], checkpoint: str | None) -> None:
    tune.report(metrics, checkpoint=checkpoint and tune.Checkpoint.from_directory(checkpoint))


def run_epochs(trial: Trial, folder: resume.TrialFolder, every: resume.CheckpointEvery,
               faults: Faults, report: Callable[[dict[str, Any], str | None], None]) -> None:
    """Train the rest of `trial`, calling `report(metrics, checkpoint folder or None)` per epoch.

    An epoch without a checkpoint is written to the trial's `REPORTED_FILE` before it is
    reported; redone from an older checkpoint (the trial was killed), an epoch found there is
    reported as it was the first time (training is bit-identical; its timings are not)."""
    before = folder.reported_before()
    since: dict[int, dict[str, Any]] = {}
    system = SystemSampler()  # the worker's CPU, memory and GPU per epoch (MLflow's system metrics)
    while not trial.done:
        metrics = {**trial.run_epoch(), **system.sample()}
        faults.after_epoch(trial.epoch)
        if trial.epoch in before:
            metrics = before[trial.epoch]
            trial.history[-1] = {k: metrics.get(k, v) for k, v in trial.history[-1].items()}
        if every.due(trial):
            with tempfile.TemporaryDirectory() as tmp:
                resume.save_checkpoint(trial, tmp)
                report(metrics, tmp)
            since = {}
        else:
            since[trial.epoch] = metrics
            folder.write(REPORTED_FILE, json.dumps(since, default=str))
            report(metrics, None)


def trial_entry(trial: TrialSpec) -> dict[str, Any]:
    """What Ray carries per trial: the stable key, labels, the trial's full config and the
    hyperparameters its strategy runs with (`TrialConfig.hyperparameters`, its regime's defaults
    under the config's overrides): what MLflow records as `hp.*`."""
    config = trial.config()
    return {"key": trial.key, "slug": trial.slug, "labels": trial.labels(), "config": config.to_dict(),
            "hp": config.hyperparameters()}


def trial_name(trial: Any) -> str:
    """Ray trial name and folder: the trial key as a slug (module level so Ray can pickle it)."""
    return trial.config["trial"]["slug"]


# ----------------------------------------------------------------------------- the experiment folder


# ----------------------------------------------------------------------------- running


def _tuner(spec: Spec, entries: list[dict[str, Any]], callbacks: list):
    trainable = tune.with_resources(tune.with_parameters(train_trial, every=spec.checkpoint.policy()),
                                    {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    # Ray gets the storage's filesystem and paths inside it (`sweeps.experiment.storage`): files
    # appear whole, a kill never leaves a truncated one, on a local disk or in a bucket
    fs, folder = filesystem(experiment_dir(spec))
    if tune.Tuner.can_restore(folder, storage_filesystem=fs):
        return tune.Tuner.restore(folder, trainable=trainable, resume_errored=True,
                                  storage_filesystem=fs), True
    tune_config = tune.TuneConfig(
        metric=spec.metric, mode=spec.mode,
        scheduler=scheduler(spec.scheduler, max(int(e["config"]["epochs"]) for e in entries)),
        max_concurrent_trials=spec.resources.max_concurrent, reuse_actors=True,
        trial_name_creator=trial_name, trial_dirname_creator=trial_name,
    )
    run_config = tune.RunConfig(
        name=spec.name, storage_path=filesystem(spec.storage_path())[1], storage_filesystem=fs, verbose=0,
        callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=spec.failure.max_retries),
        # Tune keeps every checkpoint (with num_to_keep it snapshots the whole experiment, waiting,
        # at each one: per trial, work that grows with the sweep); `KeepCheckpoints` prunes them
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
    )
    tuner = tune.Tuner(trainable, param_space={"trial": tune.grid_search(entries)},
                       tune_config=tune_config, run_config=run_config)
    return tuner, False


def saved_counts(folder: str) -> tuple[int, int]:
    """(finished, failed) trials as a resume finds them: finished as Tune saved them, or ended with
    a final record Tune's last snapshot missed (a driver killed between a trial's end and the next
    snapshot, e.g. by `dals jobs stop`'s SIGKILL after its grace period); the resumed trainable
    reports those from the record without training, so they count as finished before."""
    trials = saved_trials(folder)
    failed = sum(t.status == "ERROR" for t in trials)
    finished = sum(t.status == "TERMINATED" or (t.status != "ERROR" and _has_final_record(t)) for t in trials)
    return finished, failed


def _has_final_record(trial: Any) -> bool:
    folder = resume.TrialFolder.of(trial)
    return folder is not None and folder.final_record() is not None


class KeepCheckpoints(Callback):
    """Keep a running trial's `keep` newest checkpoints: the older ones are emptied as a new one
    registers (`TrialFolder.empty_older_checkpoints`), in place of Tune's `num_to_keep`."""

    def __init__(self, keep: int) -> None:
        self.keep = keep

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        folder = resume.TrialFolder.of(trial)
        if folder is not None:
            folder.empty_older_checkpoints(checkpoint.path, self.keep)


class DropFinalCheckpoints(Callback):
    """Delete a trial's checkpoints once it has finished (any storage): a finished trial is
    never resumed, and its metrics live in result.json and MLflow. Should the driver die before
    Tune saves the trial as finished, the trial's final record (`folder.FINAL_FILE`) lets the
    resumed trainable report it finished instead of training it again."""

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # `trial.path` is a path inside the storage's filesystem (no scheme, also on a bucket):
        # the trial's own filesystem says where it is
        resume.record_final(trial)
        resume.empty_checkpoints(trial)  # the folders go once Tune has saved its state


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
    start = time.monotonic()
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "creating tables" chatter
    with ThreadPoolExecutor(max_workers=1) as pool:  # MLflow's imports overlap Ray's start-up
        pool.submit(resources.preload_mlflow)
        init_ray(address, num_cpus)
    # one trial must fit before anything is recorded (the folder, MLflow)
    resources.check(spec.resources.cpu, spec.resources.gpu, str(spec_file))
    meta, _ = start_or_resume(spec, spec_file, fresh)
    entries = [trial_entry(t) for t in spec.trials()]
    store = Store(meta.tracking_uri, meta.experiment) if meta.tracking_uri else None
    callbacks: list = [ProgressCallback(spec.name, len(entries), spec.metric, spec.mode,
                                        epochs=max(int(e["config"]["epochs"]) for e in entries)),
                       KeepCheckpoints(spec.keep_checkpoints)]
    if not spec.keep_final_checkpoint:
        callbacks.append(DropFinalCheckpoints())
    parent_id = None
    if store is not None:
        parent_id = open_parent(store, meta.sweep_id, spec.name, spec.digest, spec_file,
                                {"trials": len(entries), "metric": spec.metric, "mode": spec.mode,
                                 "storage": experiment_dir(spec), "scheduler": spec.scheduler.type})
        callbacks.append(MlflowCallback(store, meta.sweep_id))
    tuner, restored = _tuner(spec, entries, callbacks)
    before = saved_counts(experiment_dir(spec))[0] if restored else 0
    where = f"MLflow {store.shown} (experiment {meta.experiment})" if store else "MLflow off"
    state = f"resuming, {before} finished before" if restored else "new"
    say(f"sweep {spec.name}: {len(entries)} trials ({state}) · {experiment_dir(spec)} · {where}")

    tuner.fit()
    if store is not None:
        outbox.flush_all()
    trials = saved_trials(experiment_dir(spec))
    resume.complete_results(trials)
    resume.drop_empty_checkpoints(trials)
    if store is not None:  # skipped, and counted, while MLflow is unreachable
        outbox.attempt(store, Writes(),
                       lambda: sync.reconcile_tracking(store, meta.sweep_id, trials))
    statuses = [t.status for t in trials]
    finished, failed = statuses.count("TERMINATED"), statuses.count("ERROR")
    outcome = Outcome(
        name=spec.name, sweep_id=meta.sweep_id, folder=experiment_dir(spec), total=len(entries),
        finished=finished, failed=failed, finished_before=before,
        wall_s=time.monotonic() - start, report=None,
    )
    if store is not None and not outcome.complete:
        sync.mark_interrupted(store, meta.sweep_id)
    report_file = None
    if outcome.complete and report:
        report_file = write_report(experiment_dir(spec))
        sync.upload_report(experiment_dir(spec), report_file.parent)
        say(f"report: {report_file}")
    if store is not None:
        outbox.attempt(store, Writes(), lambda: log_sweep_summary(store, parent_id, experiment_dir(spec),
                                                                  spec.metric, spec.mode))
        outbox.close_parent(store, parent_id, "FINISHED" if outcome.complete else "KILLED")
        missing = outbox.unrecorded_line(store, experiment_dir(spec), spec_file)
        if missing:  # MLflow was down at the end: say what it lacks and how to record it
            say(missing)
    return replace(outcome, report=str(report_file) if report_file else None)


def dry_run(spec: Spec, say=print) -> int:
    """Print the trials a sweep would run; returns their count."""
    trials = spec.trials()
    for t in trials:
        cfg, given = t.config(), t.settings.trial_kwargs()
        shown = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "model": cfg.model,
                 **{k: v for k, v in given.items() if k != "hp"}, **given.get("hp", {})}
        say(f"  {t.key:<40} gen{t.generation} {t.regime:<9} "
            + " ".join(f"{k}={v}" for k, v in shown.items()))
    res = spec.resources
    say(f"{spec.name}: {len(trials)} trials ({spec.grid.shape()}), "
        f"{res.cpu:g} CPU + {res.gpu:g} GPU per trial, scheduler {spec.scheduler.type}, "
        f"storage {experiment_dir(spec)}")
    return len(trials)
