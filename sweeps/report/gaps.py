"""Head-to-head rows behind the paper's fine-tuning claims: strategy A against strategy B on one
dataset, the gap of their means and whether it clears both standard deviations (mean - std of the
better above mean + std of the other), the test the verdicts in docs/results.md are written from."""
from __future__ import annotations

import math

import pandas as pd

# (claim, strategies on the left, the strategies they are held against: the best of these by mean)
CLAIMS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("STLR+discriminative collapses (TREC-6: 43.6 vs RAdam 96.8)",
     ("stlr-discriminative", "stlr-discriminative@double-decay", "stlr-discriminative@authors"), ("radam",)),
    # the control: where plain SGD at the same rate also fails, a collapse is not STLR's or the layers' doing
    ("STLR+discriminative against plain SGD at the same rate",
     ("stlr-discriminative", "stlr-discriminative@double-decay", "stlr-discriminative@authors"), ("sgd",)),
    ("DALS stays competitive when fine-tuning",
     ("dals", "dals-fast", "dals-acc", "dals@finetune", "dals@finetune-decoupled", "dals@finetune-long"),
     ("adamw", "radam")),
)


def clears(a_mean: float, a_std: float, b_mean: float, b_std: float) -> bool:
    """Whether the better of the two leads by more than both spreads (a NaN std counts as 0)."""
    a_std, b_std = (0.0 if pd.isna(s) else s for s in (a_std, b_std))
    hi, hi_std, lo, lo_std = (a_mean, a_std, b_mean, b_std) if a_mean >= b_mean else (b_mean, b_std, a_mean, a_std)
    return bool(hi - hi_std > lo + lo_std)


def head_to_head(stats: pd.DataFrame) -> pd.DataFrame:
    """One row per (claim, dataset, left strategy) present in ``stats`` (the columns of
    ``paper.summary``: dataset, strategy, mean, std, count): the left strategy, the best reference by
    mean, the gap (left - reference, points) and whether it clears both stds."""
    rows = []
    for claim, left, against in CLAIMS:
        for dataset, g in stats.groupby("dataset", sort=False):
            ref = g[g["strategy"].isin(against)].sort_values("mean", ascending=False)
            if ref.empty:
                continue
            r = ref.iloc[0]
            for _, a in g[g["strategy"].isin(left)].iterrows():
                rows.append({"claim": claim, "dataset": dataset, "strategy": a["strategy"], "mean": a["mean"],
                             "std": a["std"], "reference": r["strategy"], "ref_mean": r["mean"], "ref_std": r["std"],
                             "gap": a["mean"] - r["mean"],
                             "clears": clears(a["mean"], a["std"], r["mean"], r["std"])})
    return pd.DataFrame(rows, columns=["claim", "dataset", "strategy", "mean", "std", "reference", "ref_mean",
                                       "ref_std", "gap", "clears"])


def render(rows: pd.DataFrame) -> list[str]:
    """Markdown lines: one table per claim."""
    def pm(m: float, s: float) -> str:
        return f"{m:.1f} ± {0.0 if pd.isna(s) or math.isnan(s) else s:.1f}"

    lines: list[str] = []
    for claim, g in rows.groupby("claim", sort=False):
        lines += [f"### {claim}", "", "| dataset | strategy | mean ± std | against | its mean ± std | gap (points) | "
                  "gap clears both stds |", "|---|---|---|---|---|---|---|"]
        for r in g.itertuples():
            lines.append(f"| {r.dataset} | {r.strategy} | {pm(r.mean, r.std)} | {r.reference} | "
                         f"{pm(r.ref_mean, r.ref_std)} | {r.gap:+.1f} | {'yes' if r.clears else 'no'} |")
        lines.append("")
    return lines
