"""Real local Ray sweeps on `synthetic`: every trial reported and tracked once, and resume after Ctrl+C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dalsopt
from sweeps.tracking import store as tracking
from sweeps.experiment.folder import experiment_dir, read_meta
from sweeps.runner.grid import run_sweep
from sweeps.spec.sweep import load_spec
from ray_results import polled_sweep_env, trial_rows
from spec_files import write_spec
from tracked_runs import git_checkout

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
REPO = Path(__file__).resolve().parents[1]


def trial_results(folder: str) -> dict[str, list[dict]]:
    """Trial key -> the result rows Ray wrote for it."""
    return trial_rows(folder)


def mlflow_runs(folder: str):
    meta = read_meta(folder)
    return tracking.sweep_runs(tracking.Store(meta.tracking_uri, meta.experiment), meta.sweep_id)


def metric_steps(folder: str, run, key: str = "eval_accuracy") -> list[int]:
    meta = read_meta(folder)
    client = tracking.Store(meta.tracking_uri, meta.experiment).client()
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, key))


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    import ray

    ray.shutdown()


def test_sweep_reports_tracks_and_reports_every_trial(in_tmp):
    commit = git_checkout(in_tmp)  # the sweep runs in a git checkout: its runs name the commit
    path = write_spec(in_tmp, """
        name: e2e
        grid: {strategies: [sgd, adam, dals], datasets: [synthetic], seeds: [0, 1]}
        defaults: {epochs: 2, max_train: 1000, max_eval: 500}
        datasets: {synthetic: {target: 0.8, hp: {weight_decay: 0.0}}}
    """)
    spec, _ = load_spec(path)
    outcome = run_sweep(spec, path, num_cpus=2)
    folder = experiment_dir(spec)
    assert outcome.complete and (outcome.total, outcome.finished, outcome.failed) == (6, 6, 0)

    # Ray: every trial reported both epochs
    results = trial_results(folder)
    assert sorted(results) == sorted(t.key for t in spec.trials())
    assert all([r["epoch"] for r in rows] == [1, 2] for rows in results.values())
    assert not list(Path(folder).glob("*/checkpoint_*"))  # finished trials' checkpoints dropped

    # MLflow: one parent, one child per trial, right params, per-epoch metrics, status tag
    parent, children = mlflow_runs(folder)
    assert parent is not None and parent.info.status == "FINISHED"
    assert parent.data.tags[tracking.TAG_SPEC_HASH] == spec.digest
    assert len(children) == 6
    client = tracking.Store(spec.tracking_uri(), spec.experiment()).client()
    experiment = client.get_experiment_by_name(spec.experiment())
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # model training, not GenAI
    # the parent's summary, against Ray's results: counts, and each dataset's best mean final metric
    finals: dict[str, list[float]] = {}
    for rows in results.values():
        finals.setdefault(rows[-1]["config"]["trial"]["labels"]["strategy"], []).append(rows[-1]["eval_accuracy"])
    best = max(finals, key=lambda k: sum(finals[k]) / len(finals[k]))
    summary = parent.data.metrics
    assert (summary["trials_finished"], summary["trials_diverged"], summary["trials_failed"]) == (6, 0, 0)
    assert summary["best_final_eval_accuracy/synthetic"] == pytest.approx(sum(finals[best]) / len(finals[best]))
    assert parent.data.tags["dals.best.synthetic"] == best
    assert sorted(c.data.tags[tracking.TAG_KEY] for c in children) == sorted(results)
    for child in children:
        params, tags = child.data.params, child.data.tags
        strategy = params["strategy"]
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags[tracking.TAG_STATUS] == "finished" and child.info.status == "FINISHED"
        assert params["generation"] == str(dalsopt.GENERATIONS[strategy])
        assert (params["dataset"], params["regime"], params["epochs"]) == ("synthetic", "scratch", "2")
        assert params["seed"] in ("0", "1") and params["hp.weight_decay"] == "0.0"
        assert set(dalsopt.resolve(strategy)) <= {k[3:] for k in params if k.startswith("hp.")}
        assert metric_steps(folder, child) == [1, 2]
        assert set(child.data.metrics) >= {"train_loss", "eval_loss", "lr_bottom", "lr_top", "seconds"}
        # MLflow's conventions: the epoch is the step (no chart of its own), the worker's system
        # metrics per epoch, the source commit, no "None" param, the data as dataset inputs
        assert "epoch" not in child.data.metrics and tags[tracking.TAG_EPOCH] == "2"
        assert metric_steps(folder, child, "system/cpu_utilization_percentage") == [1, 2]
        assert 0 < child.data.metrics["system/system_memory_usage_percentage"] <= 100
        assert tags["mlflow.source.git.commit"] == commit == parent.data.tags["mlflow.source.git.commit"]
        assert "None" not in params.values()
        inputs = client.get_run(child.info.run_id).inputs.dataset_inputs
        assert sorted((d.dataset.name, d.tags[0].value, d.dataset.profile) for d in inputs) == [
            ("synthetic", "eval", '{"num_rows": 500}'), ("synthetic", "train", '{"num_rows": 1000}')]

    # report: one ranked row per strategy, logged to the parent run with the spec
    report = Path(outcome.report)
    text = report.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "`" in line.split("|")[2]]
    assert sorted(r.split("`")[1] for r in rows if "synthetic" not in r) == ["adam", "dals", "sgd"]
    assert "Regime winners" in text and "epochs to eval_accuracy >= 0.8" in text
    assert (report.parent / "curves-synthetic.png").stat().st_size > 1000
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/curves-synthetic.png"} <= logged
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "spec")] == ["spec/spec.yaml"]


def test_finetuning_runs_record_the_hyperparameters_their_trials_trained_with(in_tmp):
    """MLflow's hp.* of a fine-tuning trial are its strategy's fine-tuning values (regression: they
    were the from-scratch defaults), compared with the strategy the trial really built."""
    from sweeps.train.config import TrialConfig
    from sweeps.train.trial import Trial

    path = write_spec(in_tmp, """
        name: ft-hp
        grid: {strategies: [sgd, dals], datasets: [trec6], seeds: [0]}
        defaults: {epochs: 1, max_train: 24, max_eval: 12, max_length: 16, batch_size: 12}
        tracking: {experiment: ft-hp}
    """)
    spec, _ = load_spec(path)
    assert run_sweep(spec, path, num_cpus=2, report=False).complete
    folder = experiment_dir(spec)
    _, children = mlflow_runs(folder)
    assert len(children) == 2
    for child in children:
        key = child.data.tags[tracking.TAG_KEY]
        config = TrialConfig.restore(trial_results(folder)[key][0]["config"]["trial"]["config"])
        trained = Trial(config).strategy.meta["hyperparameters"]  # what the trial's strategy used
        logged = {k[3:]: v for k, v in child.data.params.items() if k.startswith("hp.")}
        assert logged == {k: str(v) for k, v in trained.items()}, key
        assert child.data.params["precision"] == "fp32", key  # unset: what the CPU trial resolved
    by_strategy = {c.data.params["strategy"]: c.data.params for c in children}
    # the fine-tuning column (STRATEGIES.md), TREC-6's 0.6 x rate: not the scratch wd 5e-4 / 1e-4
    assert float(by_strategy["sgd"]["hp.weight_decay"]) == 0.01
    assert float(by_strategy["sgd"]["hp.lr"]) == pytest.approx(3e-4)
    assert (float(by_strategy["dals"]["hp.weight_decay"]), float(by_strategy["dals"]["hp.warmup_frac"])) == (0.01, 0.1)


def start(spec: Path, cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sweeps.cli", "sweep", "run", str(spec)],
                            cwd=cwd, env=polled_sweep_env(), stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_or_kill(proc: subprocess.Popen, timeout: float) -> int | None:
    """The exit code; a generous timeout (the machine may be loaded) kills the sweep and gives None."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def finished_keys(folder: str) -> set[str]:
    return {k for k, rows in trial_results(folder).items() if rows[-1]["status"] == "finished"}


