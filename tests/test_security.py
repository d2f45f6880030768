"""Security defaults, each checked by running the code path: specs are read with YAML's safe loader
(a `!!python` tag is one error line and runs nothing), checkpoints are loaded with
`torch.load(weights_only=True)` (a pickled object is refused, not run), `dals ui` and local Ray keep
their web servers on 127.0.0.1, and a password in a tracking URI never reaches the terminal, MLflow
params, tags or artifacts, or the report."""

from __future__ import annotations

import ast
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

import pytest
import torch

from sockets import free_port, listening, loopback_only
from sweeps.cli import main as cli
from sweeps.tracking import store as tracking
from sweeps.experiment.folder import experiment_dir, start_or_resume
from sweeps.spec.sweep import load_spec

REPO = Path(__file__).resolve().parents[1]
TINY = {"strategy": "sgd", "dataset": "synthetic", "epochs": 1, "max_train": 64, "max_eval": 32}


# ----------------------------------------------------------------------------- YAML


def python_tag_spec(marker: Path) -> str:
    """A spec whose name, read by an unsafe loader, would run `touch MARKER`."""
    return f'name: !!python/object/apply:os.system ["touch {marker}"]\ngrid: {{strategies: [sgd]}}\n'


def only_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dals: error: "), err
    return lines[0]


@pytest.mark.parametrize("command", [["sweep", "run", "--dry-run"], ["tune", "run"]])
def test_spec_with_a_python_tag_is_one_error_line_and_runs_nothing(tmp_path, capsys, command):
    marker = tmp_path / "pwned"
    spec = tmp_path / "evil.yaml"
    spec.write_text(python_tag_spec(marker))
    argv = [*command[:2], str(spec), *command[2:]]
    assert cli.main(argv) == cli.EXIT_BAD_INPUT
    line = only_error_line(capsys.readouterr().err)
    assert str(spec) in line and "python/object" in line
    assert not marker.exists()


def test_tampered_spec_copy_in_a_sweep_folder_is_refused_by_report(tmp_path, capsys, monkeypatch):
    """`dals report FOLDER` reads the folder's spec copy: a tag planted there runs nothing either."""
    monkeypatch.chdir(tmp_path)
    spec_file = tmp_path / "ok.yaml"
    spec_file.write_text("name: ok\ngrid: {strategies: [sgd], datasets: [synthetic], seeds: [0]}\n"
                         "tracking: {enabled: false}\n")
    spec, _ = load_spec(spec_file)
    start_or_resume(spec, spec_file, fresh=False)
    marker = tmp_path / "pwned"
    (Path(experiment_dir(spec)) / "dals-spec.yaml").write_text(python_tag_spec(marker))
    assert cli.main(["report", experiment_dir(spec)]) == cli.EXIT_BAD_INPUT
    assert "python/object" in only_error_line(capsys.readouterr().err)
    assert not marker.exists()


# ----------------------------------------------------------------------------- checkpoints


class Payload:
    """Unpickling this creates `path`: proof that a loader ran code from the file."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_checkpoint_holding_a_pickled_object_is_refused(tmp_path):
    from sweeps.train.trial import CHECKPOINT_FILE, Trial

    trial = Trial(TINY)
    trial.save(tmp_path / "good")
    state = torch.load(tmp_path / "good" / CHECKPOINT_FILE, weights_only=True)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil"
    evil.mkdir()
    torch.save({**state, "history": [Payload(marker)]}, evil / CHECKPOINT_FILE)
    pickle.loads(pickle.dumps(Payload(tmp_path / "probe")))  # the payload does work when unpickled
    assert (tmp_path / "probe").exists()

    with pytest.raises(pickle.UnpicklingError, match="[Ww]eights only"):
        Trial(TINY).restore(evil)
    assert not marker.exists()
    Trial(TINY).restore(tmp_path / "good")  # the same file without the object loads


def torch_load_calls(root: Path) -> list[tuple[str, bool]]:
    """(file:line, passes weights_only=True) for every torch.load(...) call in the repo's code."""
    calls = []
    for path in root.rglob("*.py"):
        if any(part.startswith(".") or part in ("dals-runs", "results") for part in path.relative_to(root).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "load" and getattr(node.func.value, "id", None) == "torch":
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                           and k.value.value is True for k in node.keywords)
                calls.append((f"{path.relative_to(root)}:{node.lineno}", safe))
    return calls


