"""Tuning studies: a `TuneSpec` -> one Optuna study per regime (or dataset), run on Ray Tune.

Each study lives in a persistent Optuna storage (a journal file beside the MLflow db by default,
or an RDB URL), so running the spec again continues it: the COMPLETE and PRUNED trials already in
the study are counted and only the remaining ones run; `fresh=True` deletes the studies first.
A trial trains one `sweeps.train.trial.Trial` per (dataset, seed) epoch by epoch and reports the
mean metric over them (and each seed's value), so a lucky seed does not win.
MLflow: one parent run per study, one child run per trial (sweeps.tracking's layout); at the end
the parent gets the best params, the optimisation history and the parameter importances.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune import Callback
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from sweeps.experiment import resume
from sweeps.experiment.storage import delete_dir, filesystem, join
from sweeps.redact import redact
from sweeps.runner import resources
from sweeps.runner.progress import ProgressCallback
from sweeps.runner.ray_setup import init_ray, scheduler
from sweeps.runner.seeds import SeedGroup
from sweeps.runner.studies import (
    ATTR_CONTINUES, ATTR_SWEEP, CONTINUES, OPTUNA_TRIAL, done_count, open_study, optuna_storage,
    recover_study, sampler,
)
from sweeps.spec.tune import Study, TuneSpec
from sweeps.tracking import outbox
from sweeps.tracking.callback import MlflowCallback
from sweeps.tracking.store import TAG_STATUS, Store, Writes, open_parent, sweep_runs
from sweeps.tracking.system import SystemSampler
from sweeps.train.config import TrialConfig
from sweeps.train.status import TrialStatus
from sweeps.train.trial import Trial

# ----------------------------------------------------------------------------- the trainable


def seed_mean(values: list[float]) -> float:
    return sum(values) / len(values)


def tune_trial(config: dict[str, Any]) -> None:
    """Ray function trainable: every (dataset, seed) `Trial` one epoch at a time; reports the mean.

    All seeds are checkpointed together every epoch (`SeedGroup`): a trial Ray restores, or the
    trial queued again in place of one a killed run left (config `continues`: the earlier trials,
    whose folders hold its checkpoints), resumes from the newest checkpoint and reports the epochs
    it had again instead of training them (`resume.resume`).
    """
    study = config["study"]
    hp = {k: config[k] for k in study["params"]}
    trials = [Trial(c) for c in study["configs_fn"](hp)]
    group = SeedGroup(trials, functools.partial(epoch_report, study, trials))
    system = SystemSampler()  # the worker's CPU, memory and GPU per epoch (MLflow's system metrics)
    folder = resume.TrialFolder.current()  # None outside a Ray session (a test calling it directly)
    if folder is not None:
        earlier = [folder.sibling(study_trial_dir(study["name"], n)) for n in config.get(CONTINUES, [])]
        for report in resume.resume(group, folder, tune.get_checkpoint() is not None, earlier):
            tune.report(dict(report))
    while not group.done:
        report = {**group.run_epoch(), **system.sample()}
        if folder is None:
            tune.report(report)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            resume.save_checkpoint(group, tmp)
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(tmp))


def epoch_report(study: dict[str, Any], trials: list[Trial], epoch: int,
                 last: list[dict[str, Any]]) -> dict[str, Any]:
    """What a tuning trial reports for `epoch`, from each seed's metrics of it (`last`: an ended
    seed's last ones): the mean over seeds of each metric, each seed's objective, how many
    diverged, the seconds the seeds trained it (a replayed epoch keeps its own), the status."""
    metric = study["metric"]
    report: dict[str, Any] = {"epoch": epoch}
    for key in ("val_accuracy", "val_loss", "eval_accuracy", "eval_loss", "train_loss"):
        if any(key not in m for m in last):  # val_*: only where the datasets hold out validation
            continue
        values = [float(m[key]) for m in last]
        report[key] = seed_mean(values)
        if key in study.get("per_seed", (metric,)):  # the objective's, or those the entry names
            for t, v in zip(trials, values):
                report[f"{key}/{t.config.dataset}/seed{t.seed}"] = v
    if not math.isfinite(report[metric]):  # a diverged seed: the worst value, not NaN
        report[metric] = -1e9 if study["mode"] == "max" else 1e9
    report["diverged"] = sum(m["status"] == TrialStatus.DIVERGED for m in last)
    report["seconds"] = sum(float(m.get("seconds", 0.0)) for m in last if int(m["epoch"]) == epoch)
    ended = all(m["status"] != TrialStatus.RUNNING for m in last)
    report["status"] = str(TrialStatus.FINISHED if ended else TrialStatus.RUNNING)
    return report


def study_trial_dir(study_name: str, number: Any) -> str:
    """A tuning trial's folder in the study's experiment folder: by its Optuna number."""
    return f"{study_name}-{number}"


def trial_dirname(trial: Any) -> str:
    """A Ray tuning trial's folder (module level so Ray can pickle it)."""
    return study_trial_dir(trial.config["study"]["name"], trial.config.get(OPTUNA_TRIAL, trial.trial_id))


