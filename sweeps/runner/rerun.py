"""The end of `dals search`: the top-k trained again on fresh seeds (the k best strategies at their
best settings, or with `tune.rerun_per: configuration` the k best points), the verdict, the winner as
a preset, the report; and `run_search`, the whole command.

The re-run ranks the top-k by mean validation accuracy on seeds the search never trained on (so the
test split still chooses nothing) and reports test accuracy mean +- std for each. The verdict says
whether the winner's test lead over the runner-up clears both spreads (lead > std_winner +
std_runner_up, the +-1 std bands apart); if not, these seeds do not separate the two.

With `tune.rerun_overlap` (the default) the search's best is re-run first, and a runner-up only if
its search value is within its ±1 standard error bands of the best's (the standard error of a
search value from the best's seed spread on the fresh seeds' validation split): a runner-up the
search already tells apart costs nothing more.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

import dalsopt
from dalsopt import presets

from sweeps.experiment.storage import delete_dir, join
from sweeps.report import search as report
from sweeps.runner.progress import ProgressCallback
from sweeps.runner.optuna import DropEndedCheckpoints
from sweeps.runner.search import (
    RERUN, SearchPhase, finish, fit, init, max_epochs, run_search_phase, search_trial, study_config,
)
from sweeps.runner.studies import shown_storage
from sweeps.spec.search import SearchSpec, split_params
from sweeps.train.config import strategy_hp

TEST = "eval_accuracy"  # the test split's accuracy (`eval` in a trial's metrics)
SKIPPED = "skipped"  # a runner-up the search's values already set apart from the best: not re-run


@dataclass
class Rerun:
    """One of the top-k on the fresh seeds."""

    number: int  # the search trial it repeats
    strategy: str
    hp: dict[str, Any]
    objective: float  # its value in the search (mean val accuracy over the search's seeds)
    params: dict[str, Any]  # as the study holds them (`strategy`, `<strategy>.<hp>`)
    val_mean: float = math.nan
    val: list[float] = field(default_factory=list)  # per fresh seed: the search's metric
    test: list[float] = field(default_factory=list)  # per fresh seed
    status: str = "failed"  # the re-run trial's, or SKIPPED

    @property
    def test_mean(self) -> float:
        return statistics.fmean(self.test) if self.test else math.nan

    @property
    def test_std(self) -> float:
        return statistics.stdev(self.test) if len(self.test) > 1 else 0.0


def top_k(ot, k: int, mode: str, per: str = "strategy") -> list[Rerun]:
    """The k best COMPLETE trials (PRUNED ones never compete), distinct points only; with
    `per="strategy"` the best point of each of the k best strategies (a runner-up at other settings
    of the winner's strategy says nothing about which strategy to use)."""
    from optuna.trial import TrialState

    trials = sorted(ot.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                    key=lambda t: t.value, reverse=mode == "max")
    out: list[Rerun] = []
    seen: set = set()
    for t in trials:
        strategy, hp = split_params(t.params)
        key = strategy if per == "strategy" else tuple(sorted(t.params.items()))
        if key in seen:
            continue
        seen.add(key)
        out.append(Rerun(t.number, strategy, hp, float(t.value), dict(t.params)))
        if len(out) == k:
            break
    return out


def rerun_dirname(trial: Any) -> str:
    return f"rerun-{trial.config[RERUN]}"


def train_again(spec: SearchSpec, phase: SearchPhase, candidates: list[Rerun], name: str) -> None:
    """One Ray Tune run (`<storage>/<name>`, from scratch) training `candidates` on `rerun_seeds`;
    fills in each one's status and per-seed validation and test accuracy."""
    if not candidates:
        return
    delete_dir(join(spec.storage_path(), name))  # a re-run is short: always from scratch
    points = {c.number: c.params for c in candidates}
    entry = {**study_config(spec, phase.study, tuple(spec.tune.rerun_seeds), TEST, name), "points": points,
             "per_seed": (TEST, spec.metric)}
    grid = fit(search_trial, spec, name, {"study": entry, RERUN: tune.grid_search(list(points))},
               tune.TuneConfig(metric=spec.metric, mode=spec.mode, max_concurrent_trials=spec.tune.concurrency),
               [ProgressCallback(name, len(points), spec.metric, spec.mode, epochs=max_epochs(spec)),
                *phase.tracking.callbacks(), DropEndedCheckpoints()], rerun_dirname)
    by_number = {c.number: c for c in candidates}
    for result in grid:
        if result.config is None or result.metrics is None:
            continue
        c, m = by_number[result.config[RERUN]], result.metrics

        def per_seed(key: str) -> list[float]:
            return [float(m[f"{key}/{spec.dataset}/seed{s}"]) for s in spec.tune.rerun_seeds
                    if f"{key}/{spec.dataset}/seed{s}" in m]

        c.status = str(m.get("status", "failed"))
        c.val_mean = float(m.get(spec.metric, math.nan))
        c.val, c.test = per_seed(spec.metric), per_seed(TEST)


def search_band(best: Rerun, search_seeds: int) -> float:
    """The standard error of a search value (a mean over `search_seeds` seeds), from the seed
    spread `best` shows on the fresh seeds' validation split (never the test split); inf when it
    has fewer than two seeds there."""
    return statistics.stdev(best.val) / math.sqrt(search_seeds) if len(best.val) > 1 else math.inf


def overlapping(best: Rerun, rest: list[Rerun], band: float) -> tuple[list[Rerun], list[Rerun]]:
    """(re-run, skipped): a runner-up is re-run when its search value's ±band overlaps the best's
    (at most 2 bands from it), so only a configuration the search cannot tell from the best costs
    another training."""
    close = [c for c in rest if abs(best.objective - c.objective) <= 2 * band]
    return close, [c for c in rest if c not in close]


def run_rerun(spec: SearchSpec, phase: SearchPhase, candidates: list[Rerun]) -> list[Rerun]:
    """Train the candidates (best search value first) on `rerun_seeds`: all at once, or with
    `rerun_overlap` the best first, then only the runners-up within its bands; ranked by mean
    validation there (mode), failed ones, then skipped ones, last."""
    if not candidates:
        return []
    name = f"{phase.study.name}-rerun"
    if not spec.tune.rerun_overlap:
        train_again(spec, phase, candidates, name)
    else:
        train_again(spec, phase, candidates[:1], name)
        close, skipped = overlapping(candidates[0], candidates[1:], search_band(candidates[0], spec.tune.seeds))
        train_again(spec, phase, close, f"{name}-more")
        for c in skipped:
            c.status = SKIPPED
    sign = -1 if spec.mode == "max" else 1
    return sorted(candidates, key=lambda c: (c.status == SKIPPED, math.isnan(c.val_mean),
                                             0 if math.isnan(c.val_mean) else sign * c.val_mean))


def verdict(ranked: list[Rerun]) -> str:
    """Whether the winner's test lead over the runner-up clears both spreads."""
    skipped = [r for r in ranked if r.status == SKIPPED]
    if skipped and ranked[0].test and len(ranked) - len(skipped) == 1:
        return (f"the search already sets the winner apart: the runners-up ({', '.join(r.strategy for r in skipped)}) "
                f"were more than 2 standard errors below its search value and were not re-run")
    if len(ranked) < 2 or not ranked[1].test:
        return "one configuration re-run: no runner-up to compare with"
    w, r = ranked[0], ranked[1]
    lead, spread = w.test_mean - r.test_mean, w.test_std + r.test_std
    if lead > spread:
        return (f"the winner's test lead over the runner-up ({lead:+.4f}) clears both spreads "
                f"(std {w.test_std:.4f} + {r.test_std:.4f})")
    return (f"not separated: the winner's test lead over the runner-up ({lead:+.4f}) is within both spreads "
            f"(std {w.test_std:.4f} + {r.test_std:.4f}); more seeds or a larger budget would tell them apart")


def export_winner(spec: SearchSpec, phase: SearchPhase, winner: Rerun, ranked: list[Rerun]) -> Path:
    """`dalsopt/presets/<strategy>@<dataset>.json`: every hyperparameter of the regime, and where it came
    from (never a password or a path of this machine)."""
    fixed = spec.settings(spec.dataset).trial_kwargs().get("hp", {})
    name = spec.preset_name(winner.strategy)
    data = {"strategy": winner.strategy, "preset": name.split("@", 1)[1],
            "hyperparameters": dalsopt.resolve(winner.strategy, spec.search_regime,
                                               **strategy_hp({**fixed, **winner.hp})),
            "source": {"search": spec.name, "study": phase.study.name, "storage": shown_storage(spec.optuna_storage_url()),
                       "dataset": spec.dataset, "regime": spec.search_regime, "metric": spec.metric,
                       "search_value": winner.objective, "search_trial": winner.number,
                       "rerun_seeds": spec.tune.rerun_seeds, "rerun_val_mean": winner.val_mean,
                       "rerun_test_mean": winner.test_mean, "rerun_test_std": winner.test_std,
                       "verdict": verdict(ranked), "tuned": sorted(winner.hp)}}
    path = presets.DIRECTORY / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=list) + "\n")
    return path


