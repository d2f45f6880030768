"""Cross-regime report of a sweep: rankings, epochs to target, regime winners, learning curves.

Files only (Markdown, CSV, PNG): uploading a report to MLflow is `sweeps.tracking.sync`'s. Built from
the experiment folder alone (Ray's per-trial `result.json`, the spec copy and the
sweep meta the runner keeps there), so `dals report` can regenerate it at any time; the tables
are pure functions of one per-epoch DataFrame.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from sweeps.experiment.folder import PARAMS_FILE, read_meta, spec_copy
from sweeps.experiment.resume import TrialFolder
from sweeps.experiment.storage import filesystem, subfolders
from sweeps.redact import redact
from sweeps.report.curves import plot_curves
from sweeps.spec.sweep import Spec, SpecError
from sweeps.train.status import TrialStatus, final_status

RESULTS_DIR = "results"
LABELS = ["key", "strategy", "generation", "dataset", "regime", "seed"]
# What a diverged epoch measured (accuracy of non-finite weights, NaN losses) is no result:
# the report blanks these for that epoch, so a diverged seed never ranks or wins on them.
DIVERGED_BLANK = ("eval_accuracy", "eval_loss", "val_accuracy", "val_loss", "train_loss")
SPLITS = {"eval": "test", "val": "validation"}  # a metric's prefix -> the split it is measured on


# ----------------------------------------------------------------------------- loading


def load_epochs(folder: str | Path) -> pd.DataFrame:
    """One row per (trial, epoch) from the trial folders (local or in a bucket, read through
    `sweeps.experiment.storage`); `status` is the trial's final status. The epoch a trial diverged
    in keeps its row, its metrics blanked (DIVERGED_BLANK)."""
    fs, base = filesystem(str(folder))
    rows: list[dict] = []
    for name in subfolders(str(folder)):
        trial_dir = TrialFolder(fs, f"{base}/{name}")
        params = trial_dir.read(PARAMS_FILE)
        if params is None:
            continue
        trial = json.loads(params)["trial"]
        base_row = {**trial["labels"], "key": trial["key"]}
        epochs: dict[int, dict] = {}
        for result in trial_dir.rows():
            metrics = {k: v for k, v in result.items() if k != "config"}
            if result.get("status") == "diverged":
                metrics.update({k: math.nan for k in DIVERGED_BLANK})
            epochs[int(result.get("epoch", result.get("training_iteration", 0)))] = metrics
        failed = bool(trial_dir.names("error."))
        last = epochs[max(epochs)] if epochs else {}
        status = TrialStatus.FAILED if failed else final_status(last.get("status"))
        if not epochs:
            rows.append({**base_row, "epoch": 0, "status": status})
        for epoch, metrics in sorted(epochs.items()):
            rows.append({**metrics, **base_row, "epoch": epoch, "status": status})
    return pd.DataFrame(rows)


def split_metrics(metric: str) -> dict[str, str]:
    """The metric on each split that measures it: `val_accuracy` -> {test: eval_accuracy,
    validation: val_accuracy}; none for `train_loss`. Why: a spec ranks on one, the report shows both."""
    prefix, _, name = metric.partition("_")
    return {split: f"{p}_{name}" for p, split in SPLITS.items()} if prefix in SPLITS else {}


def finals(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per trial: labels, status, final and best metric, epochs run, and the final value
    of the metric on each split measured (`final_test`, `final_validation`)."""
    df = df.sort_values(["key", "epoch"])
    grouped = df.groupby("key", sort=False)
    out = grouped[LABELS[1:] + ["status"]].last()

    def last(key: str):  # the last epoch's value even when NaN (pandas' last() would skip back)
        return grouped[key].agg(lambda s: s.iloc[-1]) if key in df else math.nan

    out["final"] = last(metric)
    out["best"] = grouped[metric].max() if metric in df else math.nan
    out["epochs"] = grouped["epoch"].max()
    for split, key in split_metrics(metric).items():
        out[f"final_{split}"] = last(key)
    return out.reset_index()


