"""`dals search`: which strategy, with which settings, for one dataset, on the tuning service.

The search phase is one Optuna study, sampled through Ray's `OptunaSearch` with a define-by-run space
(`ConditionalSpace`: the strategy first, then that strategy's own dimensions from
`dalsopt.search_space`), ASHA over epochs (a trial it stops is PRUNED in Optuna), the objective the
mean validation accuracy over the search's seeds. It reuses the tuning service whole: the study's
storage, recovery after a killed driver and sampler (`runner.studies`), the trainable, numbering,
checkpoint clean-up and MLflow callback (`runner.optuna`). Then `runner.rerun` trains the top-k
configurations on fresh seeds, and the winner becomes a preset.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.search import ConcurrencyLimiter

import dalsopt

from sweeps.experiment.storage import delete_dir, filesystem, join
from sweeps.redact import redact
from sweeps.runner import resources
from sweeps.runner.optuna import (
    ConfigsFn, DropEndedCheckpoints, NumberedOptunaSearch, TuneMlflowCallback, log_summary, reconcile_runs,
    trial_dirname, tune_trial,
)
from sweeps.runner.progress import ProgressCallback
from sweeps.runner.ray_setup import init_ray, scheduler
from sweeps.runner.studies import (
    ATTR_SWEEP, CONTINUES, OPTUNA_TRIAL, done_count, open_study, optuna_storage, recover_study, sampler,
)
from sweeps.spec.search import STRATEGY, SearchSpec, SearchStudy, split_params, strategy_config
from sweeps.tracking import outbox
from sweeps.tracking.store import Store, Writes, open_parent

RERUN = "rerun"  # config key of a re-run trial: the Optuna number of the point it trains again
NOT_PARAMS = ("study", OPTUNA_TRIAL, CONTINUES, RERUN)
ATTR_DEFAULTS = "dals.defaults"  # on a study's trial: a strategy at its defaults, enqueued first


@dataclass(frozen=True)
class ConditionalSpace:
    """The define-by-run space `OptunaSearch(space=...)` calls with each Optuna trial (picklable):
    the strategy, then only that strategy's dimensions, named `<strategy>.<hp>`. It returns None, so
    the trial's config is exactly what it drew (Ray's captor records each suggest call)."""

    strategies: tuple[str, ...]
    spaces: dict[str, dict[str, dalsopt.Dim]]

    @classmethod
    def of(cls, spec: SearchSpec) -> ConditionalSpace:
        return cls(tuple(spec.tune.strategies), {s: spec.space(s) for s in spec.tune.strategies})

    def __call__(self, trial: Any) -> None:
        strategy = trial.suggest_categorical(STRATEGY, list(self.strategies))
        for name, dim in self.spaces[strategy].items():
            getattr(trial, f"suggest_{dim.type}")(name, **dim.kwargs())
        return None

    def drawn(self, params: dict[str, Any]) -> list[str]:
        """The names a trial with these params draws (for `recover_study`)."""
        s = params.get(STRATEGY)
        return [STRATEGY, *self.spaces.get(s, {})] if s in self.spaces else [STRATEGY]


def point_of(config: dict[str, Any]) -> dict[str, Any]:
    """A search or re-run trial's sampled params: `strategy` and its `<strategy>.<hp>` (a re-run
    trial's come from its study entry's `points`, by the number of the search trial it repeats)."""
    if RERUN in config:
        return dict(config["study"]["points"][config[RERUN]])
    return {k: v for k, v in config.items() if k not in NOT_PARAMS}


def search_trial(config: dict[str, Any]) -> None:
    """The tuning trainable on a conditional point: its params are the ones this trial drew."""
    point = point_of(config)
    tune_trial({**point, CONTINUES: config.get(CONTINUES, []),
                "study": {**config["study"], "params": list(point)}})


class SearchMlflowCallback(TuneMlflowCallback):
    """A search trial's MLflow run: its strategy and generation as labels, its own hp only; a re-run
    trial gets its own key (`<study>/rerun-<n>`), so it never reopens the search trial's run."""

    def entry(self, trial: Any) -> dict[str, Any]:
        out = super().entry(trial)
        strategy, hp = split_params(point_of(trial.config))
        labels = {**out["labels"], "strategy": strategy, "generation": dalsopt.GENERATIONS[strategy]}
        rerun = trial.config.get(RERUN)
        if rerun is not None:
            labels = {**labels, "phase": "rerun", "rerun_of": rerun, OPTUNA_TRIAL: None}
            out = {**out, "key": f"{self.study_name}/rerun-{rerun}", "slug": f"{self.study_name}-rerun-{rerun}"}
        return {**out, "labels": labels, "config": {"strategy": strategy, "hp": hp}, "hp": hp}


