"""Sweeps and tuning with `storage: s3://...` against a real S3 server on 127.0.0.1 (`moto_server`,
started and stopped by the tests; credentials and endpoint only in the environment): a sweep, kill
-9 of the driver and the same command again, `dals report` and `dals sweep sync` after an MLflow
outage, a tuning trial killed and resumed from its checkpoint; and the test's secret in nothing
written, logged, tracked or exported. The bucket, read with boto3, is the ground truth."""

from __future__ import annotations

import io
import json
import os
import pickle
import textwrap
import time
from pathlib import Path

import pytest

from s3_server import S3Server, leaks, mlflow_values, s3, text_files  # noqa: F401 (s3: a fixture)
from spec_files import write_spec
from sweeps.cli import main as cli
from sweeps.experiment.folder import read_meta
from sweeps.spec.sweep import load_spec
from sweeps.tracking import store as tracking
from test_crash_resume import (
    SWEEP_EPOCHS, Driver, SweepWatch, assert_mlflow_once, assert_trained_once, finished,
)

TINY = "max_train: 256, max_eval: 128"


class KeepLogsDriver(Driver):
    """A `Driver` that keeps the text of Ray's session logs (its own temp folder) before cleaning up."""

    def __init__(self, *args, **kwargs) -> None:
        self.ray_files: dict[str, bytes] = {}
        super().__init__(*args, **kwargs)

    def kill(self) -> None:
        if Path(self.ray_tmp).exists():
            self.ray_files = {**self.ray_files, **text_files(Path(self.ray_tmp))}
        super().kill()


def sweep_spec(folder: Path, name: str, storage: str, epochs: int, defaults: str = TINY,
               grid: str = "strategies: [sgd, adam], datasets: [synthetic], seeds: [0, 1]",
               tracking_uri: str | None = None) -> Path:
    track = f'\ntracking: {{uri: "{tracking_uri}", experiment: {name}}}' if tracking_uri else ""
    return write_spec(folder, f"""
        name: {name}
        grid: {{{grid}}}
        defaults: {{epochs: {epochs}, {defaults}}}
        resources: {{cpu: 1}}
        checkpoint: {{every_epochs: 1}}
        storage: {storage}""" + textwrap.indent(track, " " * 8), name=f"{name}.yaml")


# ----------------------------------------------------------------------------- reading the bucket


class Bucket:
    """A sweep's folder in the bucket, read with boto3 (not through the code under test)."""

    def __init__(self, server: S3Server, bucket: str, prefix: str):
        self.s3, self.bucket, self.prefix = server.client(), bucket, prefix.strip("/")

    def keys(self) -> list[str]:
        out = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + "/"):
            out += [o["Key"] for o in page.get("Contents", [])]
        return out

    def read(self, key: str) -> bytes | None:
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None

    def results(self) -> dict[str, list[dict]]:
        """Trial key -> its result.json rows (as `test_crash_resume.results` reads a local folder)."""
        out = {}
        for key in self.keys():
            if key.endswith("/params.json") and key.count("/") == self.prefix.count("/") + 2:
                trial = json.loads(self.read(key) or b"{}").get("trial")
                rows = (self.read(key.rsplit("/", 1)[0] + "/result.json") or b"").decode().splitlines()
                if trial:
                    out[trial["key"]] = [json.loads(r) for r in rows if r.strip()]
        return out

    def checkpoint_epochs(self, member: str = "trial.pt") -> dict[str, int]:
        """Trial folder -> the newest epoch its checkpoints in the bucket hold (read with torch)."""
        import torch

        out: dict[str, int] = {}
        for key in self.keys():
            if "/checkpoint_" in key and key.endswith(member):
                data = self.read(key)
                try:
                    epoch = int(torch.load(io.BytesIO(data or b""), map_location="cpu", weights_only=True)["epoch"])
                except Exception:  # deleted or replaced right now
                    continue
                name = key[len(self.prefix) + 1:].split("/")[0]
                out[name] = max(out.get(name, 0), epoch)
        return out

    def checkpoints_left(self) -> list[str]:
        return [k for k in self.keys() if "/checkpoint_" in k and not k.endswith("/")]


