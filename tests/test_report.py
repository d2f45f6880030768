"""The report's tables from hand-made per-epoch rows, and `dals report` on a hand-made sweep folder."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from sweeps.cli import main as cli
from sweeps.report.tables import epochs_to_target, finals, load_epochs, ranking, regime_winners, write_report
from sweeps.experiment.folder import experiment_dir, start_or_resume
from sweeps.spec.sweep import load_spec

# strategy -> (generation, per-seed accuracy curves); ds2 is a second regime
CURVES = {
    ("ds1", "sgd"): (1, [[0.5, 0.7, 0.8], [0.6, 0.8, 0.9]]),
    ("ds1", "adam"): (3, [[0.7, 0.9, 0.95], [0.8, 0.9, 0.93]]),
    ("ds1", "dals"): (6, [[0.6, 0.85, 0.99], [0.5, 0.7, 0.6]]),
    ("ds2", "sgd"): (1, [[0.3, 0.6, 0.7], [0.3, 0.6, 0.7]]),
    ("ds2", "adam"): (3, [[0.3, 0.4, 0.5], [0.3, 0.4, 0.5]]),
    ("ds2", "dals"): (6, [[0.3, 0.5, 0.65], [0.3, float("nan"), float("nan")]]),
}


def epochs_frame() -> pd.DataFrame:
    rows = []
    for (dataset, strategy), (gen, seeds) in CURVES.items():
        for seed, curve in enumerate(seeds):
            status = "diverged" if math.isnan(curve[-1]) else "finished"
            for epoch, acc in enumerate(curve, 1):
                rows.append({"key": f"{strategy}/{dataset}/{seed}", "strategy": strategy, "generation": gen,
                             "dataset": dataset, "regime": "scratch" if dataset == "ds1" else "finetune",
                             "seed": seed, "epoch": epoch, "eval_accuracy": acc, "status": status})
    return pd.DataFrame(rows)


def test_ranking_is_mean_and_std_of_final_metric_over_seeds():
    ranked = ranking(finals(epochs_frame(), "eval_accuracy"), "max")
    ds1 = ranked[ranked["dataset"] == "ds1"].set_index("strategy")
    assert list(ds1.index) == ["adam", "sgd", "dals"]  # 0.94, 0.85, 0.795
    assert ds1.loc["adam", "mean"] == pytest.approx(0.94)
    assert ds1.loc["adam", "std"] == pytest.approx(pd.Series([0.95, 0.93]).std())
    assert ds1.loc["dals", "best"] == pytest.approx(0.99)
    ds2 = ranked[ranked["dataset"] == "ds2"].set_index("strategy")
    assert ds2.loc["dals", "diverged"] == 1 and ds2.loc["dals", "mean"] == pytest.approx(0.65)
    # mode min ranks the other way round
    assert list(ranking(finals(epochs_frame(), "eval_accuracy"), "min").query("dataset == 'ds1'")["strategy"]) \
        == ["dals", "sgd", "adam"]


def test_epochs_to_target_counts_seeds_that_reach_it():
    table = epochs_to_target(epochs_frame(), "eval_accuracy", "max", {"ds1": 0.9}).set_index("strategy")
    assert table.loc["adam", "epochs"] == pytest.approx(2.0) and table.loc["adam", "reached"] == 2
    assert table.loc["sgd", "epochs"] == pytest.approx(3.0) and table.loc["sgd", "reached"] == 1
    assert table.loc["dals", "epochs"] == pytest.approx(3.0) and table.loc["dals", "reached"] == 1
    assert set(table["dataset"]) == {"ds1"}  # ds2 has no target


def test_regime_winners_compare_generations():
    winners = regime_winners(ranking(finals(epochs_frame(), "eval_accuracy"), "max"), "max")
    by = winners.set_index("regime")
    assert by.loc["scratch", "winner"] == "adam" and by.loc["finetune", "winner"] == "sgd"
    assert by.loc["scratch", "gen6"] == "dals 0.7950" and by.loc["finetune", "gen3"] == "adam 0.5000"


SPEC = """
name: handmade
description: A sweep folder written by hand.
grid: {strategies: [sgd, adam, dals], datasets: [synthetic], seeds: 2}
defaults: {epochs: 3}
datasets: {synthetic: {target: 0.9}}
tracking: {enabled: false}
"""


def handmade_sweep(tmp_path: Path) -> str:
    """A sweep folder as the runner leaves it, with Ray's per-trial files written by hand."""
    path = tmp_path / "handmade.yaml"
    path.write_text(textwrap.dedent(SPEC))
    spec, _ = load_spec(path)
    start_or_resume(spec, path, fresh=False)
    folder = Path(experiment_dir(spec))
    for trial in spec.trials():
        gen, seeds = CURVES[("ds1", trial.strategy)]
        trial_dir = folder / trial.slug
        trial_dir.mkdir()
        entry = {"key": trial.key, "slug": trial.slug, "labels": trial.labels(), "config": {}}
        (trial_dir / "params.json").write_text(json.dumps({"trial": entry}))
        curve = seeds[trial.seed]
        lines = [json.dumps({"epoch": e, "eval_accuracy": a, "training_iteration": e,
                             "status": "finished" if e == len(curve) else "running",
                             "config": {"trial": entry}})
                 for e, a in enumerate(curve, 1)]
        (trial_dir / "result.json").write_text("\n".join(lines) + "\n")
    return str(folder)