def max_epochs(spec: SearchSpec) -> int:
    return max(strategy_config(spec, spec.dataset, s, 0, {}).epochs for s in spec.tune.strategies)


def study_config(spec: SearchSpec, study: SearchStudy, seeds: tuple[int, ...], metric: str,
                 name: str) -> dict[str, Any]:
    """The `study` entry of a trial's config, as `tune_trial` reads it."""
    return {"params": [], "metric": metric, "mode": spec.mode, "configs_fn": ConfigsFn(study, seeds), "name": name}


def fit(trainable, spec: SearchSpec, name: str, param_space: dict, tune_config: tune.TuneConfig,
        callbacks: list, dirname) -> tune.ResultGrid:
    """One Ray Tune run of the search (its study phase or its re-run) in `<storage>/<name>`."""
    fs, storage_path = filesystem(spec.storage_path())
    trainable = tune.with_resources(trainable, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    tune_config.trial_dirname_creator = dirname
    tune_config.reuse_actors = True  # as the grid: no new worker (and torch import) per trial
    tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=tune.RunConfig(
        name=name, storage_path=storage_path, storage_filesystem=fs, verbose=0, callbacks=callbacks,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    return tuner.fit()


@dataclass
class Tracking:
    """The search's MLflow parent run (None: tracking off)."""

    store: Store | None
    parent_id: str | None
    sweep_id: str
    study_name: str
    labels: dict[str, Any]

    def callbacks(self) -> list:
        if self.store is None:
            return []
        return [SearchMlflowCallback(self.store, self.sweep_id, self.study_name, self.labels, [])]


def open_tracking(spec: SearchSpec, spec_file: Path, study: SearchStudy, ot) -> Tracking:
    sweep_id = ot.user_attrs[ATTR_SWEEP]
    labels = {"search": spec.name, "study": study.name, "regime": spec.search_regime, "datasets": spec.dataset}
    if not spec.tracking.enabled:
        return Tracking(None, None, sweep_id, study.name, labels)
    store = Store(spec.tracking_uri(), spec.experiment())
    t = spec.tune
    parent_id = open_parent(store, sweep_id, study.name, spec.digest, spec_file, {
        "kind": "search", "study": study.name, "dataset": spec.dataset, "regime": spec.search_regime,
        "strategies": ",".join(t.strategies), "trials": t.trials, "minutes": t.minutes, "seeds": t.seeds,
        "top_k": t.top_k, "rerun_seeds": ",".join(map(str, t.rerun_seeds)), "metric": spec.metric,
        "sampler": t.sampler.type, "pruning": t.pruning.type, "optuna_storage": spec.optuna_storage_url()})
    outbox.attempt(store, Writes(), lambda: reconcile_runs(store, sweep_id, ot, spec.metric, max_epochs(spec)))
    return Tracking(store, parent_id, sweep_id, study.name, labels)


@dataclass(frozen=True)
class SearchPhase:
    study: SearchStudy
    ot: Any  # the Optuna study, loaded after the run
    done_before: int
    ran: int
    seconds: float
    tracking: Tracking


def enqueue_defaults(spec: SearchSpec, ot) -> None:
    """A new study's first trials: each strategy at its defaults (a seeded sample of them when the
    budget is smaller), so the search's first rung holds the grid's points and ASHA keeps the best."""
    import random

    strategies = list(spec.tune.strategies)
    if spec.tune.trials < len(strategies):
        strategies = random.Random(spec.tune.sampler.seed).sample(strategies, spec.tune.trials)
    for s in strategies:
        ot.enqueue_trial(spec.default_point(s), user_attrs={ATTR_DEFAULTS: True})


def run_search_phase(spec: SearchSpec, spec_file: Path, *, fresh: bool = False, say=print) -> SearchPhase:
    """The study: as many trials as the budget still allows (a study run before is continued)."""
    [study] = spec.studies()
    storage = optuna_storage(spec.optuna_storage_url())
    ot = open_study(spec, study, storage, fresh)
    if fresh:
        delete_dir(join(spec.storage_path(), study.name))
    before = done_count(ot)
    remaining = max(spec.tune.trials - before, 0)
    space = ConditionalSpace.of(spec)
    if spec.tune.defaults_first and not ot.get_trials(deepcopy=False):
        enqueue_defaults(spec, ot)
    stale, again = recover_study(ot, remaining, space.drawn)
    if stale:
        which = f"trial {stale[0]} was" if len(stale) == 1 else f"trials {', '.join(map(str, stale))} were"
        say(f"search {study.name}: {which} left running by a run that did not end: marked failed; "
            f"params of {len(again)} queued again")
    say(f"search {study.name}: {len(spec.tune.strategies)} strategies on {spec.dataset} ({spec.search_regime}); "
        f"{before}/{spec.tune.trials} trials done, running {remaining} (storage {redact(spec.optuna_storage_url())})")
    tracking = open_tracking(spec, spec_file, study, ot)
    start = time.monotonic()
    if remaining:
        epochs = max_epochs(spec)
        searcher = NumberedOptunaSearch(space=space, metric=spec.metric, mode=spec.mode, study_name=study.name,
                                        sampler=sampler(spec, len(ot.get_trials(deepcopy=False))), storage=storage)
        minutes = spec.tune.minutes
        fit(search_trial, spec, study.name,
            {"study": study_config(spec, study, tuple(range(spec.tune.seeds)), spec.metric, study.name)},
            tune.TuneConfig(metric=spec.metric, mode=spec.mode, num_samples=remaining,
                            search_alg=ConcurrencyLimiter(searcher, max_concurrent=spec.tune.concurrency),
                            scheduler=scheduler(spec.tune.pruning, epochs),
                            time_budget_s=None if minutes is None else minutes * 60),
            [ProgressCallback(study.name, remaining, spec.metric, spec.mode, epochs=epochs), *tracking.callbacks(),
             DropEndedCheckpoints()], trial_dirname)
        if tracking.store is not None:
            outbox.flush_all()
    ot = open_study(spec, study, storage, False)
    return SearchPhase(study, ot, before, done_count(ot) - before, time.monotonic() - start, tracking)


def finish(phase: SearchPhase, report_dir: Path | None, complete: bool) -> None:
    """The parent run: the study's summary, the report (leaderboard, curves) as artifacts, closed."""
    t = phase.tracking
    if t.store is None:
        return
    log_summary(t.store, t.parent_id, phase.ot)
    if report_dir is not None:
        t.store.client().log_artifacts(t.parent_id, str(report_dir), "search")
    outbox.close_parent(t.store, t.parent_id, "FINISHED" if complete else "KILLED")


def init(spec: SearchSpec, spec_file: Path, address: str | None, num_cpus: int | None) -> None:
    """Ray up, and a one-line exit before anything is recorded when no node can ever hold a trial."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    init_ray(address, num_cpus)
    resources.check(spec.resources.cpu, spec.resources.gpu, str(spec_file))