# ----------------------------------------------------------------------------- tables


def ranking(per_trial: pd.DataFrame, mode: str) -> pd.DataFrame:
    """Per dataset, strategies ranked by final metric: mean, std (over seeds; NaN finals of
    diverged seeds left out, and counted in `diverged`), best, seeds."""
    per_split = {f"{split}_{stat}": (f"final_{split}", stat) for split in SPLITS.values()
                 if f"final_{split}" in per_trial for stat in ("mean", "std")}
    agg = per_trial.groupby(["dataset", "strategy"]).agg(
        generation=("generation", "first"), regime=("regime", "first"),
        mean=("final", "mean"), std=("final", "std"), best=("best", "max"),
        seeds=("seed", "nunique"),
        failed=("status", lambda s: int((s == "failed").sum())),
        diverged=("status", lambda s: int((s == "diverged").sum())),
        **per_split,
    ).reset_index()
    agg["rank"] = agg.groupby("dataset")["mean"].rank(ascending=(mode == "min"), method="min",
                                                      na_option="bottom").astype(int)
    return agg.sort_values(["dataset", "rank", "strategy"]).reset_index(drop=True)


def epochs_to_target(df: pd.DataFrame, metric: str, mode: str,
                     targets: dict[str, float]) -> pd.DataFrame:
    """Per dataset and strategy: mean first epoch reaching the target, and how many seeds did."""
    rows = []
    for (dataset, strategy), group in df.groupby(["dataset", "strategy"]):
        if dataset not in targets or metric not in group:
            continue
        target = targets[dataset]
        reached = group[(group[metric] >= target) if mode == "max" else (group[metric] <= target)]
        firsts = reached.groupby("seed")["epoch"].min()
        rows.append({"dataset": dataset, "strategy": strategy, "target": target,
                     "epochs": firsts.mean() if len(firsts) else math.nan,
                     "reached": len(firsts), "seeds": group["seed"].nunique()})
    return pd.DataFrame(rows, columns=["dataset", "strategy", "target", "epochs", "reached", "seeds"])


def regime_winners(ranked: pd.DataFrame, mode: str) -> pd.DataFrame:
    """Per regime: the winning strategy (mean over the regime's datasets) and each generation's best."""
    score = ranked.groupby(["regime", "strategy"]).agg(
        generation=("generation", "first"), score=("mean", "mean"),
        datasets=("dataset", lambda d: ", ".join(sorted(set(d))))).reset_index()
    pick = "idxmax" if mode == "max" else "idxmin"
    rows = []
    for regime, group in score.groupby("regime"):
        group = group.dropna(subset=["score"])
        if group.empty:
            continue
        win = group.loc[getattr(group["score"], pick)()]
        row = {"regime": regime, "datasets": win["datasets"], "winner": win["strategy"],
               "generation": int(win["generation"]), "score": win["score"]}
        for gen, g in group.groupby("generation"):
            best = g.loc[getattr(g["score"], pick)()]
            row[f"gen{int(gen)}"] = f"{best['strategy']} {best['score']:.4f}"
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- Markdown (the curves: sweeps.report.curves)


def _num(x: float, digits: int = 4) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _mean_std(mean: float, std: float) -> str:
    return _num(mean) + ("" if std is None or math.isnan(std) else f" ± {_num(std)}")


def _split_of(metric: str) -> str:
    """'test, ' or 'validation, ' (or nothing): the split the ranked metric is measured on."""
    split = SPLITS.get(metric.partition("_")[0])
    return f"{split}, " if split else ""