class DropEndedCheckpoints(Callback):
    """A tuning trial that ended (finished, pruned) is never resumed: its checkpoints, and those
    of the earlier trials it continued, are deleted (their folders stay, emptied)."""

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        folder = resume.TrialFolder.of(trial)
        if folder is None:
            return
        study = trial.config["study"]["name"]
        for f in [folder, *(folder.sibling(study_trial_dir(study, n)) for n in trial.config.get(CONTINUES, []))]:
            f.empty_checkpoints()


class NumberedOptunaSearch(OptunaSearch):
    """OptunaSearch that puts each trial's Optuna number in its config (`optuna_trial`): MLflow
    runs, progress lines and trial folders name the study's trial, and a killed run's MLflow runs
    can be matched with the study's trials. A trial queued again after a killed run also gets the
    numbers of the trials it continues (`continues`), whose folders hold its checkpoints."""

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        params = super().suggest(trial_id)
        if isinstance(params, dict) and trial_id in self._ot_trials:
            ot_trial = self._ot_trials[trial_id]
            params[OPTUNA_TRIAL] = ot_trial.number
            params[CONTINUES] = list(ot_trial.user_attrs.get(ATTR_CONTINUES, []))
        return params

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """A trial the scheduler (ASHA) stopped before its last epoch is PRUNED in Optuna, as Optuna's
        own pruners record it, not COMPLETE with an early epoch's value competing for best."""
        stopped_early = not error and result is not None and result.get("status") == TrialStatus.RUNNING
        if stopped_early and trial_id in self._ot_trials and trial_id not in self._completed_trials:
            from optuna.trial import TrialState

            ot_trial, step = self._ot_trials[trial_id], result.get("epoch")
            if step is not None and math.isfinite(result.get(self.metric, math.nan)):
                try:  # its last epoch, so the pruned curve is whole
                    ot_trial.report(result[self.metric], step)
                except Exception:  # noqa: BLE001 - already reported at that step: keep the first
                    pass
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)


@dataclass(frozen=True)
class ConfigsFn:
    """Picklable: sampled hp -> the trainable configs of every (dataset, seed) of a study."""

    study: Study
    seeds: tuple[int, ...]

    def __post_init__(self) -> None:
        """Ray writes this object into every trial's params.json, params.pkl and result rows: keep the
        spec's free text out (a description may quote a URL with its password); trials need none."""
        if self.study.spec.description:
            spec = self.study.spec.model_copy(update={"description": ""})
            object.__setattr__(self, "study", replace(self.study, spec=spec))

    def __call__(self, hp: dict[str, Any]) -> list[TrialConfig]:
        return [c for s in self.seeds for c in self.study.configs(s, hp)]


# ----------------------------------------------------------------------------- MLflow