def test_interrupted_sweep_resumes_without_retraining_finished_trials(tmp_path):
    epochs = 30  # a trial lasts many polls (~10 s), so Ctrl+C lands while the others are pending
    path = write_spec(tmp_path, f"""
        name: resume
        grid: {{strategies: [sgd, cosine], datasets: [synthetic], seeds: [0, 1]}}
        defaults: {{epochs: {epochs}}}
        resources: {{cpu: 1, max_concurrent: 1}}
    """)
    spec, _ = load_spec(path)
    folder = str(tmp_path / "dals-runs" / "resume")

    first = start(path, tmp_path, tmp_path / "first.log")
    # Ctrl+C once the first trial's last result row is on disk (one at a time, 30 epochs each: the
    # others are far from done); the deadline is generous, reaching it is a failure, not a race lost
    deadline = time.monotonic() + 600
    while not finished_keys(folder):
        if first.poll() is not None or time.monotonic() > deadline:
            first.kill()
            pytest.fail(f"no trial finished (rc {first.poll()}): {(tmp_path / 'first.log').read_text()[-3000:]}")
        time.sleep(0.2)
    first.send_signal(signal.SIGINT)
    assert wait_or_kill(first, 600) == 130, (tmp_path / "first.log").read_text()
    log = (tmp_path / "first.log").read_text()
    done_before = finished_keys(folder)
    assert 1 <= len(done_before) < 4
    assert f"interrupted: {len(done_before)}/4 finished" in log and "Traceback" not in log
    before = {k: rows for k, rows in trial_results(folder).items() if k in done_before}

    second = start(path, tmp_path, tmp_path / "second.log")
    assert wait_or_kill(second, 900) == 0, (tmp_path / "second.log").read_text()
    log = (tmp_path / "second.log").read_text()
    assert f"resuming, {len(done_before)} finished before" in log

    after = trial_results(folder)
    assert sorted(after) == sorted(t.key for t in spec.trials())
    for key, rows in after.items():
        assert sorted({r["epoch"] for r in rows}) == list(range(1, epochs + 1)), key
        assert rows[-1]["status"] == "finished"
        if key in before:  # not trained again: Ray wrote nothing more for it
            assert rows == before[key]

    parent, children = mlflow_runs(folder)
    assert parent.info.status == "FINISHED"
    assert len(children) == 4  # the resumed trial continued its own run
    for child in children:
        assert child.data.tags[tracking.TAG_STATUS] == "finished"
        assert metric_steps(folder, child) == list(range(1, epochs + 1))


