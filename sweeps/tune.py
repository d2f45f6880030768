"""Tuning studies: a `TuneSpec` -> one Optuna study per regime (or dataset), run on Ray Tune.

Each study lives in a persistent Optuna storage (a journal file beside the MLflow db by default,
or an RDB URL), so running the spec again continues it: the COMPLETE and PRUNED trials already in
the study are counted and only the remaining ones run; `fresh=True` deletes the studies first.
A trial trains one `sweeps.trainable.Trial` per (dataset, seed) epoch by epoch and reports the
mean metric over them (and each seed's value), so a lucky seed does not win.
MLflow: one parent run per study, one child run per trial (sweeps.tracking's layout); at the end
the parent gets the best params, the optimisation history and the parameter importances.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune.search.optuna import OptunaSearch

from sweeps import tracking
from sweeps.redact import redact
from sweeps.spec import SpecError
from sweeps.tune_spec import Study, TuneSpec

ATTR_SWEEP = "dals.sweep_id"
ATTR_SPEC = "dals.spec"
ATTR_RETRY_OF = "dals.retry_of"  # on a re-queued trial: the number of the one a killed driver left
OPTUNA_TRIAL = "optuna_trial"  # config key: the Optuna trial number of a Ray trial


# ----------------------------------------------------------------------------- Optuna storage


def optuna_storage(url: str):
    """An RDB URL -> RDBStorage; a path -> JournalStorage on a journal file (multi-process safe)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if "://" in url:
        return optuna.storages.RDBStorage(url)
    Path(url).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(url))