def test_every_torch_load_in_the_repo_is_weights_only():
    """A guard beside the behavioural test: a new torch.load without weights_only=True fails here."""
    calls = torch_load_calls(REPO)
    assert any(where.startswith("sweeps/train/trial.py") for where, _ in calls)
    assert [where for where, safe in calls if not safe] == []


# ----------------------------------------------------------------------------- web servers on 127.0.0.1


def group_cmdlines(pgid: int) -> list[str]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                out.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, IndexError, ValueError):
            continue
    return out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_dals_ui_listens_on_loopback_only_with_the_store_off_its_command_line(tmp_path):
    port = free_port()
    store = f"sqlite:///{tmp_path / 'ui-store.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "sweeps.cli", "ui", "--store", store, "--port", str(port)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        shown = []
        for line in proc.stdout:  # `dals ui` prints its address once the UI answers
            shown.append(line)
            if line.startswith("MLflow UI: "):
                break
        assert proc.poll() is None and shown[-1].strip() == f"MLflow UI: http://127.0.0.1:{port} (Ctrl+C stops it)"
        assert loopback_only(port), listening(port)
        servers = [c for c in group_cmdlines(proc.pid) if "sweeps.cli" not in c]  # MLflow's processes
        assert servers and not any("ui-store.db" in c for c in servers), servers
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_local_ray_starts_no_dashboard():
    import ray

    from sweeps.runner.ray_setup import init_ray

    if ray.is_initialized():
        ray.shutdown()
    taken_before = listening(8265)
    init_ray(None, num_cpus=1)
    try:
        node = ray._private.worker.global_worker.node
        assert not node.address_info.get("webui_url")
        assert listening(8265) == taken_before  # nothing new on Ray's dashboard port
    finally:
        ray.shutdown()


# ----------------------------------------------------------------------------- secrets


