"""Crashes with nothing lost: `kill -9` of the `dals sweep run` / `dals tune run` driver at points
chosen by watching its storage, and faults injected into trials (an exception, the worker killed).
Running again must finish every trial exactly once, train no recorded epoch twice, and leave MLflow
and the report complete. Drivers run as subprocesses in their own session, with their own Ray temp
folder, so killing them (and whatever Ray processes they started) touches no other Ray cluster."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import pytest

from sweeps.tracking import store as tracking
from sweeps.experiment.faults import Faults, parse_faults
from sweeps.experiment.resume import TrialFolder
from sweeps.experiment.storage import AtomicLocalFiles, storage_filesystem
from sweeps.experiment.folder import read_meta
from sweeps.runner.grid import trial_entry
from sweeps.spec.sweep import load_spec
from ray_results import polled_sweep_env, rows as result_rows
from spec_files import write_spec

OWN_METRICS = ("train_loss", "eval_accuracy", "eval_loss", "seconds", "examples_per_second")
POLL_S = 0.05


# ----------------------------------------------------------------------------- driving a CLI process


def _environ_has(pid: int, marker: bytes) -> bool:
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def _ray_processes(ray_tmp: str) -> list[int]:
    """Processes started under this driver: Ray passes the driver's environment (our RAY_TMPDIR)
    down to its GCS, raylet and workers, and no other cluster on the machine has that folder."""
    marker = f"RAY_TMPDIR={ray_tmp}".encode()
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [pid for pid in pids if _environ_has(pid, marker)]


class Driver:
    """A `dals ...` subprocess: own session (process group), own Ray temp folder, log file."""

    def __init__(self, cwd: Path, args: list[str], log: Path, env: dict[str, str] | None = None):
        self.ray_tmp = tempfile.mkdtemp(prefix="dk", dir="/tmp")  # short: Ray's socket paths
        self.log = log
        environ = polled_sweep_env(RAY_TMPDIR=self.ray_tmp, **(env or {}))  # kill points poll storage
        environ.pop("RAY_ADDRESS", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "sweeps.cli", *args], cwd=cwd, env=environ,
                                     stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text()

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.kill()  # a normal exit leaves nothing; a timeout leaves nothing either

    def kill_when(self, ready: Callable[[], bool], timeout: float = 300) -> None:
        """SIGKILL the driver (its whole process group) and every Ray process it started, as soon
        as `ready()` holds; fails if the driver ends first."""
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"the kill point was not reached (rc {self.proc.returncode}):\n"
                            f"{self.output()[-3000:]}")
            time.sleep(POLL_S)
        self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # ended just now
                pass
            self.proc.wait()
        for _ in range(100):  # workers outside the group: by pid, until none is left
            left = _ray_processes(self.ray_tmp)
            if not left:
                shutil.rmtree(self.ray_tmp, ignore_errors=True)
                return
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        pytest.fail(f"Ray processes of the killed driver are still alive: {_ray_processes(self.ray_tmp)}")


# ----------------------------------------------------------------------------- reading a sweep's storage


def results(folder: Path) -> dict[str, list[dict]]:
    """Trial key -> its result.json rows."""
    out = {}
    for params in folder.glob("*/params.json"):
        key = json.loads(params.read_text())["trial"]["key"]
        file = params.parent / "result.json"
        out[key] = result_rows(file)
    return out


def finished(rows: dict[str, list[dict]]) -> set[str]:
    return {k for k, r in rows.items() if any(row.get("status") == "finished" for row in r)}


def checkpoint_epochs(folder: Path) -> dict[str, int]:
    """Trial folder -> the newest epoch its checkpoints on storage hold (whole ones only)."""
    import torch

    out: dict[str, int] = {}
    for ckpt in folder.glob("*/checkpoint_*/trial.pt"):
        try:
            epoch = int(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["epoch"])
        except Exception:  # being written or deleted right now
            continue
        name = ckpt.parent.parent.name
        out[name] = max(out.get(name, 0), epoch)
    return out


def one_training_per_epoch(rows: dict[str, list[dict]], epochs: int) -> None:
    """Every trial has every epoch, and each epoch was trained once: rows repeated for an epoch
    (reported again after a restore) carry the very same measurements, wall seconds included."""
    for key, trial_rows in rows.items():
        by_epoch: dict[int, set] = {}
        for row in trial_rows:
            by_epoch.setdefault(row["epoch"], set()).add(tuple(row[m] for m in OWN_METRICS))
        assert sorted(by_epoch) == list(range(1, epochs + 1)), key
        trained_twice = {e: v for e, v in by_epoch.items() if len(v) > 1}
        assert not trained_twice, f"{key}: epochs trained more than once: {trained_twice}"


# ----------------------------------------------------------------------------- driver killed: sweep


SWEEP_EPOCHS = 4


class SweepWatch:
    """Kill points, read from the sweep's storage: the checkpoints workers saved and the result
    rows the driver recorded (keyed by trial key)."""

    def __init__(self, folder: Path, spec) -> None:
        self.folder = folder
        self.slugs = {trial_entry(t)["slug"]: t.key for t in spec.trials()}
        self.at_start: tuple[set[str], dict[str, int]] = (set(), {})

    def state(self) -> tuple[set[str], dict[str, int]]:
        saved = {self.slugs[s]: e for s, e in checkpoint_epochs(self.folder).items()}
        return finished(results(self.folder)), saved

    def run_starts(self) -> None:
        self.at_start = self.state()

    def early(self) -> bool:
        """A first checkpoint saved, no trial finished."""
        done, saved = self.state()
        return bool(saved) and not done and max(saved.values()) < SWEEP_EPOCHS

    def mid(self) -> bool:
        """Some trials finished, another mid-way."""
        done, saved = self.state()
        return bool(done) and any(e < SWEEP_EPOCHS and k not in done for k, e in saved.items())

    def finishing(self) -> bool:
        """Most trials done, the last ones under way in this run (their final epochs maybe saved
        but not yet recorded)."""
        done, saved = self.state()
        moved = [k for k, e in saved.items() if k not in done and e > self.at_start[1].get(k, 0)]
        return len(done) >= len(self.slugs) - 2 and bool(moved)


def assert_trained_once(rows: dict[str, list[dict]], seen: list[dict[str, list[dict]]]) -> None:
    """Every epoch of every trial trained once; a trial finished at a kill got nothing new since."""
    one_training_per_epoch(rows, SWEEP_EPOCHS)
    for before in seen:
        for key in finished(before):
            first = {r["epoch"]: [r[m] for m in OWN_METRICS] for r in before[key]}
            assert {r["epoch"]: [r[m] for m in OWN_METRICS] for r in rows[key]} == first, key


def assert_mlflow_once(folder: Path, rows: dict[str, list[dict]]) -> None:
    """One parent run; one finished child run per trial under it, each epoch logged once."""
    meta = read_meta(str(folder))
    store = tracking.Store(meta.tracking_uri, meta.experiment)
    client = store.client()
    every = client.search_runs([store.experiment_id(client)], max_results=1000)
    parents = [r for r in every if r.data.tags.get(tracking.TAG_ROLE) == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in every if r.data.tags.get(tracking.TAG_ROLE) == "trial"]
    assert sorted(c.data.tags[tracking.TAG_KEY] for c in children) == sorted(rows)
    for child in children:
        key = child.data.tags[tracking.TAG_KEY]
        assert child.data.tags[tracking.PARENT] == parents[0].info.run_id
        assert (child.info.status, child.data.tags[tracking.TAG_STATUS]) == ("FINISHED", "finished")
        logged = client.get_metric_history(child.info.run_id, "eval_accuracy")
        assert sorted(m.step for m in logged) == list(range(1, SWEEP_EPOCHS + 1)), key
        assert {m.step: m.value for m in logged} == {r["epoch"]: r["eval_accuracy"] for r in rows[key]}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sweep_killed_three_times_finishes_each_trial_once(tmp_path):
    """kill -9 early (first checkpoint, nothing finished), mid (some finished, others mid-way)
    and at the end (the last trials finishing), one run after the other; the fourth run finishes."""
    import pandas as pd

    spec_file = write_spec(tmp_path, f"""
        name: killed
        grid: {{strategies: [sgd, adam], datasets: [synthetic], seeds: [0, 1]}}
        defaults: {{epochs: {SWEEP_EPOCHS}, max_train: 3000, max_eval: 300, model: "mlp:1024,1024,1024"}}
        resources: {{cpu: 1, max_concurrent: 2}}
        checkpoint: {{every_epochs: 1}}  # the kill points wait for checkpoints
    """)
    spec, _ = load_spec(spec_file)
    keys = sorted(t.key for t in spec.trials())
    folder = tmp_path / "dals-runs" / "killed"
    watch = SweepWatch(folder, spec)
    seen: list[dict[str, list[dict]]] = []
    for i, ready in enumerate([watch.early, watch.mid, watch.finishing]):
        watch.run_starts()
        driver = Driver(tmp_path, ["sweep", "run", str(spec_file)], tmp_path / f"run{i}-{ready.__name__}.log")
        driver.kill_when(ready)
        seen.append(results(folder))
        assert len(finished(seen[-1])) < len(keys), f"{ready.__name__}: every trial had finished"
    assert not finished(seen[0]) and finished(seen[1]) and len(finished(seen[2])) >= len(keys) - 2

    last = Driver(tmp_path, ["sweep", "run", str(spec_file)], tmp_path / "run3-last.log")
    assert last.wait(timeout=400) == 0, last.output()[-3000:]
    assert f"done: {len(keys)}/{len(keys)} finished, 0 failed" in last.output()
    rows = results(folder)
    assert sorted(rows) == keys and finished(rows) == set(keys)
    assert_trained_once(rows, seen)
    assert not list(folder.glob("*/checkpoint_*"))  # dropped once the saved state shows them done
    assert_mlflow_once(folder, rows)
    report = (tmp_path / "results" / "killed" / "report.md").read_text()
    assert f"{len(keys)} trials: {len(keys)} finished" in report
    ranking = pd.read_csv(tmp_path / "results" / "killed" / "ranking.csv")
    assert sorted(ranking["strategy"]) == ["adam", "sgd"] and set(ranking["seeds"]) == {2}


# ----------------------------------------------------------------------------- driver killed: tune


TUNE_TRIALS = 3
TUNE_SPEC = """\
name: tk
metric: eval_accuracy
mode: max
tune:
  strategy: dals
  datasets: [synthetic]
  space:
    lr: {type: float, low: 0.003, high: 0.3, log: true}
    warmup_frac: {type: float, low: 0.0, high: 0.2}
  trials: TRIALS
  concurrency: 2
  seeds: 1
  sampler: {type: tpe, seed: 0}