def done_count(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def open_study(spec: TuneSpec, study: Study, storage, fresh: bool):
    """The Optuna study (created with its sweep id, or loaded)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if fresh:
        try:
            optuna.delete_study(study_name=study.name, storage=storage)
        except KeyError:
            pass
    ot = optuna.create_study(study_name=study.name, storage=storage, load_if_exists=True,
                             direction="maximize" if spec.mode == "max" else "minimize")
    if ATTR_SWEEP not in ot.user_attrs:
        ot.set_user_attr(ATTR_SWEEP, f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")
        ot.set_user_attr(ATTR_SPEC, {
            "spec": spec.name, "strategy": spec.tune.strategy, "key": study.key,
            "regime": study.regime, "datasets": list(study.datasets), "metric": spec.metric,
            "mode": spec.mode, "fixed_hp": {d: spec.settings(d).trial_kwargs().get("hp", {})
                                           for d in study.datasets},
        })
    return ot


def recover_study(ot, remaining: int, space: list[str]) -> tuple[list[int], list[int]]:
    """Trials a killed driver left RUNNING (one driver runs a study at a time): marked FAIL, and up
    to `remaining` of those whose params were all drawn queued again with them, so the study still
    evaluates what its sampler chose and counts only finished trials. Returns the numbers of the
    stale trials and of those queued again."""
    from optuna.trial import TrialState

    stale = ot.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    waiting = len(ot.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    for t in stale:
        ot.tell(t.number, state=TrialState.FAIL)
    drawn = [t for t in stale if set(t.params) == set(space)]  # killed before its params: none
    again = drawn[:max(remaining - waiting, 0)]
    for t in again:
        ot.enqueue_trial(t.params, user_attrs={ATTR_RETRY_OF: t.number})
    return [t.number for t in stale], [t.number for t in again]


def sampler(spec: TuneSpec, trials_so_far: int = 0):
    """The spec's sampler, its seed offset by the trials the study already holds: a run that
    continues a study draws new points, not again the ones the first run drew with the same seed
    (TPE starts from seeded random points), and the same study history still gives the same draws."""
    import optuna

    s = spec.tune.sampler
    seed = None if s.seed is None else (s.seed + trials_so_far) % 2**32  # numpy's seed range
    if s.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


# ----------------------------------------------------------------------------- the trainable


def seed_mean(values: list[float]) -> float:
    return sum(values) / len(values)


def tune_trial(config: dict[str, Any]) -> None:
    """Ray function trainable: every (dataset, seed) `Trial` one epoch at a time; reports the mean."""
    from ray import tune

    from sweeps.trainable import Trial

    study = config["study"]
    hp = {k: config[k] for k in study["params"]}
    trials = [Trial(c) for c in study["configs_fn"](hp)]
    metric = study["metric"]
    last: list[dict[str, Any] | None] = [None] * len(trials)
    epoch = 0
    while not all(t.done for t in trials):
        epoch += 1
        for i, t in enumerate(trials):
            if not t.done:
                last[i] = t.run_epoch()
        report: dict[str, Any] = {"epoch": epoch}
        for key in ("eval_accuracy", "eval_loss", "train_loss"):
            values = [float(m[key]) for m in last]
            report[key] = seed_mean(values)
            if key == metric:
                for t, v in zip(trials, values):
                    report[f"{key}/{t.config['dataset']}/seed{t.seed}"] = v
        if not math.isfinite(report[metric]):  # a diverged seed: the worst value, not NaN
            report[metric] = -1e9 if study["mode"] == "max" else 1e9
        report["diverged"] = sum(t.status == "diverged" for t in trials)
        report["status"] = "finished" if all(t.done for t in trials) else "running"
        tune.report(report)


class NumberedOptunaSearch(OptunaSearch):
    """OptunaSearch that puts each trial's Optuna number in its config (`optuna_trial`): MLflow
    runs and progress lines name the study's trial, and a killed run's MLflow runs can be matched
    with the study's trials."""

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        params = super().suggest(trial_id)
        if isinstance(params, dict) and trial_id in self._ot_trials:
            params[OPTUNA_TRIAL] = self._ot_trials[trial_id].number
        return params

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """A trial the scheduler (ASHA) stopped before its last epoch is PRUNED in Optuna, as Optuna's
        own pruners record it, not COMPLETE with an early epoch's value competing for best."""
        stopped_early = not error and result is not None and result.get("status") == "running"
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

    def __call__(self, hp: dict[str, Any]) -> list[dict[str, Any]]:
        return [c for s in self.seeds for c in self.study.configs(s, hp)]


# ----------------------------------------------------------------------------- MLflow


class TuneMlflowCallback(tracking.MlflowCallback):
    """sweeps.tracking's callback with a per-trial entry built from the sampled params."""

    def __init__(self, store: tracking.Store, sweep_id: str, study_name: str, labels: dict[str, Any],
                 params: list[str]):
        super().__init__(store, sweep_id)
        self.study_name, self.labels, self.params = study_name, labels, params

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "study_name": self.study_name, "labels": self.labels,
                "params": self.params}

    def _entry(self, trial: Any) -> dict[str, Any]:
        hp = {k: trial.config.get(k) for k in self.params}
        number = trial.config.get(OPTUNA_TRIAL)
        ident = trial.trial_id if number is None else number
        return {"key": f"{self.study_name}/{ident}", "slug": f"{self.study_name}-{ident}",
                "labels": {**self.labels, OPTUNA_TRIAL: number}, "config": {"hp": hp}, "hp": hp}

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._submit(self._child, trial.trial_id, self._entry(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        result = {k: v for k, v in result.items() if k != "config"}
        self._submit(self._log, trial.trial_id, self._entry(trial), result)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        status = tracking.final_status((trial.last_result or {}).get("status"))
        self._submit(self._end, trial.trial_id, self._entry(trial), status)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._submit(self._end, trial.trial_id, self._entry(trial), "failed")

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self._submit(self._tag, trial.trial_id, self._entry(trial), "retrying")


def reconcile_runs(store: tracking.Store, sweep_id: str, ot, metric: str, epochs: int) -> None:
    """MLflow child runs a killed driver left RUNNING: a run whose Optuna trial finished is ended
    as such (with the trial's value as its last metric if that was not logged yet); the others
    are tagged interrupted (their trials were marked FAIL and queued again)."""
    from optuna.trial import TrialState

    _, children = tracking.sweep_runs(store, sweep_id)
    trials = {t.number: t for t in ot.get_trials(deepcopy=False)}
    client = store.client()
    for run in children:
        if run.info.status != "RUNNING":
            continue
        number = run.data.params.get(OPTUNA_TRIAL, "")
        t = trials.get(int(number)) if number.isdigit() else None
        if t is None or t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            client.set_tag(run.info.run_id, tracking.TAG_STATUS, "interrupted")
            client.set_terminated(run.info.run_id, "KILLED")
            continue
        step = max(t.intermediate_values, default=epochs)
        if t.value is not None and run.data.metrics.get(metric) != t.value:
            client.log_metric(run.info.run_id, metric, float(t.value), step=step)
        client.set_tag(run.info.run_id, tracking.TAG_STATUS, "finished" if step >= epochs else "stopped")
        client.set_terminated(run.info.run_id, "FINISHED")


def log_summary(store: tracking.Store, parent_id: str, ot) -> None:
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
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from sweeps import progress

    storage = optuna_storage(spec.optuna_storage_url())
    ot = open_study(spec, study, storage, fresh)
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
    max_epochs = max(c["epochs"] for c in study.configs(0, {}))
    store = tracking.Store(spec.tracking_uri(), spec.experiment()) if spec.tracking.enabled else None
    parent_id = None
    callbacks: list = []
    if store is not None:
        parent_id = tracking.open_parent(
            store, sweep_id, study.name, spec.digest, spec_file,
            {"study": study.name, "strategy": spec.tune.strategy, "regime": study.regime,
             "datasets": ",".join(study.datasets), "trials": spec.tune.trials,
             "seeds": spec.tune.seeds, "metric": spec.metric, "mode": spec.mode,
             "sampler": spec.tune.sampler.type, "pruning": spec.tune.pruning.type,
             "optuna_storage": spec.optuna_storage_url()})
        tracking.attempt(store, tracking.Writes(),  # skipped while MLflow is unreachable
                         lambda: reconcile_runs(store, sweep_id, ot, spec.metric, max_epochs))
        labels = {"strategy": spec.tune.strategy, "study": study.name, "regime": study.regime,
                  "datasets": ",".join(study.datasets)}
        callbacks.append(TuneMlflowCallback(store, sweep_id, study.name, labels, list(spec.tune.space)))
    if remaining:
        callbacks.insert(0, progress.ProgressCallback(study.name, remaining, spec.metric, spec.mode))
        seeds = tuple(range(spec.tune.seeds))
        searcher = NumberedOptunaSearch(
            space={k: p.distribution() for k, p in spec.tune.space.items()},
            metric=spec.metric, mode=spec.mode, sampler=sampler(spec, trials_so_far),
            study_name=study.name, storage=storage)
        searcher = ConcurrencyLimiter(searcher, max_concurrent=spec.tune.concurrency)
        scheduler = None
        if spec.tune.pruning.type == "asha":
            from ray.tune.schedulers import ASHAScheduler

            max_t = max_epochs
            scheduler = ASHAScheduler(time_attr="epoch", max_t=max_t,
                                      grace_period=min(spec.tune.pruning.grace_period, max_t),
                                      reduction_factor=spec.tune.pruning.reduction_factor)
        trainable = tune.with_resources(tune_trial, {"cpu": spec.resources.cpu,
                                                     "gpu": spec.resources.gpu})
        tuner = tune.Tuner(
            trainable,
            param_space={"study": {"params": list(spec.tune.space), "metric": spec.metric,
                                   "mode": spec.mode, "configs_fn": ConfigsFn(study, seeds)}},
            tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, search_alg=searcher,
                                        scheduler=scheduler, num_samples=remaining),
            run_config=tune.RunConfig(
                name=f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}",
                storage_path=spec.storage_path(), verbose=0, callbacks=callbacks,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
        )
        tuner.fit()
        if store is not None:
            tracking.flush_all()
    ot = open_study(spec, study, storage, False)
    done = done_count(ot)
    try:
        best_value, best_params = ot.best_value, ot.best_params
    except ValueError:
        best_value, best_params = None, {}
    if store is not None:
        log_summary(store, parent_id, ot)
        tracking.close_parent(store, parent_id, "FINISHED" if done >= spec.tune.trials else "KILLED")
    return StudyOutcome(study.name, sweep_id, spec.tune.trials, before, done, done - before,
                        best_value, best_params)


def run_tune(spec: TuneSpec, spec_file: Path, *, address: str | None = None, fresh: bool = False,
             num_cpus: int | None = None, say=print) -> list[StudyOutcome]:
    from sweeps.run import init_ray

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    init_ray(address, num_cpus)
    out = []
    for study in spec.studies():
        o = run_study(spec, spec_file, study, fresh=fresh, say=say)
        say(f"study {o.name}: {o.done}/{o.trials} done ({o.ran} this run), best {spec.metric} "
            f"{o.best_value if o.best_value is None else f'{o.best_value:.4f}'} {o.best_params}")
        out.append(o)
    return out


# ----------------------------------------------------------------------------- export


def export_preset(study_name: str, storage_url: str, preset: str | None = None) -> Path:
    """The study's best params as `dalsopt/presets/<strategy>@<preset>.json` (preset default: the
    study's regime or dataset); the file holds every hyperparameter of the study's regime."""
    import optuna

    import dalsopt
    from dalsopt import presets

    storage = optuna_storage(storage_url)
    try:
        ot = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
        raise SpecError(f"no study {study_name!r} in {storage_url}; studies: {names}") from None
    info = ot.user_attrs.get(ATTR_SPEC, {})
    strategy = info.get("strategy")
    if not strategy:
        raise SpecError(f"study {study_name!r} was not made by `dals tune` (no strategy recorded)")
    try:
        best = ot.best_trial
    except ValueError:
        raise SpecError(f"study {study_name!r} has no complete trial yet") from None
    preset = preset or info.get("key") or study_name
    fixed = next(iter(info.get("fixed_hp", {}).values()), {})
    hyperparameters = dalsopt.resolve(strategy, info.get("regime", "scratch"), **{**fixed, **best.params})
    data = {"strategy": strategy, "preset": preset, "hyperparameters": hyperparameters,
            "source": {"study": study_name, "storage": storage_url, "spec": info.get("spec"),
                       "regime": info.get("regime"), "datasets": info.get("datasets"),
                       "metric": info.get("metric"), "best_value": best.value,
                       "best_trial": best.number, "tuned": sorted(best.params),
                       "trials": done_count(ot)}}
    path = presets.DIRECTORY / f"{strategy}@{preset}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=list) + "\n")
    return path