class BucketWatch(SweepWatch):
    """`SweepWatch`'s kill points, read from the bucket (at most every 0.3 s)."""

    def __init__(self, bucket: Bucket, spec) -> None:
        super().__init__(Path("/nonexistent"), spec)
        self.bucket, self._last, self._at = bucket, (set(), {}), 0.0

    def state(self) -> tuple[set[str], dict[str, int]]:
        if time.monotonic() - self._at > 0.3:
            saved = {self.slugs[s]: e for s, e in self.bucket.checkpoint_epochs().items()}
            self._last, self._at = (finished(self.bucket.results()), saved), time.monotonic()
        return self._last


def assert_no_secret(server: S3Server, *blobs: dict[str, bytes]) -> None:
    """Neither the secret key nor the key id of the test's environment is in any of `blobs`."""
    found = leaks([server.secret, server.key_id], {k: v for b in blobs for k, v in b.items()})
    assert found == [], found


# ----------------------------------------------------------------------------- the storage layer


def test_bucket_paths_writes_and_credentials(s3, monkeypatch):
    """Through the storage layer: a URI's ?query stays at its end, state files land only whole (a
    PUT is atomic already; a torn copy is dropped), an emptied checkpoint folder stays, the
    filesystem pickles without the secret, `?endpoint_override=` works without AWS_ENDPOINT_URL,
    and a URI holding a key is refused in one line."""
    import pyarrow.fs

    from sweeps.experiment import storage

    bucket = s3.bucket()
    assert storage.join(f"s3://{bucket}/runs?endpoint_override=h:1&scheme=http", "exp") == \
        f"s3://{bucket}/runs/exp?endpoint_override=h:1&scheme=http"
    fs, path = storage.filesystem(f"s3://{bucket}/runs/exp")
    assert path == f"{bucket}/runs/exp" and not storage.is_local(fs)
    storage.write_text(f"s3://{bucket}/runs/exp", "result.json", '{"epoch": 1}\n')
    with fs.open_output_stream(f"{path}/result.json") as torn:  # a copy of a file being rewritten
        torn.write(b'{"epoch": 1}\n{"epo')
    assert storage.read_text(f"s3://{bucket}/runs/exp", "result.json") == '{"epoch": 1}\n'
    with fs.open_output_stream(f"{path}/t/checkpoint_000001/trial.pt") as f:
        f.write(b"weights")
    fs.delete_dir(f"{path}/t/checkpoint_000001")  # Tune dropping a checkpoint its state may name
    assert fs.get_file_info(f"{path}/t/checkpoint_000001").type == pyarrow.fs.FileType.Directory
    assert storage.entries(fs, f"{path}/t/checkpoint_000001") == []
    storage.remove_dir(fs, f"{path}/t/checkpoint_000001")
    assert storage.entries(fs, f"{path}/t") == [] and storage.subfolders(f"s3://{bucket}/runs/exp") == ["t"]
    assert_no_secret(s3, {"pickled filesystem": pickle.dumps(fs)})

    monkeypatch.delenv("AWS_ENDPOINT_URL")
    uri = f"s3://{bucket}/runs/exp?endpoint_override=127.0.0.1:{s3.port}&scheme=http"
    assert storage.read_text(uri, "result.json") == '{"epoch": 1}\n'

    for bad, what in ((f"s3://{bucket}/runs?secret_key=x&access_key=y", "'secret_key'"),
                      (f"s3://KEY:SECRET@{bucket}/runs", "a password")):
        with pytest.raises(ValueError) as err:
            storage.filesystem(bad)
        line = str(err.value)
        assert what in line and "AWS_SECRET_ACCESS_KEY" in line and "SECRET@" not in line and "\n" not in line


@pytest.mark.parametrize("section, value, where", [
    ("storage", "s3://b/runs?secret_key=abc", "storage"),
    ("tracking", '{uri: "http://dals:pw@127.0.0.1:5000"}', "tracking.uri"),
])
def test_a_spec_holding_a_credential_is_one_line_naming_where_it_goes(tmp_path, section, value, where):
    from cli_harness import fenced, one_line_error, run_cli

    spec = write_spec(tmp_path, f"""
        name: creds
        grid: {{strategies: [sgd], datasets: [synthetic], seeds: [0]}}
        {section}: {value}
    """)
    with fenced():
        verdict = run_cli(["sweep", "run", str(spec)], tmp_path)
    line = one_line_error(verdict, f"{where}: the URI holds", "in the environment")
    assert "abc" not in line and ":pw@" not in line