def test_failed_trial_is_tracked_reported_and_exits_1(in_tmp, capsys, monkeypatch):
    # a hub dataset offline: the spec cannot check it (network), so its trial fails once it runs
    # (a missing file: is an error before anything starts, tests/test_spec.py)
    monkeypatch.setenv("DALS_OFFLINE", "1")
    path = write_spec(in_tmp, """
        name: failing
        grid: {strategies: [sgd], datasets: [synthetic, "hf:no-such-org/no-such-data"], seeds: [0]}
        defaults: {epochs: 1, max_train: 500}
        failure: {max_retries: 0}
    """)
    from sweeps.cli import main as cli

    assert cli.main(["sweep", "run", str(path)]) == 1
    out = capsys.readouterr().out
    assert "1/2 finished, 1 failed" in out
    spec, _ = load_spec(path)
    parent, children = mlflow_runs(experiment_dir(spec))
    status = {c.data.tags[tracking.TAG_KEY]: (c.data.tags[tracking.TAG_STATUS], c.info.status)
              for c in children}
    assert status == {"sgd/synthetic/0": ("finished", "FINISHED"),
                      "sgd/hf:no-such-org/no-such-data/0": ("failed", "FAILED")}
    report = (in_tmp / "results" / "failing" / "report.md").read_text()
    assert "2 trials: 1 failed, 1 finished" in report


