"""Optuna studies of a tuning spec in their persistent storage: open, recover after a killed
driver, sample, and export the best params as a dalsopt preset.

Each study lives in a persistent Optuna storage (a journal file beside the MLflow db by default, or
an RDB URL), so running the spec again continues it.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Callable

import dalsopt
from dalsopt import presets

from sweeps.redact import redact
from sweeps.spec.common import SpecError
from sweeps.spec.credentials import refuse_credentials
from sweeps.spec.tune import Study, TuneSpec
from sweeps.train.config import strategy_hp

ATTR_SWEEP = "dals.sweep_id"
ATTR_SPEC = "dals.spec"
ATTR_RETRY_OF = "dals.retry_of"  # on a re-queued trial: the number of the one a killed driver left
ATTR_CONTINUES = "dals.continues"  # on a re-queued trial: that one and those it continued, newest first
OPTUNA_TRIAL = "optuna_trial"  # config key: the Optuna trial number of a Ray trial
CONTINUES = "continues"  # config key: ATTR_CONTINUES (whose trial folders hold its checkpoints)



# ----------------------------------------------------------------------------- Optuna storage


def optuna_storage(url: str):
    """An RDB URL -> RDBStorage; a path -> JournalStorage on a journal file (multi-process safe).
    A URL holding a password is refused: PGPASSWORD (or ~/.pgpass) carries it."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    refuse_credentials(url, "Optuna storage")
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


def recover_study(ot, remaining: int, space: list[str] | Callable[[dict], list[str]]) -> tuple[list[int], list[int]]:
    """Trials a killed driver left RUNNING (one driver runs a study at a time): marked FAIL, and up
    to `remaining` of those whose params were all drawn queued again with them, so the study still
    evaluates what its sampler chose and counts only finished trials; a queued trial continues
    from the killed one's newest checkpoint (`ATTR_CONTINUES`). Returns the numbers of the stale
    trials and of those queued again. A conditional space (`dals search`) gives `space` as a function
    of a trial's params: the names that trial draws."""
    from optuna.trial import TrialState

    stale = ot.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    waiting = len(ot.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    for t in stale:
        ot.tell(t.number, state=TrialState.FAIL)
    drawn = [t for t in stale  # killed before its params: none
             if set(t.params) == set(space(t.params) if callable(space) else space)]
    again = drawn[:max(remaining - waiting, 0)]
    for t in again:  # the new trial resumes from the newest checkpoint in these trials' folders
        chain = [t.number, *t.user_attrs.get(ATTR_CONTINUES, [])]
        ot.enqueue_trial(t.params, user_attrs={ATTR_RETRY_OF: t.number, ATTR_CONTINUES: chain})
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


# ----------------------------------------------------------------------------- export


def shown_storage(url: str) -> str:
    """An Optuna storage as a preset records it: a journal file or SQLite database by its file
    name (a path on this machine means nothing elsewhere), an RDB URL without any password."""
    if "://" not in url:
        return Path(url).name
    if url.startswith("sqlite:///"):
        return f"sqlite:///{Path(url.removeprefix('sqlite:///')).name}"
    return redact(url)


def export_preset(study_name: str, storage_url: str, preset: str | None = None) -> Path:
    """The study's best params as `dalsopt/presets/<strategy>@<preset>.json` (preset default: the
    study's regime or dataset); the file holds every hyperparameter of the study's regime, and
    where it came from (`shown_storage`: never a password or a path of this machine)."""
    import optuna

    storage = optuna_storage(storage_url)
    try:
        ot = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
        raise SpecError(f"no study {study_name!r} in {redact(storage_url)}; studies: {names}") from None
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
    hyperparameters = dalsopt.resolve(strategy, info.get("regime", "scratch"),
                                      **strategy_hp({**fixed, **best.params}))
    data = {"strategy": strategy, "preset": preset, "hyperparameters": hyperparameters,
            "source": {"study": study_name, "storage": shown_storage(storage_url), "spec": info.get("spec"),
                       "regime": info.get("regime"), "datasets": info.get("datasets"),
                       "metric": info.get("metric"), "best_value": best.value,
                       "best_trial": best.number, "tuned": sorted(best.params),
                       "trials": done_count(ot)}}
    path = presets.DIRECTORY / f"{strategy}@{preset}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=list) + "\n")
    return path