@dataclass(frozen=True)
class SearchOutcome:
    study: str
    trials: int  # the budget
    done: int  # COMPLETE + PRUNED in the study
    ran: int
    reruns: list[Rerun]
    verdict: str
    preset: Path | None
    report: Path | None
    trial_epochs: dict[str, int]  # search, rerun: (point, seed) epochs trained

    @property
    def winner(self) -> Rerun | None:
        return self.reruns[0] if self.reruns and self.reruns[0].test else None


def trial_records(ot, seeds: int, epochs: int) -> list[dict[str, Any]]:
    """The study's trials as plain records for the report: state, strategy, curve (mean val per epoch)
    and trial-epochs ((epoch, seed) pairs trained). Ray hands a finished trial's last epoch to the
    searcher as its value, not as an intermediate one: a COMPLETE trial's curve ends with its value."""
    out = []
    for t in ot.get_trials(deepcopy=False):
        if "strategy" not in t.params:
            continue
        strategy, hp = split_params(t.params)
        curve = [t.intermediate_values[e] for e in sorted(t.intermediate_values)]
        if t.state.name == "COMPLETE" and len(curve) < epochs:
            curve.append(t.value)
        trained = epochs if t.state.name == "COMPLETE" else max(t.intermediate_values, default=0)
        out.append({"number": t.number, "strategy": strategy, "generation": dalsopt.GENERATIONS[strategy],
                    "state": t.state.name, "value": t.value, "hp": hp, "curve": curve,
                    "trial_epochs": trained * seeds})
    return out