def test_asha_scheduler_from_the_spec(tmp_path):
    from sweeps.runner.ray_setup import scheduler

    path = write_spec(tmp_path, """
        name: asha
        grid: {strategies: [sgd, adam], datasets: [synthetic], seeds: [0]}
        defaults: {epochs: 6}
        scheduler: {type: asha, grace_period: 2, reduction_factor: 3}
    """)
    spec, _ = load_spec(path)
    asha = scheduler(spec.scheduler, max(t.config().epochs for t in spec.trials()))
    assert (asha._time_attr, asha._max_t, asha._reduction_factor) == ("epoch", 6, 3)
    assert asha._brackets[0]._rungs[-1][0] == 2  # the first rung is at the grace period


def test_asha_sweep_end_to_end_then_fresh(in_tmp):
    """A sweep with ASHA (grace 1, factor 2, one trial at a time so each meets the earlier ones at the
    rung): the trials it stops early are `stopped` in Ray's rows, MLflow and the report, the others run
    all epochs; `--fresh` then discards that run and trains every trial again."""
    path = write_spec(in_tmp, """
        name: asha-e2e
        grid: {strategies: [sgd, adam, lion, dals], datasets: [synthetic], seeds: [0]}
        defaults: {epochs: 3, max_train: 256, max_eval: 128}
        resources: {cpu: 1, max_concurrent: 1}
        scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
    """)
    spec, _ = load_spec(path)
    outcome = run_sweep(spec, path, num_cpus=2)
    folder = experiment_dir(spec)
    results = trial_results(folder)
    epochs = {key: [r["epoch"] for r in rows] for key, rows in results.items()}
    stopped = {k for k, e in epochs.items() if e != [1, 2, 3]}
    assert stopped and len(stopped) < 4, epochs
    assert all(epochs[k] in ([1], [1, 2]) for k in stopped)
    assert outcome.complete and outcome.total == 4
    _, children = mlflow_runs(folder)
    status = {c.data.tags[tracking.TAG_KEY]: c.data.tags[tracking.TAG_STATUS] for c in children}
    assert status == {k: "stopped" if k in stopped else "finished" for k in epochs}
    report = Path(outcome.report).read_text()
    assert f"4 trials: {4 - len(stopped)} finished, {len(stopped)} stopped" in report

    first_ids = {key: rows[0]["trial_id"] for key, rows in results.items()}
    fresh = run_sweep(spec, path, fresh=True, num_cpus=2, report=False)
    assert fresh.finished_before == 0 and fresh.complete and fresh.sweep_id != outcome.sweep_id
    again = trial_results(experiment_dir(spec))
    assert sorted(again) == sorted(results)
    assert all(rows[0]["trial_id"] != first_ids[key] for key, rows in again.items())  # trained anew


def test_progress_eta_from_finished_and_running_epochs():
    """ETA = the epochs still to train over the rate this run trained them at (closed form)."""
    from types import SimpleNamespace

    from sweeps.runner.progress import eta, status_line

    def trial(status: str, epoch: int | None, budget: int | None = 10):
        config = {"trial": {"key": f"k{epoch}", "config": {"epochs": budget}}} if budget else {}
        return SimpleNamespace(status=status, config=config, last_result=None if epoch is None else {"epoch": epoch})

    trials = [trial("TERMINATED", 10), trial("RUNNING", 4), trial("PENDING", None)]
    # 0 + 6 + 10 left, and 2 trials Ray has not made yet at the known trials' mean budget (10)
    assert eta(trials, 5, None, epochs_seen=14, elapsed_s=70.0) == pytest.approx(36 * 70 / 14)
    assert eta(trials, 5, None, epochs_seen=0, elapsed_s=70.0) is None  # no rate before an epoch
    tuning = [trial("RUNNING", 2, budget=None)]  # tuning trials: the budget the callback was given
    assert eta(tuning, 3, 5, epochs_seen=2, elapsed_s=10.0) == pytest.approx((3 + 2 * 5) * 10 / 2)
    line = status_line("q", 70, 5, trials, "eval_accuracy", (0.9, "k10"), eta_s=180)
    assert line == "[q 1:10] 1/5 done · 1 running · 3 pending · best eval_accuracy 0.9000 (k10) · ETA 3:00"