class TuneMlflowCallback(MlflowCallback):
    """The MLflow callback with a per-trial entry built from the sampled params."""

    def __init__(self, store: Store, sweep_id: str, study_name: str, labels: dict[str, Any],
                 params: list[str]):
        super().__init__(store, sweep_id)
        self.study_name, self.labels, self.params = study_name, labels, params

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "study_name": self.study_name, "labels": self.labels,
                "params": self.params}

    def entry(self, trial: Any) -> dict[str, Any]:
        hp = {k: trial.config.get(k) for k in self.params}
        number = trial.config.get(OPTUNA_TRIAL)
        ident = trial.trial_id if number is None else number
        return {"key": f"{self.study_name}/{ident}", "slug": f"{self.study_name}-{ident}",
                "labels": {**self.labels, OPTUNA_TRIAL: number}, "config": {"hp": hp}, "hp": hp}


def reconcile_runs(store: Store, sweep_id: str, ot, metric: str, epochs: int) -> None:
    """MLflow child runs a killed driver left RUNNING: a run whose Optuna trial finished is ended
    as such (with the trial's value as its last metric if that was not logged yet); the others
    are tagged interrupted (their trials were marked FAIL and queued again)."""
    from optuna.trial import TrialState

    _, children = sweep_runs(store, sweep_id)
    trials = {t.number: t for t in ot.get_trials(deepcopy=False)}
    client = store.client()
    for run in children:
        if run.info.status != "RUNNING":
            continue
        number = run.data.params.get(OPTUNA_TRIAL, "")
        t = trials.get(int(number)) if number.isdigit() else None
        if t is None or t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            client.set_tag(run.info.run_id, TAG_STATUS, TrialStatus.INTERRUPTED)
            client.set_terminated(run.info.run_id, "KILLED")
            continue
        step = max(t.intermediate_values, default=epochs)
        if t.value is not None and run.data.metrics.get(metric) != t.value:
            client.log_metric(run.info.run_id, metric, float(t.value), step=step)
        client.set_tag(run.info.run_id, TAG_STATUS,
                       TrialStatus.FINISHED if step >= epochs else TrialStatus.STOPPED)
        client.set_terminated(run.info.run_id, "FINISHED")


def log_summary(store: Store, parent_id: str, ot) -> None:
    """Best params and value, optimisation history and param importances (PNG) on the parent."""
    import warnings

    import matplotlib
    import optuna

    matplotlib.use("Agg")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis

    client = store.client()
    try:
        best = ot.best_trial
    except ValueError:
        return
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "best.json").write_text(json.dumps(
            {"value": best.value, "params": best.params, "number": best.number}, indent=2))
        for name, plot in (("optimization_history", vis.plot_optimization_history),
                           ("param_importances", vis.plot_param_importances)):
            try:
                ax = plot(ot)
                ax.figure.savefig(Path(folder) / f"{name}.png", dpi=100, bbox_inches="tight")
                plt.close(ax.figure)
            except Exception as e:  # importances need >= 2 finished trials with varied params
                logging.getLogger(__name__).info("no %s plot: %s", name, e)
        client.log_artifacts(parent_id, folder, "study")
    client.log_metric(parent_id, "best_value", float(best.value))
    for k, v in best.params.items():
        client.set_tag(parent_id, f"best.{k}", str(v))


# ----------------------------------------------------------------------------- running


@dataclass(frozen=True)
class StudyOutcome:
    name: str
    sweep_id: str
    trials: int
    done_before: int
    done: int
    ran: int
    best_value: float | None
    best_params: dict[str, Any]


