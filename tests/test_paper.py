"""sweeps.paper: our numbers next to the paper's, computed from per-epoch rows."""
from __future__ import annotations

import statistics

import pandas as pd
import pytest

from sweeps.report import paper

# eval accuracy per epoch: (strategy, dataset, seed) -> curve
CURVES = {
    ("dals", "synthetic", 0): [0.55, 0.75, 0.92], ("dals", "synthetic", 1): [0.65, 0.85, 0.88],
    ("dals-fast", "synthetic", 0): [0.91, 0.93, 0.94], ("dals-fast", "synthetic", 1): [0.90, 0.95, 0.93],
    ("radam", "trec6", 0): [0.5, 0.8, 0.9], ("radam", "trec6", 1): [0.6, 0.7, 0.8],
    ("stlr-discriminative", "trec6", 0): [0.2, 0.2, 0.3], ("stlr-discriminative", "trec6", 1): [0.2, 0.4, 0.3],
}


@pytest.fixture
def epochs() -> pd.DataFrame:
    rows = []
    for (strategy, dataset, seed), curve in CURVES.items():
        for epoch, acc in enumerate(curve, 1):
            rows.append({"key": f"{strategy}/{dataset}/{seed}", "strategy": strategy, "generation": 6,
                         "dataset": dataset, "regime": "scratch", "seed": seed, "epoch": epoch,
                         "eval_accuracy": acc, "status": "finished"})
    return pd.DataFrame(rows)


def test_summary_is_best_over_epochs_then_mean_and_std_over_seeds(epochs):
    stats = paper.summary(paper.best_per_trial(epochs, "eval_accuracy")).set_index(["dataset", "strategy"])
    for (strategy, dataset) in {(s, d) for s, d, _ in CURVES}:
        bests = [max(c) * 100 for (s, d, _), c in CURVES.items() if (s, d) == (strategy, dataset)]
        assert stats.loc[(dataset, strategy), "mean"] == pytest.approx(statistics.mean(bests))
        assert stats.loc[(dataset, strategy), "std"] == pytest.approx(statistics.stdev(bests))
        assert stats.loc[(dataset, strategy), "count"] == 2


def test_epochs_to_thresholds_average_first_epochs_and_nan_when_a_seed_never_gets_there(epochs):
    table = paper.epochs_to(epochs, "eval_accuracy", "synthetic").set_index("strategy")
    assert table.loc["dals", 0.6] == 1.5          # seed 0 at epoch 2, seed 1 at epoch 1
    assert table.loc["dals", 0.8] == 2.5
    assert pd.isna(table.loc["dals", 0.9])        # seed 1 never reaches 90%
    assert table.loc["dals-fast", 0.9] == 1.0


def test_winners_and_claims(epochs):
    stats = paper.summary(paper.best_per_trial(epochs, "eval_accuracy"))
    win = paper.winners(stats).set_index("dataset")
    assert win.loc["synthetic", "winner"] == "dals-fast"
    assert win.loc["trec6", "winner"] == "radam"
    assert bool(win.loc["trec6", "clear"])        # 85 +- 7 vs 35 +- 7
    facts = paper.claims(stats, paper.epochs_to(epochs, "eval_accuracy", "synthetic"))
    assert facts["synthetic"] == {"dals": 90.0, "dals_rank": 2, "best": "dals-fast", "best_mean": 94.5}
    assert facts["epochs_to_90_synthetic"] == {"dals": None, "dals-fast": 1.0}
    assert facts["stlr"]["trec6"] == {"stlr-discriminative": 35.0, "stlr-discriminative@double-decay": None,
                                      "stlr-discriminative@authors": None, "radam": 85.0}
    assert facts["distinct_winners"] == 2
    assert facts["winners"]["trec6"] == {"winner": "radam", "mean": 85.0, "tied": 0}
    assert facts["winners"]["synthetic"]["tied"] == 0   # dals 90 + 2.8 < dals-fast 94.5 - 0.7



def test_render_puts_the_papers_numbers_beside_ours(epochs):
    stats = paper.summary(paper.best_per_trial(epochs, "eval_accuracy"))
    to90 = paper.epochs_to(epochs, "eval_accuracy", "synthetic")
    text = paper.render(stats, to90, paper.winners(stats), paper.claims(stats, to90), "cmd")
    assert "| dals | 90.0 ± 2.8 \\| 98.0 |" in text          # synthetic: ours | paper's 98.0
    assert "| radam | " in text and "85.0 ± 7.1 \\| 96.8" in text
    assert "| dals-fast | 1/1/1/1 | 1/1/2/3 |" in text