defaults: {epochs: 2, max_train: 800, max_eval: 300}
resources: {cpu: 1}
"""


def load_study(journal: str):
    import optuna

    from sweeps.runner.studies import optuna_storage

    return optuna.load_study(study_name="tk-scratch", storage=optuna_storage(journal))


def assert_study_complete(trials: list, done_before: list, stale: list) -> None:
    """The requested number of finished trials, the earlier ones among them, none evaluated twice;
    the trials the killed driver left running failed and (some) queued again with their params."""
    from optuna.trial import TrialState

    from sweeps.runner.studies import ATTR_RETRY_OF

    finished_trials = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished_trials) == TUNE_TRIALS
    assert {t.number for t in done_before} <= {t.number for t in finished_trials}
    assert len({tuple(sorted(t.params.items())) for t in finished_trials}) == TUNE_TRIALS
    by_number = {t.number: t for t in trials}
    assert all(by_number[t.number].state == TrialState.FAIL for t in stale)
    retried = {t.user_attrs[ATTR_RETRY_OF]: t for t in trials if ATTR_RETRY_OF in t.user_attrs}
    drawn = {t.number for t in stale if set(t.params) == {"lr", "warmup_frac"}}  # not killed mid-ask
    assert set(retried) <= drawn and len(retried) == min(len(drawn), TUNE_TRIALS - len(done_before))
    assert all(retried[n].params == by_number[n].params for n in retried)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def assert_tune_mlflow(tmp_path: Path, study, stale: list) -> None:
    """One parent run; one finished child run per finished trial (by Optuna number) holding its
    value; the runs of the trials the killed driver left running ended as interrupted."""
    from optuna.trial import TrialState

    from sweeps.runner.studies import ATTR_SWEEP, OPTUNA_TRIAL

    store = tracking.Store(f"sqlite:///{tmp_path / 'mlflow.db'}", "tk")
    parent, children = tracking.sweep_runs(store, study.user_attrs[ATTR_SWEEP])
    assert parent is not None and parent.info.status == "FINISHED"
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    done = sorted(n for n, t in trials.items() if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
    ok = {int(c.data.params[OPTUNA_TRIAL]): c for c in children if c.info.status == "FINISHED"}
    assert sorted(ok) == done and len(ok) == len([c for c in children if c.info.status == "FINISHED"])
    assert all(c.data.metrics["eval_accuracy"] == pytest.approx(trials[n].value) for n, c in ok.items())
    others = [c for c in children if c.info.status != "FINISHED"]
    assert all((c.info.status, c.data.tags[tracking.TAG_STATUS]) == ("KILLED", "interrupted") for c in others)
    assert {int(c.data.params[OPTUNA_TRIAL]) for c in others} <= {t.number for t in stale}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tune_killed_mid_study_finishes_the_requested_trials(tmp_path):
    """kill -9 with one trial finished and another running; running again completes the study."""
    from optuna.trial import TrialState

    spec_file = tmp_path / "tune.yaml"
    spec_file.write_text(TUNE_SPEC.replace("TRIALS", str(TUNE_TRIALS)))
    journal = str(tmp_path / "optuna-journal.log")

    def mid_study() -> bool:
        try:
            states = [t.state for t in load_study(journal).get_trials(deepcopy=False)]
        except (KeyError, OSError, ValueError):  # not created yet
            return False
        return TrialState.COMPLETE in states and TrialState.RUNNING in states

    Driver(tmp_path, ["tune", "run", str(spec_file)], tmp_path / "tune-killed.log").kill_when(mid_study)
    killed = load_study(journal).get_trials(deepcopy=False)
    stale = [t for t in killed if t.state == TrialState.RUNNING]
    done_before = [t for t in killed if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert stale and 1 <= len(done_before) < TUNE_TRIALS

    again = Driver(tmp_path, ["tune", "run", str(spec_file)], tmp_path / "tune-again.log")
    assert again.wait(timeout=400) == 0, again.output()[-3000:]
    out, remaining = again.output(), TUNE_TRIALS - len(done_before)
    assert f"{len(done_before)}/{TUNE_TRIALS} trials done, running {remaining}" in out
    for n in range(1, remaining + 1):  # progress: a line as each trial ends (not a terminal)
        assert f"{n}/{remaining} done" in out, out
    study = load_study(journal)
    assert_study_complete(study.get_trials(deepcopy=False), done_before, stale)
    assert_tune_mlflow(tmp_path, study, stale)


# ----------------------------------------------------------------------------- faults inside trials


FAULT_EPOCHS = 4


def reference_history(config: dict) -> list[dict]:
    """The same trial run here, uninterrupted, on one thread as in a 1-CPU Ray worker."""
    import torch

    from sweeps.train.trial import run_trial

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return list(run_trial(config))
    finally:
        torch.set_num_threads(threads)


def assert_same_as_uninterrupted(rows: dict[str, list[dict]], spec) -> None:
    """Each trial's curve equals, to the bit, the same trial run without a fault. An epoch redone
    after a fault between checkpoints may have its row twice, the same (`one_training_per_epoch`);
    its first row is its curve's, as in the report and MLflow."""
    for trial in spec.trials():
        expected = reference_history(trial.config())
        first: dict[int, dict] = {}
        for row in rows[trial.key]:
            first.setdefault(row["epoch"], row)
        got = [first[e] for e in sorted(first)]
        for metric in ("train_loss", "eval_accuracy", "eval_loss", "lr_bottom", "lr_top"):
            assert [r[metric] for r in got] == [m[metric] for m in expected], (trial.key, metric)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_trial_exception_and_killed_worker_resume_from_checkpoint_exactly(tmp_path):
    """One trial raises after epoch 2, the other's worker is SIGKILLed after epoch 3, checkpoints
    every 2 epochs: each is retried once from its last checkpoint (none yet, epoch 2's) and ends
    as if nothing had happened, epoch 1 of the first reported again as it first was."""
    spec_file = write_spec(tmp_path, f"""
        name: faults
        grid: {{strategies: [sgd, adam], datasets: [synthetic], seeds: [3]}}
        defaults: {{epochs: {FAULT_EPOCHS}, max_train: 600, max_eval: 300}}
        resources: {{cpu: 1, max_concurrent: 2}}
        failure: {{max_retries: 1}}
        checkpoint: {{every_epochs: 2}}
    """)
    spec, _ = load_spec(spec_file)
    faults = "exception@2:sgd/synthetic/3,kill@3:adam/synthetic/3"
    driver = Driver(tmp_path, ["sweep", "run", str(spec_file)], tmp_path / "faults.log",
                    env={"DALS_FAULT": faults})
    assert driver.wait(timeout=400) == 0, driver.output()[-3000:]
    out = driver.output()
    assert "trial sgd/synthetic/3 failed, retrying" in out and "InjectedFault" in out
    assert "trial adam/synthetic/3 failed, retrying" in out

    folder = tmp_path / "dals-runs" / "faults"
    assert (folder / "sgd-synthetic-s3" / "dals-fault-exception@2").exists()
    assert (folder / "adam-synthetic-s3" / "dals-fault-kill@3").exists()
    from ray.tune import ExperimentAnalysis

    failures = {t.config["trial"]["key"]: t.run_metadata.num_failures
                for t in ExperimentAnalysis(str(folder)).trials}
    assert failures == {"sgd/synthetic/3": 1, "adam/synthetic/3": 1}

    rows = results(folder)
    one_training_per_epoch(rows, FAULT_EPOCHS)
    assert_same_as_uninterrupted(rows, spec)

    meta = read_meta(str(folder))
    _, children = tracking.sweep_runs(tracking.Store(meta.tracking_uri, meta.experiment), meta.sweep_id)
    assert sorted((c.data.tags[tracking.TAG_KEY], c.data.tags[tracking.TAG_STATUS]) for c in children) == [
        ("adam/synthetic/3", "finished"), ("sgd/synthetic/3", "finished")]