def test_report_files_from_a_sweep_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = handmade_sweep(tmp_path)
    assert len(load_epochs(folder)) == 18
    report = write_report(folder)
    assert report == Path("results/handmade/report.md")
    text = report.read_text()
    assert "# Sweep `handmade`" in text and "A sweep folder written by hand." in text
    table = [line for line in text.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")
             or line.startswith("| 3 ")]
    assert [row.split("`")[1] for row in table] == ["adam", "sgd", "dals"]
    assert "0.9400 ± 0.0141" in table[0] and "2.0 (2/2)" in table[0]
    assert "| scratch | synthetic | `adam` (gen3) | 0.9400 | sgd 0.8500 | adam 0.9400 | dals 0.7950 |" in text
    assert (report.parent / "curves-synthetic.png").stat().st_size > 1000
    assert (report.parent / "ranking.csv").exists()


def test_dals_report_command_regenerates_from_spec_or_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = handmade_sweep(tmp_path)
    assert cli.main(["report", "handmade.yaml"]) == 0
    assert "results/handmade/report.md" in capsys.readouterr().out
    assert cli.main(["report", folder, "--out", "elsewhere"]) == 0
    assert (tmp_path / "elsewhere" / "report.md").exists()
    assert cli.main(["report", str(tmp_path)]) == 2  # neither a spec nor a sweep folder
    assert capsys.readouterr().err.startswith("dals: error: ")


def test_a_validation_ranked_table_shows_the_test_split_beside_it(tmp_path):
    """Ranked on val_accuracy (what tuning looks at), the table carries eval_accuracy (test) too;
    ranked on eval_accuracy, the validation column appears where a dataset measured it."""
    from sweeps.report.tables import render_markdown

    frame = epochs_frame()
    frame["val_accuracy"] = frame["eval_accuracy"].where(frame["dataset"] == "ds1") - 0.1
    frame.loc[(frame["strategy"] == "sgd") & (frame["dataset"] == "ds1"), "val_accuracy"] += 0.2
    ranked = ranking(finals(frame, "val_accuracy"), "max")
    ds1 = ranked[ranked["dataset"] == "ds1"].set_index("strategy")
    assert list(ds1.index) == ["sgd", "adam", "dals"]  # val 0.95, 0.84, 0.695: sgd wins on validation
    assert ds1.loc["sgd", "test_mean"] == pytest.approx(0.85) and ds1.loc["adam", "test_mean"] == pytest.approx(0.94)
    assert ds1.loc["sgd", "validation_mean"] == pytest.approx(0.95) == ds1.loc["sgd", "mean"]
    path = tmp_path / "v.yaml"
    path.write_text("name: v\nmetric: val_accuracy\ngrid: {strategies: [sgd], datasets: [synthetic], seeds: 1}\n"
                    "defaults: {validation: 0.1}\n")
    spec, _ = load_spec(path)
    text = render_markdown(spec, "meta", finals(frame, "val_accuracy"), ranked, epochs_to_target(
        frame, "val_accuracy", "max", {}), regime_winners(ranked, "max"), {})
    header = next(line for line in text.splitlines() if line.startswith("| rank"))
    assert "final val_accuracy (validation, mean ± std)" in header and "eval_accuracy (test, mean ± std)" in header
    sgd = next(line for line in text.splitlines() if line.startswith("| 1 | `sgd`"))
    assert "| 0.9500 ± 0.0707 | 1.0000 | 0.8500 ± 0.0707 |" in sgd  # validation, best, test
    on_test = ranking(finals(frame, "eval_accuracy"), "max").set_index(["dataset", "strategy"])
    assert on_test.loc[("ds1", "adam"), "validation_mean"] == pytest.approx(0.84)
    assert math.isnan(on_test.loc[("ds2", "adam"), "validation_mean"])  # ds2 held out no validation


# ----------------------------------------------------------------------------- curves


def test_curve_stats_are_mean_and_std_over_seeds():
    from sweeps.report.curves import curve_stats

    frame = epochs_frame()
    stats = curve_stats(frame[frame["dataset"] == "ds1"], "eval_accuracy").set_index(["strategy", "epoch"])
    for (dataset, strategy), (_, seeds) in CURVES.items():
        if dataset != "ds1":
            continue
        for epoch in (1, 2, 3):
            values = pd.Series([s[epoch - 1] for s in seeds])
            row = stats.loc[(strategy, epoch)]
            assert (row["mean"], row["std"], row["count"]) == (pytest.approx(values.mean()),
                                                               pytest.approx(values.std()), 2)
    ds2 = curve_stats(frame[frame["dataset"] == "ds2"], "eval_accuracy")
    dals = ds2[ds2["strategy"] == "dals"].set_index("epoch")  # one seed diverged after epoch 1
    assert list(dals["count"]) == [2, 1, 1] and dals.loc[3, "mean"] == pytest.approx(0.65)


