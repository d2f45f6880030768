"""Curves against optimizer steps and the head-to-head rows behind the fine-tuning claims."""
from __future__ import annotations

import math
import textwrap

import pandas as pd
import pytest

from sweeps.report import gaps, paper
from sweeps.report.steps import with_steps
from sweeps.spec.sweep import load_spec
from sweeps.train.config import TrialConfig
from sweeps.train.trial import Trial, steps_per_epoch

from test_report import handmade_sweep


def test_steps_per_epoch_is_what_the_trial_trains_and_reports():
    cfg = TrialConfig.create(strategy="adamw", dataset="trec6-scratch", seed=3, epochs=2, max_train=70,
                             batch_size=16, max_eval=32)
    assert steps_per_epoch(cfg) == math.ceil(70 / 16) == 5
    trial = Trial(cfg)
    assert trial.steps_per_epoch == 5
    assert [trial.run_epoch()["steps"] for _ in range(2)] == [5, 10]
    # a validation split comes out of the train rows first: 5,452 TREC-6 train rows less the held-out ones
    held = TrialConfig.create(strategy="adamw", dataset="trec6-scratch", seed=0, validation=0.1, batch_size=32)
    train_rows = sum(1 for line in open("sweeps/data/trec/train_5500.label", encoding="latin-1") if line.strip())
    n_val = len(Trial(held).val[1])
    assert steps_per_epoch(held) == math.ceil((train_rows - n_val) / 32) and 0.09 < n_val / train_rows < 0.11


def test_rows_without_steps_get_them_from_their_trials_config(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent("""
        name: s
        grid: {strategies: [sgd], datasets: [synthetic, trec6-scratch], seeds: 2}
        datasets:
          synthetic: {max_train: 100, batch_size: 32}
          trec6-scratch: {max_train: 70, batch_size: 16}
        tracking: {enabled: false}
    """))
    spec, _ = load_spec(path)
    rows = [{"key": t.key, "dataset": t.dataset, "epoch": e} for t in spec.trials() for e in (1, 2)]
    rows[0]["steps"] = 99.0  # a row that reported its own steps keeps them
    out = with_steps(pd.DataFrame(rows), spec).set_index(["key", "epoch"])["steps"]
    syn, trec = [t.key for t in spec.trials() if t.seed == 1]
    assert out[(syn, 2)] == 2 * 4 and out[(trec, 1)] == 5 and out[(trec, 2)] == 10
    assert out[(spec.trials()[0].key, 1)] == 99.0


def test_head_to_head_takes_the_best_reference_and_tests_both_stds():
    stats = pd.DataFrame([
        ("trec6", "stlr-discriminative@authors", 43.6, 1.0), ("trec6", "radam", 96.8, 0.5),
        ("trec6", "adamw", 97.0, 0.2), ("trec6", "dals", 95.0, 1.0), ("rte", "dals", 60.0, 3.0),
        ("rte", "adamw", 58.0, 1.0), ("rte", "radam", 57.0, 0.5), ("imdb", "sgd", 80.0, 1.0),
        ("trec6", "sgd", 44.0, 2.0),
    ], columns=["dataset", "strategy", "mean", "std"])
    found = gaps.head_to_head(stats)
    control = found[found["reference"] == "sgd"].set_index(["dataset", "strategy"])
    # the same-rate SGD control: 43.6 +- 1 against 44 +- 2 is no gap at all
    assert list(control.index) == [("trec6", "stlr-discriminative@authors")]
    assert math.isclose(control.loc[("trec6", "stlr-discriminative@authors"), "gap"], -0.4)
    assert not control.loc[("trec6", "stlr-discriminative@authors"), "clears"]
    rows = found[found["reference"] != "sgd"].set_index(["dataset", "strategy"])
    assert rows.loc[("trec6", "stlr-discriminative@authors"), "reference"] == "radam"
    assert math.isclose(rows.loc[("trec6", "stlr-discriminative@authors"), "gap"], -53.2)
    assert rows.loc[("trec6", "stlr-discriminative@authors"), "clears"]
    # DALS is held against the better of AdamW and RAdam: 95 + 1 < 97 - 0.2, a clear deficit
    assert rows.loc[("trec6", "dals"), "reference"] == "adamw" and rows.loc[("trec6", "dals"), "clears"]
    assert rows.loc[("rte", "dals"), "gap"] == 2.0 and not rows.loc[("rte", "dals"), "clears"]  # 60 - 3 < 58 + 1
    assert ("imdb", "sgd") not in rows.index
    assert gaps.clears(1.0, math.nan, 0.5, 0.4) and not gaps.clears(1.0, 0.1, 0.5, 0.4)


def test_paper_report_writes_steps_plots_and_the_head_to_head(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = handmade_sweep(tmp_path)
    out = tmp_path / "out"
    text = paper.write(folder, out).read_text()
    assert (out / "steps-synthetic.png").stat().st_size > 1000
    assert (out / "head-to-head.csv").exists() and "## Best eval accuracy" in text


def test_paper_report_over_sweeps_run_apart_is_the_report_of_the_whole(tmp_path, monkeypatch, capsys):
    """A budget run as two sweeps (each trial in one) reports as the sweep holding both; a trial also
    left unfinished in an interrupted sweep is taken from the one where it ended; a trial that ended in
    two sweeps is refused in one line, before anything is written."""
    import json
    import shutil

    monkeypatch.chdir(tmp_path)
    whole = handmade_sweep(tmp_path)
    halves = [tmp_path / "seed0" / "handmade", tmp_path / "seed1" / "handmade"]
    for seed, half in enumerate(halves):
        shutil.copytree(whole, half)
        for trial in half.iterdir():  # each half keeps its seed's trials
            if trial.is_dir() and not trial.name.endswith(f"-s{seed}"):
                shutil.rmtree(trial)
    assert {len(list(h.glob("*/result.json"))) for h in halves} == {3}
    paper.write(whole, tmp_path / "whole")
    paper.write([str(h) for h in halves], tmp_path / "apart")
    for name in ("best-accuracy.csv", "head-to-head.csv", "claims.json"):
        assert (tmp_path / "apart" / name).read_text() == (tmp_path / "whole" / name).read_text(), name
    assert (tmp_path / "apart" / "steps-synthetic.png").stat().st_size > 1000

    # seed 1's sgd trial also in an interrupted copy of the seed-0 half: one epoch, still running
    interrupted = tmp_path / "interrupted" / "handmade"
    shutil.copytree(halves[0], interrupted)
    sgd = next(halves[1].glob("sgd-*"))
    shutil.copytree(sgd, interrupted / sgd.name)
    first = json.loads((sgd / "result.json").read_text().splitlines()[0])
    assert first["status"] == "running"
    (interrupted / sgd.name / "result.json").write_text(json.dumps(first) + "\n")
    text = paper.write([str(interrupted), str(halves[1])], tmp_path / "superseded").read_text()
    for name in ("best-accuracy.csv", "head-to-head.csv", "claims.json"):
        assert (tmp_path / "superseded" / name).read_text() == (tmp_path / "whole" / name).read_text(), name
    key = json.loads((sgd / "params.json").read_text())["trial"]["key"]
    assert f"- {key}: from {halves[1]}, where it ended" in text

    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        paper.main([whole, str(halves[0]), "--out", str(tmp_path / "twice")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and f"is in {whole}, {halves[0]} and ended in 2 of them" in err
    assert not (tmp_path / "twice").exists()