def run_search(spec: SearchSpec, spec_file: Path, *, address: str | None = None, fresh: bool = False,
               num_cpus: int | None = None, out_dir: Path | None = None, say=print) -> SearchOutcome:
    """The whole search: study, re-run of the top-k on fresh seeds, preset, report, MLflow."""
    start = time.monotonic()
    init(spec, spec_file, address, num_cpus)
    phase = run_search_phase(spec, spec_file, fresh=fresh, say=say)
    done = phase.done_before + phase.ran
    reruns = run_rerun(spec, phase, top_k(phase.ot, spec.tune.top_k, spec.mode, spec.tune.rerun_unit))
    says = verdict(reruns)
    records = trial_records(phase.ot, spec.tune.seeds, max_epochs(spec))
    epochs = {"search": sum(r["trial_epochs"] for r in records if r["state"] in ("COMPLETE", "PRUNED")),
              "rerun": sum(len(r.test) for r in reruns) * max_epochs(spec)}
    winner = reruns[0] if reruns and reruns[0].test else None
    preset = export_winner(spec, phase, winner, reruns) if winner else None
    out_dir = out_dir or Path("results") / phase.study.name
    report_file = report.write_search_report(
        out_dir, title=f"search {spec.name}: {spec.dataset} ({spec.search_regime})", trials=records,
        reruns=[{**asdict(r), "test_mean": r.test_mean, "test_std": r.test_std} for r in reruns],
        verdict=says, preset=preset.stem if preset else None, trial_epochs=epochs,
        budget={"trials": spec.tune.trials, "minutes": spec.tune.minutes, "seeds": spec.tune.seeds,
                "rerun_seeds": spec.tune.rerun_seeds, "wall_s": round(time.monotonic() - start, 1)})
    finish(phase, report_file.parent, done >= spec.tune.trials or spec.tune.minutes is not None)
    return SearchOutcome(phase.study.name, spec.tune.trials, done, phase.ran, reruns, says, preset,
                         report_file, epochs)
