"""The sweep's parent run at a glance: summary metrics (how many trials finished, diverged, failed;
the best final metric per dataset) and which strategy holds each best, computed from the
experiment folder (Ray's results, the ground truth) with the report's own tables."""

from __future__ import annotations

import re
import time

from mlflow.entities import Metric, RunTag

from sweeps.report.tables import finals, load_epochs, ranking
from sweeps.tracking.store import Store
from sweeps.train.status import TrialStatus

COUNTED = (TrialStatus.FINISHED, TrialStatus.DIVERGED, TrialStatus.FAILED, TrialStatus.STOPPED)
TAG_BEST = "dals.best"  # dals.best.<dataset> = the strategy with the best mean final metric


def metric_key(text: str) -> str:
    """`text` as an MLflow metric or tag key (letters, digits, `_ - . / :` and spaces)."""
    return re.sub(r"[^\w.\- :/]", "_", text)[:250]


def sweep_summary(folder: str, metric: str, mode: str) -> tuple[dict[str, float], dict[str, str]]:
    """(metrics, tags) for the parent run: `trials_<status>` counts (finished, diverged and failed
    always, stopped when ASHA stopped any) and per dataset `best_final_<metric>/<dataset>`, the best
    strategy's mean final metric over seeds, with that strategy as tag `dals.best.<dataset>`."""
    df = load_epochs(folder)
    if df.empty:
        return {}, {}
    per_trial = finals(df, metric)
    counts = per_trial["status"].value_counts()
    metrics = {f"trials_{s}": float(counts.get(s, 0)) for s in COUNTED
               if s != TrialStatus.STOPPED or counts.get(s, 0)}
    tags = {}
    ranked = ranking(per_trial, mode)
    for dataset, group in ranked.dropna(subset=["mean"]).groupby("dataset"):
        best = group.sort_values("rank").iloc[0]
        metrics[metric_key(f"best_final_{metric}/{dataset}")] = float(best["mean"])
        tags[metric_key(f"{TAG_BEST}.{dataset}")] = str(best["strategy"])
    return metrics, tags


def log_sweep_summary(store: Store, parent_id: str, folder: str, metric: str, mode: str) -> None:
    """Log `sweep_summary` to the sweep's parent run (its latest values replace a resumed
    sweep's earlier ones in the UI)."""

    metrics, tags = sweep_summary(folder, metric, mode)
    if not metrics:
        return
    now = int(time.time() * 1000)
    store.client().log_batch(parent_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                             tags=[RunTag(k, v) for k, v in tags.items()])