def test_log_epoch_axis_only_where_the_first_epochs_hold_the_change():
    from sweeps.report.curves import early_action, epoch_ticks

    def stats(curve):
        return pd.DataFrame({"strategy": "s", "epoch": range(1, len(curve) + 1), "mean": curve})

    fast = [0.5 + 0.45 * (1 - math.exp(-1.5 * e)) for e in range(20)]  # saturates in ~3 of 20 epochs
    assert early_action(stats(fast))
    assert not early_action(stats([0.5 + 0.02 * e for e in range(20)]))  # steady: linear axis
    assert not early_action(stats(fast[:6]))  # too few epochs to bother
    assert epoch_ticks(15) == [1, 2, 5, 10, 15] and epoch_ticks(80) == [1, 2, 5, 10, 20, 50, 80]


def test_value_axis_spreads_curves_that_end_close_together():
    """Accuracies that rise from 0.5 and all end within a point of 0.98 get a logit axis (0.98 and
    0.99 apart, 0.5 still shown); losses falling over decades a log axis; spread-out ends a linear one."""
    from sweeps.report.curves import value_scale, value_ticks

    def stats(finals, start):
        return pd.DataFrame([{"strategy": f"s{i}", "epoch": e, "mean": start + (f - start) * (1 - math.exp(-e))}
                             for i, f in enumerate(finals) for e in range(1, 21)])

    close = stats([0.981, 0.985, 0.989], start=0.5)
    assert value_scale(close, "eval_accuracy") == "logit"
    assert value_ticks("logit", 0.5, 0.989) == [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99]
    assert value_scale(stats([0.04, 0.05], start=2.0), "eval_loss") == "log"
    assert value_scale(stats([0.6, 0.8, 0.95], start=0.5), "eval_accuracy") == "linear"


def many_strategies(epochs: int = 15, seeds: int = 3) -> pd.DataFrame:
    """Every registered strategy on one dataset: curves that saturate within a few epochs."""
    import dalsopt

    rows = []
    for i, strategy in enumerate(dalsopt.names()):
        for seed in range(seeds):
            for epoch in range(1, epochs + 1):
                acc = 0.9 - 0.01 * i - 0.4 * math.exp(-(1 + 0.1 * i) * epoch) + 0.002 * seed
                rows.append({"key": f"{strategy}/d/{seed}", "strategy": strategy, "dataset": "d",
                             "generation": dalsopt.GENERATIONS[strategy], "regime": "scratch",
                             "seed": seed, "epoch": epoch, "eval_accuracy": acc, "status": "finished"})
    return pd.DataFrame(rows)


@pytest.fixture
def drawn(monkeypatch):
    """The figures plot_curves saves (still written to disk)."""
    from matplotlib.figure import Figure

    figures = []
    save = Figure.savefig

    def keep(self, *args, **kwargs):
        figures.append(self)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


def test_many_strategies_get_one_panel_per_generation_with_bands(tmp_path, drawn):
    import dalsopt
    from matplotlib.collections import PolyCollection

    from sweeps.report.curves import plot_curves

    df = many_strategies()
    files = plot_curves(df, "eval_accuracy", tmp_path)
    assert files["d"].stat().st_size > 10_000
    [figure] = drawn
    panels = [ax for ax in figure.axes if ax.get_visible()]
    gens = sorted(set(dalsopt.GENERATIONS.values()))
    assert [ax.get_title(loc="left") for ax in panels] == [f"gen{g}" for g in gens]
    best = df[df["epoch"] == 15].groupby("strategy")["eval_accuracy"].mean().idxmax()
    for ax, gen in zip(panels, gens):
        mine = [s for s, g in dalsopt.GENERATIONS.items() if g == gen]
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert sorted(label.split()[0] for label in labels if not label.startswith("best: ")) == sorted(mine)
        assert any(label.startswith(f"best: {best} ") for label in labels) == (best not in mine)
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == len(mine)  # a mean +- std band per strategy of the panel
        assert ax.get_xscale() == "log"  # these curves saturate in the first epochs
        grey = [line for line in ax.get_lines() if line.get_color() == "0.8"]
        assert len(grey) == len(dalsopt.GENERATIONS) - len(mine)  # the other generations behind


def test_few_strategies_share_one_panel_and_one_seed_draws_no_band(tmp_path, drawn):
    from matplotlib.collections import PolyCollection

    from sweeps.report.curves import plot_curves

    df = many_strategies(epochs=5, seeds=1)
    df = df[df["strategy"].isin(["sgd", "adam", "dals"])]
    plot_curves(df, "eval_accuracy", tmp_path)
    [figure] = drawn
    [ax] = [ax for ax in figure.axes if ax.get_visible()]
    assert ax.get_xscale() == "linear" and not [c for c in ax.collections if isinstance(c, PolyCollection)]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [label.split()[0] for label in labels] == ["sgd", "adam", "dals"]  # best final first
    assert "1 seed" in figure.texts[0].get_text()