# ----------------------------------------------------------------------------- the pieces, quickly


def test_fault_spec_parses_and_rejects_typos():
    assert parse_faults("exception@2, kill@3:sgd/synthetic/0") == [
        parse_faults("exception@2")[0], parse_faults("kill@3:sgd/synthetic/0")[0]]
    assert parse_faults("kill@3:sgd/synthetic/0")[0].key == "sgd/synthetic/0"
    for bad in ("boom@2", "kill@0", "kill", "exception@x"):
        with pytest.raises(ValueError, match="DALS_FAULT"):
            parse_faults(bad)


def test_fault_fires_once_per_trial(tmp_path):
    import pyarrow.fs

    folder = TrialFolder(pyarrow.fs.LocalFileSystem(), str(tmp_path))
    faults = Faults("sgd/synthetic/0", folder, parse_faults("exception@2:sgd/synthetic/0,exception@1:other"))
    faults.after_epoch(1)  # the epoch-1 fault is another trial's
    with pytest.raises(RuntimeError, match="injected exception after epoch 2"):
        faults.after_epoch(2)
    faults.after_epoch(2)  # the retry: the marker says it fired
    assert (tmp_path / "dals-fault-exception@2").exists()


def test_storage_writes_appear_whole(tmp_path):
    """Through the sweep's storage filesystem a file being written leaves the old one in place
    (a kill then loses the new version, not both), a torn JSON copy never replaces a whole one, an
    old checkpoint Tune drops leaves its (empty) folder, and it pickles for Ray's workers."""
    import pickle

    fs = storage_filesystem(str(tmp_path))
    target = tmp_path / "result.json"
    target.write_text('{"epoch": 1}\n')
    stream = fs.open_output_stream(str(target))
    stream.write(b'{"epoch": 1}\n{"epoch": 2}\n')
    assert target.read_text() == '{"epoch": 1}\n'
    stream.close()
    assert target.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
    assert not [p for p in tmp_path.iterdir() if p.name != "result.json"]  # no temporary left
    with fs.open_output_stream(str(target)) as torn:  # a copy of a file being rewritten: cut short
        torn.write(b'{"epoch": 1}\n{"epo')
    with fs.open_output_stream(str(tmp_path / "state.json")) as empty:
        empty.write(b"")
    assert target.read_text() == '{"epoch": 1}\n{"epoch": 2}\n' and not (tmp_path / "state.json").exists()
    checkpoint = tmp_path / "checkpoint_000001"
    (checkpoint / "sub").mkdir(parents=True)
    (checkpoint / "trial.pt").write_bytes(b"x")
    fs.delete_dir(str(checkpoint))  # Tune dropping an old checkpoint its saved state may still name
    assert checkpoint.is_dir() and not any(checkpoint.iterdir())
    checkpoint.rmdir()
    again = pickle.loads(pickle.dumps(fs))
    assert again.equals(fs) and isinstance(again.handler, AtomicLocalFiles)
    # a file:// URI is the same local disk (a bucket's wrapper: tests/test_bucket_storage.py)
    assert isinstance(storage_filesystem(f"file://{tmp_path}").handler, AtomicLocalFiles)