@pytest.mark.parametrize("url, shown", [
    ("postgresql://dals:s3cr3t@db:5432/mlflow", "postgresql://dals:***@db:5432/mlflow"),
    ("postgresql+psycopg://dals:p%40ss@10.0.0.5/optuna", "postgresql+psycopg://dals:***@10.0.0.5/optuna"),
    ("http://user:tok@mlflow:5000", "http://user:***@mlflow:5000"),
    ("postgresql://db/optuna?user=dals&password=s3cr3t&sslmode=require",
     "postgresql://db/optuna?user=dals&password=***&sslmode=require"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
])
def test_redact_masks_passwords_and_keeps_the_rest(url, shown):
    from sweeps.redact import redact

    assert redact(f"store {url} down") == f"store {shown} down"


@pytest.fixture
def server(mlflow_server):
    return mlflow_server.ensure_up()


def every_text(folder: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


def refused_in_one_line(argv: list[str], cwd: Path, secret: str, *words: str) -> None:
    """`dals ARGV` exits 2 with one error line holding `words`, and shows no `secret`."""
    refused = subprocess.run([sys.executable, "-m", "sweeps.cli", *argv], cwd=cwd, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert all(w in refused.stderr for w in words), refused.stderr
    assert secret not in refused.stdout + refused.stderr


def run_keeping_ray_logs(argv: list[str], cwd: Path, env: dict[str, str],
                         timeout: float) -> tuple[subprocess.CompletedProcess, str]:
    """`dals ARGV` with Ray's session files in a folder of its own; (the run, their text)."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="dals-sec-", dir="/tmp"))  # short: Ray's socket paths
    try:
        run = subprocess.run([sys.executable, "-m", "sweeps.cli", *argv], cwd=cwd,
                             env={**env, "RAY_TMPDIR": str(ray_tmp)}, capture_output=True, text=True, timeout=timeout)
        return run, every_text(ray_tmp)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_password_in_the_tracking_uri_is_refused_and_the_environment_one_never_shown(server, tmp_path):
    """A password in `tracking.uri` is refused in one line that says where it goes (it would be
    copied into the sweep's folder, its meta and the job a cluster runs); given there, in
    MLFLOW_TRACKING_PASSWORD, the sweep runs and no copy meant for people (terminal, MLflow
    params/tags, the spec artifact, the report, Ray's session logs) holds it. A password in a
    description is masked."""
    secret = f"pw-{uuid.uuid4().hex}"
    uri = server.url.replace("http://", f"http://dals:{secret}@")
    spec = tmp_path / "secret.yaml"
    body = textwrap.dedent(f"""
        name: secret
        description: tracked at {uri}
        grid: {{strategies: [sgd], datasets: [synthetic], seeds: [0]}}
        defaults: {{epochs: 1, max_train: 200, max_eval: 100}}
        tracking: {{uri: "TRACKING", experiment: secret}}
        storage: {tmp_path / 'runs'}
    """)
    spec.write_text(body.replace("TRACKING", uri))
    refused_in_one_line(["sweep", "run", str(spec)], tmp_path, secret, "tracking.uri: the URI holds a password",
                        "MLFLOW_TRACKING_PASSWORD")

    spec.write_text(body.replace("TRACKING", server.url))
    env = {**os.environ, "MLFLOW_TRACKING_USERNAME": "dals", "MLFLOW_TRACKING_PASSWORD": secret}
    run, ray_logs = run_keeping_ray_logs(["sweep", "run", str(spec)], tmp_path, env, 300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    printed = run.stdout + run.stderr
    assert secret not in printed
    assert secret not in ray_logs

    store = tracking.Store(server.url, "secret")
    client = store.client()
    runs = client.search_runs([store.experiment_id(client)], max_results=100)
    assert len(runs) == 2  # the sweep's parent run and its trial
    for r in runs:
        values = [*r.data.params.values(), *r.data.tags.values(), *r.data.params, *r.data.tags]
        assert not [v for v in values if secret in v], r.info.run_name
        artifacts = Path(client.download_artifacts(r.info.run_id, "", str(tmp_path / "dl" / r.info.run_id)))
        assert secret not in every_text(artifacts)
    logged_spec = every_text(tmp_path / "dl")
    assert "tracked at http://dals:***@" in logged_spec  # the spec artifact is there, masked
    assert secret not in every_text(tmp_path / "results") + every_text(tmp_path / "runs")
    assert (tmp_path / "results" / "secret" / "report.md").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_optuna_storage_password_is_refused_in_the_url_and_never_shown_from_the_environment(tmp_path):
    """A password in `tune.storage` is refused in one line naming PGPASSWORD; given there, against a
    PostgreSQL server that checks it, `dals tune run` stores its study there and no copy meant for
    people (terminal, Ray's session logs, MLflow params/tags/artifacts, the run folders) holds it. A
    password in a description is masked."""
    import optuna

    from pg_server import postgres_with_password
    from sweeps.runner.studies import optuna_storage

    secret = f"pw-{uuid.uuid4().hex}"
    with postgres_with_password(secret, ("optuna",)) as base:
        storage = f"{base}/optuna"
        with_password = storage.replace("dals@", f"dals:{secret}@")
        spec = tmp_path / "secret-tune.yaml"
        body = textwrap.dedent(f"""
            name: secret-tune
            description: studies at {with_password}
            metric: eval_accuracy
            tune:
              strategy: sgd
              datasets: [synthetic]
              space: {{lr: {{type: float, low: 0.01, high: 0.1, log: true}}}}
              trials: 2
              concurrency: 1
              seeds: 1
              storage: "STORAGE"
            defaults: {{epochs: 1, max_train: 200, max_eval: 100}}
            storage: {tmp_path / 'runs'}
        """)
        spec.write_text(body.replace("STORAGE", with_password))
        refused_in_one_line(["tune", "run", str(spec)], tmp_path, secret, "tune.storage: the URI holds a password",
                            "PGPASSWORD")

        spec.write_text(body.replace("STORAGE", storage))
        run, ray_logs = run_keeping_ray_logs(["tune", "run", str(spec)], tmp_path,
                                             {**os.environ, "PGPASSWORD": secret}, 600)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        assert secret not in run.stdout + run.stderr and secret not in ray_logs
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("PGPASSWORD", secret)
            study = optuna.load_study(study_name="secret-tune-scratch", storage=optuna_storage(storage))
            assert len(study.trials) == 2 and not [v for v in map(str, study.user_attrs.values()) if secret in v]

    store = tracking.Store(f"sqlite:///{tmp_path / 'mlflow.db'}", "secret-tune")
    client = store.client()
    runs = client.search_runs([store.experiment_id(client)], max_results=100)
    assert len(runs) == 3  # the study's parent run and its two trials
    for r in runs:
        values = [*r.data.params.values(), *r.data.tags.values(), *r.data.params, *r.data.tags]
        assert not [v for v in values if secret in v], r.info.run_name
        artifacts = Path(client.download_artifacts(r.info.run_id, "", str(tmp_path / "dl" / r.info.run_id)))
        assert secret not in every_text(artifacts)
    assert secret not in every_text(tmp_path / "runs") + every_text(tmp_path / "mlruns")
    assert secret.encode() not in (tmp_path / "mlflow.db").read_bytes()