def run_study(spec: TuneSpec, spec_file: Path, study: Study, *, fresh: bool = False,
              say=print) -> StudyOutcome:
    storage = optuna_storage(spec.optuna_storage_url())
    ot = open_study(spec, study, storage, fresh)
    if fresh:
        delete_dir(join(spec.storage_path(), study.name))
    fs, storage_path = filesystem(spec.storage_path())
    sweep_id = ot.user_attrs[ATTR_SWEEP]
    before = done_count(ot)
    remaining = max(spec.tune.trials - before, 0)
    trials_so_far = len(ot.get_trials(deepcopy=False))
    stale, again = recover_study(ot, remaining, list(spec.tune.space))
    if stale:
        say(f"study {study.name}: trials {', '.join(map(str, stale))} were left running by a run "
            f"that did not end: marked failed; params of {len(again)} queued again")
    say(f"study {study.name}: {before}/{spec.tune.trials} trials done, running {remaining} "
        f"(storage {redact(spec.optuna_storage_url())})")
    max_epochs = max(c.epochs for c in study.configs(0, {}))
    store = Store(spec.tracking_uri(), spec.experiment()) if spec.tracking.enabled else None
    parent_id = None
    callbacks: list = []
    if store is not None:
        parent_id = open_parent(
            store, sweep_id, study.name, spec.digest, spec_file,
            {"study": study.name, "strategy": spec.tune.strategy, "regime": study.regime,
             "datasets": ",".join(study.datasets), "trials": spec.tune.trials,
             "seeds": spec.tune.seeds, "metric": spec.metric, "mode": spec.mode,
             "sampler": spec.tune.sampler.type, "pruning": spec.tune.pruning.type,
             "optuna_storage": spec.optuna_storage_url()})
        outbox.attempt(store, Writes(),  # skipped while MLflow is unreachable
                       lambda: reconcile_runs(store, sweep_id, ot, spec.metric, max_epochs))
        labels = {"strategy": spec.tune.strategy, "study": study.name, "regime": study.regime,
                  "datasets": ",".join(study.datasets)}
        callbacks.append(TuneMlflowCallback(store, sweep_id, study.name, labels, list(spec.tune.space)))
    if remaining:
        callbacks.insert(0, ProgressCallback(study.name, remaining, spec.metric, spec.mode,
                                             epochs=max_epochs))
        callbacks.append(DropEndedCheckpoints())
        seeds = tuple(range(spec.tune.seeds))
        searcher = NumberedOptunaSearch(
            space={k: p.distribution() for k, p in spec.tune.space.items()},
            metric=spec.metric, mode=spec.mode, sampler=sampler(spec, trials_so_far),
            study_name=study.name, storage=storage)
        searcher = ConcurrencyLimiter(searcher, max_concurrent=spec.tune.concurrency)
        trainable = tune.with_resources(tune_trial, {"cpu": spec.resources.cpu,
                                                     "gpu": spec.resources.gpu})
        tuner = tune.Tuner(
            trainable,
            param_space={"study": {"params": list(spec.tune.space), "metric": spec.metric,
                                   "mode": spec.mode, "configs_fn": ConfigsFn(study, seeds),
                                   "name": study.name}},
            tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, search_alg=searcher,
                                        scheduler=scheduler(spec.tune.pruning, max_epochs),
                                        num_samples=remaining, trial_dirname_creator=trial_dirname),
            # one experiment folder per study, <storage>/<study>, continued by every run (the
            # study in Optuna's storage says which trials are left; Ray's state starts afresh)
            run_config=tune.RunConfig(
                name=study.name, storage_path=storage_path, storage_filesystem=fs, verbose=0,
                callbacks=callbacks, checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
        )
        tuner.fit()
        if store is not None:
            outbox.flush_all()
    ot = open_study(spec, study, storage, False)
    done = done_count(ot)
    try:
        best_value, best_params = ot.best_value, ot.best_params
    except ValueError:
        best_value, best_params = None, {}
    if store is not None:
        log_summary(store, parent_id, ot)
        outbox.close_parent(store, parent_id, "FINISHED" if done >= spec.tune.trials else "KILLED")
    return StudyOutcome(study.name, sweep_id, spec.tune.trials, before, done, done - before,
                        best_value, best_params)


def run_tune(spec: TuneSpec, spec_file: Path, *, address: str | None = None, fresh: bool = False,
             num_cpus: int | None = None, say=print) -> list[StudyOutcome]:
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    init_ray(address, num_cpus)
    # one trial must fit before anything is recorded (Optuna, the folders, MLflow)
    resources.check(spec.resources.cpu, spec.resources.gpu, str(spec_file))
    out = []
    for study in spec.studies():
        o = run_study(spec, spec_file, study, fresh=fresh, say=say)
        say(f"study {o.name}: {o.done}/{o.trials} done ({o.ran} this run), best {spec.metric} "
            f"{o.best_value if o.best_value is None else f'{o.best_value:.4f}'} {o.best_params}")
        out.append(o)
    return out


