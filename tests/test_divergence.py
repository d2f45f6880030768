"""A trial whose loss blows up (sgd at lr 1e6) through `dals sweep run`: it ends early as `diverged`
in Ray's results, in MLflow (status tag, note, a FINISHED run: not a crash) and in the report (md
and csv), the sweep completes with exit 0, and nothing ranks or wins on what a diverged epoch measured."""

from __future__ import annotations

import csv
import json
import math
import textwrap
from pathlib import Path

import pytest

from sweeps.cli import main as cli
from sweeps.tracking import store as tracking
from sweeps.experiment.folder import experiment_dir, read_meta
from sweeps.runner.grid import saved_trials
from sweeps.spec.sweep import load_spec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
EPOCHS = 3
DIVERGED, HEALTHY = "sgd/synthetic/0", "sgd/synthetic-gmm/0"


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    import ray

    ray.shutdown()


def last_rows(folder: str) -> dict[str, dict]:
    """Trial key -> its last result row, and the epochs it reported."""
    out = {}
    for result in Path(folder).glob("*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines()]
        out[rows[-1]["config"]["trial"]["key"]] = {**rows[-1], "epochs": [r["epoch"] for r in rows]}
    return out


def table_row(markdown: str, dataset: str) -> dict[str, str]:
    """The `sgd` row of a dataset's ranking table in report.md, by column header."""
    section = markdown.split(f"## {dataset} (", 1)[1]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    row = next(line for line in lines[2:] if "`sgd`" in line)
    return dict(zip(header, (c.strip() for c in row.strip("|").split("|"))))


def test_absurd_learning_rate_is_diverged_everywhere_not_a_crash(in_tmp, capsys):
    path = in_tmp / "div.yaml"
    path.write_text(textwrap.dedent(f"""
        name: div
        grid: {{strategies: [sgd], datasets: [synthetic, synthetic-gmm], seeds: [0]}}
        defaults: {{epochs: {EPOCHS}, max_train: 500, max_eval: 200}}
        datasets: {{synthetic: {{hp: {{lr: 1.0e+6}}}}}}
        failure: {{max_retries: 0}}
    """))
    assert cli.main(["sweep", "run", str(path)]) == 0  # diverged is a result, not a failure
    out = capsys.readouterr().out
    assert "2/2 finished (1 diverged), 0 failed" in out
    assert f"({DIVERGED})" not in out  # the progress line's "best" is never a diverged epoch

    spec, _ = load_spec(path)
    folder = experiment_dir(spec)
    # Ray: the trial ended normally (TERMINATED, no error file) after its first epoch, as diverged
    rows = last_rows(folder)
    assert rows[DIVERGED]["status"] == "diverged" and rows[DIVERGED]["epochs"] == [1]
    assert not math.isfinite(rows[DIVERGED]["train_loss"])
    assert rows[HEALTHY]["status"] == "finished" and rows[HEALTHY]["epochs"] == list(range(1, EPOCHS + 1))
    assert {t.config["trial"]["key"]: t.status for t in saved_trials(folder)} == \
        {DIVERGED: "TERMINATED", HEALTHY: "TERMINATED"}
    assert not list(Path(folder).glob("*/error.*"))

    # MLflow: status tag, a note saying why, and a FINISHED run (FAILED is for crashes)
    meta = read_meta(folder)
    _, children = tracking.sweep_runs(tracking.Store(meta.tracking_uri, meta.experiment), meta.sweep_id)
    runs = {c.data.tags[tracking.TAG_KEY]: c for c in children}
    assert (runs[DIVERGED].data.tags[tracking.TAG_STATUS], runs[DIVERGED].info.status) == ("diverged", "FINISHED")
    assert runs[DIVERGED].data.tags[tracking.NOTE].startswith("diverged")
    assert (runs[HEALTHY].data.tags[tracking.TAG_STATUS], runs[HEALTHY].info.status) == ("finished", "FINISHED")

    # report: counted as diverged, not failed; no final metric from the diverged epoch
    report = in_tmp / "results" / "div"
    text = (report / "report.md").read_text()
    assert "2 trials: 1 diverged, 1 finished" in text
    diverged_row, healthy_row = table_row(text, "synthetic"), table_row(text, "synthetic-gmm")
    assert (diverged_row["diverged"], diverged_row["failed"]) == ("1", "0")
    assert diverged_row["final eval_accuracy (test, mean ± std)"] == "—" and diverged_row["best"] == "—"
    assert healthy_row["diverged"] == "0" and healthy_row["final eval_accuracy (test, mean ± std)"] != "—"
    trials = {r["key"]: r for r in csv.DictReader((report / "trials.csv").open())}
    assert (trials[DIVERGED]["status"], trials[DIVERGED]["final"]) == ("diverged", "")
    assert trials[HEALTHY]["status"] == "finished"
    ranking = {r["dataset"]: r for r in csv.DictReader((report / "ranking.csv").open())}
    assert (ranking["synthetic"]["diverged"], ranking["synthetic"]["failed"]) == ("1", "0")
