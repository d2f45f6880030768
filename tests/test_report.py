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