def test_exported_presets_keep_no_password_or_local_path():
    from sweeps.runner.studies import export_preset, shown_storage

    assert shown_storage("/home/me/work/optuna-journal.log") == "optuna-journal.log"
    assert shown_storage("sqlite:////home/me/optuna.db") == "sqlite:///optuna.db"
    assert shown_storage("postgresql+psycopg://dals@db:5432/optuna") == "postgresql+psycopg://dals@db:5432/optuna"
    with pytest.raises(ValueError, match="^Optuna storage: the URI holds a password.*PGPASSWORD"):
        export_preset("s", "postgresql+psycopg://dals:pw@db:5432/optuna")
    import dalsopt

    for name in dalsopt.names(presets=True):
        if "@" in name:
            path = Path(dalsopt.__file__).parent / "presets" / f"{name}.json"
            storage = json.loads(path.read_text())["source"].get("storage", "")
            assert "/" not in storage, (name, storage)  # a file name, not this machine's path


# ----------------------------------------------------------------------------- a sweep on the bucket


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_sweep_on_a_bucket_finishes_tracked_and_reported_without_the_secret(s3, tmp_path):
    bucket = s3.bucket()
    spec = sweep_spec(tmp_path, "bkt", f"s3://{bucket}/runs", epochs=2)
    driver = KeepLogsDriver(tmp_path, ["sweep", "run", str(spec)], tmp_path / "run.log")
    assert driver.wait(timeout=400) == 0, driver.output()[-3000:]
    assert "done: 4/4 finished, 0 failed" in driver.output()

    folder = Bucket(s3, bucket, "runs/bkt")
    rows = folder.results()
    assert sorted(rows) == ["adam/synthetic/0", "adam/synthetic/1", "sgd/synthetic/0", "sgd/synthetic/1"]
    assert all(sorted(r["epoch"] for r in trial) == [1, 2] for trial in rows.values())
    assert not folder.checkpoints_left()  # finished trials' checkpoints dropped in the bucket too
    assert not list(tmp_path.glob(f"**/{bucket}*"))  # nothing of the bucket written to local disk

    meta = read_meta(f"s3://{bucket}/runs/bkt")
    store = tracking.Store(meta.tracking_uri, meta.experiment)
    parent, children = tracking.sweep_runs(store, meta.sweep_id)
    assert parent.info.status == "FINISHED" and len(children) == 4
    assert all((c.info.status, c.data.tags[tracking.TAG_STATUS]) == ("FINISHED", "finished") for c in children)
    assert "report/report.md" in {a.path for a in store.client().list_artifacts(parent.info.run_id, "report")}
    assert "4 trials: 4 finished" in (tmp_path / "results" / "bkt" / "report.md").read_text()

    assert_no_secret(s3, text_files(tmp_path), s3.objects(bucket), driver.ray_files,
                     {k: v.encode() for k, v in mlflow_values(meta.tracking_uri).items()})


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_sweep_on_a_bucket_killed_twice_finishes_each_trial_once(s3, tmp_path):
    """kill -9 early (a first checkpoint in the bucket, nothing finished) and as the last trials
    finish; the same command again trains each epoch once and logs each once."""
    bucket = s3.bucket()
    spec_file = sweep_spec(tmp_path, "killed", f"s3://{bucket}/runs", SWEEP_EPOCHS,
                           defaults='max_train: 3000, max_eval: 300, model: "mlp:1024,1024,1024"')
    spec, _ = load_spec(spec_file)
    keys = sorted(t.key for t in spec.trials())
    folder = Bucket(s3, bucket, "runs/killed")
    watch = BucketWatch(folder, spec)
    seen: list[dict[str, list[dict]]] = []
    for i, ready in enumerate([watch.early, watch.finishing]):
        watch.run_starts()
        driver = Driver(tmp_path, ["sweep", "run", str(spec_file)], tmp_path / f"run{i}-{ready.__name__}.log")
        driver.kill_when(ready)
        seen.append(folder.results())
        assert len(finished(seen[-1])) < len(keys), f"{ready.__name__}: every trial had finished"
    assert not finished(seen[0]) and len(finished(seen[1])) >= len(keys) - 2

    last = Driver(tmp_path, ["sweep", "run", str(spec_file)], tmp_path / "run2-last.log")
    assert last.wait(timeout=400) == 0, last.output()[-3000:]
    assert f"done: {len(keys)}/{len(keys)} finished, 0 failed" in last.output()
    rows = folder.results()
    assert sorted(rows) == keys and finished(rows) == set(keys)
    assert_trained_once(rows, seen)
    assert not folder.checkpoints_left()
    assert_mlflow_once(f"s3://{bucket}/runs/killed", rows)  # type: ignore[arg-type]
    assert f"{len(keys)} trials: {len(keys)} finished" in (tmp_path / "results" / "killed" / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_report_and_sync_against_the_bucket_after_an_mlflow_outage(s3, mlflow_server, tmp_path, capsys,
                                                                   monkeypatch):
    from test_tracking_outage import assert_complete, sweep_runs

    server = mlflow_server.ensure_up()
    monkeypatch.chdir(tmp_path)  # the report goes under ./results
    bucket = s3.bucket()
    name = f"bkt-outage-{os.getpid()}"
    spec = sweep_spec(tmp_path, name, f"s3://{bucket}/runs", epochs=6, tracking_uri=server.url,
                      grid="strategies: [sgd, adam], datasets: [synthetic], seeds: [0]",
                      defaults='max_train: 2000, max_eval: 200, model: "mlp:512,512"')
    folder = Bucket(s3, bucket, f"runs/{name}")
    driver = Driver(tmp_path, ["sweep", "run", str(spec)], tmp_path / "sweep.log")
    try:
        deadline = time.monotonic() + 300
        while not folder.checkpoint_epochs():  # a trial has saved its first epoch: the server goes
            assert driver.proc.poll() is None and time.monotonic() < deadline, driver.output()[-3000:]
            time.sleep(0.3)
        server.kill()
        assert driver.wait(timeout=400) == 0, driver.output()[-3000:]  # an outage is no failure
    finally:
        driver.kill()
    out = driver.output()
    lines = [line for line in out.splitlines() if "did not record" in line]
    assert len(lines) == 1 and f"dals sweep sync {spec}" in lines[0], out[-3000:]

    server.start()
    capsys.readouterr()
    assert cli.main(["sweep", "sync", str(spec)]) == 0
    assert "recorded 0 metric values" not in capsys.readouterr().out
    rows = folder.results()
    epochs = {k: {int(r["epoch"]): r for r in reversed(trial)} for k, trial in rows.items()}
    assert all(sorted(e) == list(range(1, 7)) for e in epochs.values())
    store, parent, children = sweep_runs(server.url, name)
    assert_complete(store, parent, children, epochs)

    assert cli.main(["report", str(spec)]) == 0  # read from the bucket, logged to the parent again
    report = (tmp_path / "results" / name / "report.md").read_text()
    assert "2 trials: 2 finished" in report
    assert cli.main(["sweep", "sync", str(spec)]) == 0
    assert "recorded 0 metric values, 0 params, 0 tags, 0 run statuses, 0 artifact uploads" in \
        capsys.readouterr().out


# ----------------------------------------------------------------------------- tuning on the bucket


TUNE_EPOCHS = 4
TUNE_SPEC = """\
name: tb
metric: eval_accuracy
tune:
  strategy: dals
  datasets: [synthetic]
  space:
    lr: {type: float, low: 0.003, high: 0.3, log: true}
  trials: 2
  concurrency: 1
  seeds: 1
  sampler: {type: tpe, seed: 0}
defaults: {epochs: EPOCHS, max_train: 3000, max_eval: 300}
resources: {cpu: 1}
storage: STORAGE
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tuning_on_a_bucket_killed_mid_trial_resumes_from_its_checkpoint(s3, tmp_path, monkeypatch):
    """kill -9 once a trial's checkpoint of epoch 1-3 is in the bucket; running again queues that
    trial's params again, and the new trial continues from the killed one's checkpoint in the same
    experiment folder: the epochs it had are reported again, not trained (their seconds are the
    checkpoint's), the rest trained once. The preset exported after holds no path or secret."""
    import optuna
    import torch

    from sweeps.runner.studies import ATTR_RETRY_OF, optuna_storage

    bucket = s3.bucket()
    spec = tmp_path / "tb.yaml"
    spec.write_text(TUNE_SPEC.replace("EPOCHS", str(TUNE_EPOCHS)).replace("STORAGE", f"s3://{bucket}/runs"))
    folder = Bucket(s3, bucket, "runs/tb-scratch")

    def mid_trial() -> bool:
        return any(0 < e < TUNE_EPOCHS for e in folder.checkpoint_epochs("seed-0/trial.pt").values())

    killed = KeepLogsDriver(tmp_path, ["tune", "run", str(spec)], tmp_path / "tune-killed.log")
    killed.kill_when(mid_trial)
    [(trial_dir, _)] = [(d, e) for d, e in folder.checkpoint_epochs("seed-0/trial.pt").items() if e < TUNE_EPOCHS]
    number = int(trial_dir.rsplit("-", 1)[1])
    saved = [k for k in folder.keys() if k.startswith(f"runs/tb-scratch/{trial_dir}/checkpoint_")
             and k.endswith("seed-0/trial.pt")]
    states = [torch.load(io.BytesIO(folder.read(k)), map_location="cpu", weights_only=True) for k in saved]
    history = max(states, key=lambda s: s["epoch"])["history"]  # what the new trial must start from

    again = KeepLogsDriver(tmp_path, ["tune", "run", str(spec)], tmp_path / "tune-again.log")
    assert again.wait(timeout=600) == 0, again.output()[-3000:]
    assert f"trials {number} were left running" in again.output()

    study = optuna.load_study(study_name="tb-scratch", storage=optuna_storage(str(tmp_path / "optuna-journal.log")))
    trials = study.get_trials(deepcopy=False)
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE", "FAIL"]
    [retry] = [t for t in trials if t.user_attrs.get(ATTR_RETRY_OF) == number]
    assert retry.params == next(t for t in trials if t.number == number).params

    prefixes = {k.split("/")[1] for k in Bucket(s3, bucket, "runs").keys()} - {""}  # "": runs/ itself
    assert prefixes == {"tb-scratch"}  # one experiment folder, continued, not a second one
    rows = [json.loads(r) for r in folder.read(f"runs/tb-scratch/tb-scratch-{retry.number}/result.json")
            .decode().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, TUNE_EPOCHS + 1))
    resumed_at = len(history)
    assert 1 <= resumed_at < TUNE_EPOCHS
    assert [r["seconds"] for r in rows[:resumed_at]] == [m["seconds"] for m in history]  # replayed
    assert all(r["seconds"] not in {m["seconds"] for m in history} for r in rows[resumed_at:])

    tracked = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = tracking.Store(tracked, "tb")
    _, children = tracking.sweep_runs(store, study.user_attrs["dals.sweep_id"])
    [run] = [c for c in children if c.data.params.get("optuna_trial") == str(retry.number)]
    steps = [m.step for m in store.client().get_metric_history(run.info.run_id, "eval_accuracy")]
    assert sorted(steps) == list(range(1, TUNE_EPOCHS + 1))

    from dalsopt import presets

    monkeypatch.setattr(presets, "DIRECTORY", tmp_path / "presets")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["tune", "export", "tb-scratch", "--spec", str(spec)]) == 0
    preset = json.loads((tmp_path / "presets" / "dals@scratch.json").read_text())
    assert preset["source"]["storage"] == "optuna-journal.log"
    assert_no_secret(s3, text_files(tmp_path), s3.objects(bucket), killed.ray_files, again.ray_files,
                     {k: v.encode() for k, v in mlflow_values(tracked).items()})