def _other_splits(group: pd.DataFrame, metric: str) -> list[tuple[str, str]]:
    """(split, metric) of the splits other than the ranked metric's that this dataset measured."""
    return [(split, key) for split, key in split_metrics(metric).items()
            if key != metric and f"{split}_mean" in group and group[f"{split}_mean"].notna().any()]


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def render_markdown(spec: Spec, meta_line: str, per_trial: pd.DataFrame, ranked: pd.DataFrame,
                    to_target: pd.DataFrame, winners: pd.DataFrame, curves: dict[str, Path]) -> str:
    m = spec.metric
    counts = per_trial["status"].value_counts().to_dict()
    status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    about = [spec.description.strip(), ""] if spec.description.strip() else []
    out = [f"# Sweep `{spec.name}`", "", *about,
           f"{meta_line}; metric `{m}` ({spec.mode}); {len(per_trial)} trials: {status}.", ""]
    for dataset, group in ranked.groupby("dataset", sort=False):
        target = to_target[to_target["dataset"] == dataset].set_index("strategy")
        tgt = f"epochs to {m} {'>=' if spec.mode == 'max' else '<='} {target['target'].iloc[0]:g}" \
            if len(target) else None
        others = _other_splits(group, m)
        header = ["rank", "strategy", "gen", f"final {m} ({_split_of(m)}mean ± std)", "best",
                  *[f"{key} ({split}, mean ± std)" for split, key in others], "seeds"] + \
            ([tgt] if tgt else []) + ["diverged", "failed"]
        rows = []
        for r in group.itertuples():
            cells = r._asdict()
            row = [r.rank, f"`{r.strategy}`", r.generation, _mean_std(r.mean, r.std), _num(r.best),
                   *[_mean_std(cells[f"{split}_mean"], cells[f"{split}_std"]) for split, _ in others],
                   r.seeds]
            if tgt:
                t = target.loc[r.strategy] if r.strategy in target.index else None
                row.append("—" if t is None or t["reached"] == 0
                           else f"{t['epochs']:.1f} ({int(t['reached'])}/{int(t['seeds'])})")
            rows.append(row + [r.diverged, r.failed])
        out += [f"## {dataset} ({group['regime'].iloc[0]})", "", *_table(header, rows), ""]
        if dataset in curves:
            out += [f"![{dataset} learning curves]({curves[dataset].name})", ""]
    if len(winners):
        gens = sorted(c for c in winners.columns if c.startswith("gen") and c != "generation")
        header = ["regime", "datasets", "winner", f"mean final {m}", *gens]
        rows = [[w.regime, w.datasets, f"`{w.winner}` (gen{w.generation})", _num(w.score),
                 *[w._asdict().get(g) if isinstance(w._asdict().get(g), str) else "—" for g in gens]]
                for w in winners.itertuples()]
        out += ["## Regime winners", "",
                "Score: a strategy's mean final metric averaged over the regime's datasets; "
                "the generation columns give each generation's best strategy.", "",
                *_table(header, rows), ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- entry points


def write_report(folder: str, out_dir: Path | None = None) -> Path:
    """Write report.md + curve PNGs for the sweep in `folder`; returns the Markdown file."""
    meta = read_meta(folder)
    if meta is None:
        raise SpecError(f"{folder}: not a sweep folder (no dals-sweep.json)")
    spec = spec_copy(folder)
    out_dir = out_dir or Path(RESULTS_DIR) / spec.name
    out_dir.mkdir(parents=True, exist_ok=True)
    df = load_epochs(folder)
    if df.empty:
        raise SpecError(f"{folder}: no trial has reported yet")
    per_trial = finals(df, spec.metric)
    ranked = ranking(per_trial, spec.mode)
    to_target = epochs_to_target(df, spec.metric, spec.mode, spec.targets())
    winners = regime_winners(ranked, spec.mode)
    curves = plot_curves(df, spec.metric, out_dir, spec.mode)
    meta_line = f"Sweep id `{meta.sweep_id}`, spec hash `{meta.spec_hash}`"
    # the report is for people: a password in any text the spec carried (description) is masked
    text = redact(render_markdown(spec, meta_line, per_trial, ranked, to_target, winners, curves))
    path = out_dir / "report.md"
    path.write_text(text + "\n")
    ranked.to_csv(out_dir / "ranking.csv", index=False)
    per_trial.to_csv(out_dir / "trials.csv", index=False)  # each trial's status: finished, diverged...
    return path
