"""The cluster path end to end on this machine: scripts/local_cluster.py starts PostgreSQL, an MLflow
server on it, a Ray head and a second Ray node (token auth on: this cluster's token file); sweeps go
in through the Ray Jobs API (`dals sweep submit`) and must run on both nodes and be tracked on the
server, once with storage in a bucket (a moto S3 server on 127.0.0.1 whose credentials the nodes
have in their environment, as an instance profile gives them). The cluster is stopped even when a
test fails (the fixture's `finally`, and `stop` works on a half-started cluster too)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from ray._private.authentication_test_utils import reset_auth_token_state

from ray_results import trial_rows
from s3_server import leaks, running_s3
from sweeps.cluster import jobs
from sweeps.tracking import store as tracking

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "local_cluster.py"
JOB_TIMEOUT_S = 300


def dals(*argv: str) -> int:
    """`dals ARGV` in this process (the CLI wires the jobs commands itself)."""
    from sweeps.cli.main import build_parser

    args = build_parser().parse_args(list(argv))
    return args.func(args)


def postgres_missing() -> str | None:
    """Why the cluster cannot start here (no PostgreSQL server binaries), in one line, or None."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("local_cluster_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    try:
        script.pg_bin()
    except RuntimeError as e:
        return f"{e} (`make test` installs them when run as root)"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = postgres_missing()
    if missing:  # every test of this module skips with this one line (pytest -rs groups them)
        pytest.skip(missing)
    # A short folder: Ray's unix sockets live below it (107-byte limit).
    root = Path(tempfile.mkdtemp(prefix="dals-lc-", dir="/tmp"))
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.delenv("RAY_AUTH_TOKEN", raising=False)
        for s3 in running_s3(tmp_path_factory.mktemp("s3")):
            for name, value in s3.env().items():  # every node's environment (the script passes it on)
                mp.setenv(name, value)
            try:
                started = subprocess.run([sys.executable, str(SCRIPT), "start", "--dir", str(root)],
                                         capture_output=True, text=True, timeout=300)
                if started.returncode:
                    pytest.fail(f"the local cluster did not start: {started.stderr[-4000:]}", pytrace=False)
                state = json.loads(started.stdout)
                for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):  # this test's clients use the token
                    mp.setenv(name, state[name])
                reset_auth_token_state()  # Ray reads the mode and token once per process: again now
                yield {**state, "s3": s3}
            finally:
                subprocess.run([sys.executable, str(SCRIPT), "stop", "--dir", str(root)], timeout=180)
                shutil.rmtree(root, ignore_errors=True)
    reset_auth_token_state()  # the environment as it was, for the modules after this one


def finish(job_id: str, address: str) -> tuple[str, str]:
    """Wait for a job; returns (status, logs)."""
    client = jobs.client(address)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not (status := client.get_job_status(job_id)).is_terminal() and time.monotonic() < deadline:
        time.sleep(1)
    return status.value, client.get_job_logs(job_id)


def trial_nodes(address: str, job_id: str) -> set[str]:
    """Node ids where the job's Ray Tune trial actors ran (dead ones included)."""
    from ray.util.state import list_actors

    ray_job = jobs.client(address).get_job_info(job_id).job_id
    actors = list_actors(address=address, filters=[("job_id", "=", ray_job)], detail=True, limit=1000)
    return {a.node_id for a in actors if a.class_name == "ImplicitFunc"}


def node_ids(address: str) -> dict[str, str]:
    """'head' / 'worker' -> node id, told apart by the custom resource each node was started with."""
    from ray.util.state import list_nodes

    out = {}
    for node in list_nodes(address=address, detail=True):
        for role in ("head", "worker"):
            if f"dals_{role}" in node.resources_total:
                out[role] = node.node_id
    return out


def test_a_job_sees_both_nodes(cluster):
    client = jobs.client(cluster["dashboard"])
    job_id = client.submit_job(entrypoint="python -c \"import ray; ray.init(); print(sorted(ray.cluster_resources()))\"")
    status, logs = finish(job_id, cluster["dashboard"])
    assert status == "SUCCEEDED", logs
    assert "'dals_head'" in logs and "'dals_worker'" in logs


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_submitted_sweep_runs_on_both_nodes_and_is_tracked_on_the_server(cluster, tmp_path, where):
    """On this machine's disk, and in a bucket (both nodes write their trials' checkpoints and
    results there, the driver on the head reads them back for the report). The job carries neither
    the S3 secret nor the cluster's token: its runtime env, entrypoint, metadata and logs, as the
    Jobs API returns them, hold neither, and the spec travels as a file, not in the environment."""
    name, s3 = f"cluster-{where}", cluster["s3"]
    bucket = s3.bucket() if where == "bucket" else None
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(textwrap.dedent(f"""
        name: {name}
        grid: {{strategies: [sgd, adam], datasets: [synthetic], seeds: [0, 1]}}
        defaults: {{epochs: 2, max_train: 1000, max_eval: 500}}
        resources: {{cpu: 1}}
        tracking: {{uri: "{cluster['mlflow']}", experiment: {name}}}
        storage: {f"s3://{bucket}/runs" if bucket else tmp_path / 'runs'}
    """))
    address = cluster["dashboard"]
    assert dals("sweep", "submit", str(spec), "--address", address) == 0
    job_id = next(j.submission_id for j in jobs.client(address).list_jobs()
                  if (j.metadata or {}).get(jobs.META_SPEC) == name)
    with pytest.raises(ValueError, match="still (pending|running)"):  # same spec while it runs
        dals("sweep", "submit", str(spec), "--address", address)

    status, logs = finish(job_id, address)
    assert status == "SUCCEEDED", logs[-4000:]
    assert "4/4 finished, 0 failed" in logs

    # Ray: trials ran on the head and on the worker node
    assert trial_nodes(address, job_id) == set(node_ids(address).values())

    # MLflow on PostgreSQL: the parent run, one child per trial under it, the report as artifacts
    store = tracking.Store(cluster["mlflow"], name)
    client = store.client()
    exp_id = store.experiment_id(client)
    parents = client.search_runs([exp_id], f"tags.`{tracking.TAG_ROLE}` = 'sweep'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    _, children = tracking.sweep_runs(store, parent.data.tags[tracking.TAG_SWEEP])
    assert sorted(c.data.tags[tracking.TAG_KEY] for c in children) == [
        "adam/synthetic/0", "adam/synthetic/1", "sgd/synthetic/0", "sgd/synthetic/1"]
    assert all(c.data.tags[tracking.PARENT] == parent.info.run_id and c.info.status == "FINISHED"
               for c in children)
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/report.md" in logged
    assert cluster["mlflow_backend"].startswith("postgresql://")

    objects = s3.objects(bucket) if bucket else {}
    if bucket:  # every trial's results in the bucket, each epoch once
        results = [v for k, v in objects.items() if k.endswith("/result.json")]
        assert len(results) == 4 and all(
            sorted(json.loads(r)["epoch"] for r in v.decode().splitlines()) == [1, 2] for v in results)
    info = jobs.client(address).get_job_info(job_id)
    shown = {"runtime_env": json.dumps(info.runtime_env).encode(), "entrypoint": info.entrypoint.encode(),
             "metadata": json.dumps(info.metadata).encode(), "logs": logs.encode(), **objects}
    token = Path(cluster["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    assert leaks([s3.secret, s3.key_id, token], shown) == []
    assert f"name: {name}" not in json.dumps(info.runtime_env)  # the spec is a file, not env


def test_tune_submit_records_every_trial_once(cluster, tmp_path):
    """A tuning job on the cluster: the Optuna study on PostgreSQL, 2 concurrent trials, each once."""
    import optuna

    spec = tmp_path / "cluster-tune.yaml"
    spec.write_text(textwrap.dedent(f"""
        name: cluster-tune
        metric: eval_accuracy
        mode: max
        tune:
          strategy: dals
          datasets: [synthetic]
          space: {{lr: {{type: float, low: 0.001, high: 0.1, log: true}}}}
          trials: 4
          concurrency: 2
          seeds: 1
          storage: "{cluster['optuna_storage']}"
        defaults: {{epochs: 2, max_train: 500, max_eval: 200}}
        resources: {{cpu: 1}}
        tracking: {{uri: "{cluster['mlflow']}", experiment: cluster-tune}}
        storage: {tmp_path / 'runs'}
    """))
    address = cluster["dashboard"]
    assert dals("tune", "submit", str(spec), "--address", address) == 0
    job_id = next(j.submission_id for j in jobs.client(address).list_jobs()
                  if (j.metadata or {}).get(jobs.META_SPEC) == "cluster-tune")
    status, logs = finish(job_id, address)
    assert status == "SUCCEEDED", logs[-4000:]

    study = optuna.load_study(study_name="cluster-tune-scratch", storage=cluster["optuna_storage"])
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.params["lr"] for t in trials}) == 4  # no trial recorded twice

    store = tracking.Store(cluster["mlflow"], "cluster-tune")
    client = store.client()
    children = client.search_runs([store.experiment_id(client)], f"tags.`{tracking.TAG_ROLE}` = 'trial'")
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)


def test_the_cluster_refuses_clients_without_its_token(cluster):
    probe = "from ray.job_submission import JobSubmissionClient as C; C(%r).list_jobs()" % cluster["dashboard"]
    for env in ({"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_TOKEN": "not-the-token"}):
        run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                             env={**{k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")},
                                  "RAY_AUTH_MODE": "token", **env})
        assert run.returncode != 0 and "AuthenticationError" in run.stderr, (env, run.stderr[-2000:])


def test_jobs_status_logs_stop_and_a_resubmitted_sweep_resumes(cluster, tmp_path, capsys):
    """`dals jobs status|logs|stop` on a running sweep job, stopped once a trial has finished; the
    same `dals sweep submit` again is the next job (`-2`), which resumes: the finished trial is not
    trained again, the other runs to its end. The trials train a wide MLP so that each lasts many
    seconds: with small ones the whole sweep ended before the stop arrived, on a quiet machine."""
    name, address = "cluster-resume", cluster["dashboard"]
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(textwrap.dedent(f"""
        name: {name}
        grid: {{strategies: [sgd, adam], datasets: [synthetic], seeds: [0]}}
        defaults: {{epochs: 12, max_train: 3000, max_eval: 300, model: "mlp:1024,1024,1024"}}
        resources: {{cpu: 1, max_concurrent: 1}}
        tracking: {{uri: "{cluster['mlflow']}", experiment: {name}}}
        storage: {tmp_path / 'runs'}
    """))
    folder = tmp_path / "runs" / name
    assert dals("sweep", "submit", str(spec), "--address", address) == 0
    job_id = capsys.readouterr().out.splitlines()[0]
    assert dals("jobs", "status", job_id, "--address", address) == 0
    assert re.fullmatch(rf"{re.escape(job_id)}: (PENDING|RUNNING).*", capsys.readouterr().out.strip())

    client, deadline = jobs.client(address), time.monotonic() + JOB_TIMEOUT_S
    while not (done := {k for k, rows in result_rows(folder).items() if rows[-1]["status"] == "finished"}):
        assert not client.get_job_status(job_id).is_terminal(), client.get_job_logs(job_id)[-4000:]
        assert time.monotonic() < deadline, "no trial finished in time"
        time.sleep(1)
    assert dals("jobs", "stop", job_id, "--address", address) == 0
    assert capsys.readouterr().out.strip() == f"{job_id}: stop requested"
    status, logs = finish(job_id, address)
    assert status == "STOPPED"
    # stopped like Ctrl+C (Ray's SIGTERM + SIGKILL 3 s later was a crash): the driver said so itself
    assert f"sweep {name} interrupted: " in logs, logs[-4000:]
    assert dals("jobs", "status", job_id, "--address", address) == 0
    assert capsys.readouterr().out.startswith(f"{job_id}: STOPPED")
    assert dals("jobs", "logs", job_id, "--address", address) == 0
    shown = capsys.readouterr().out
    assert shown == client.get_job_logs(job_id) and name in shown
    assert dals("jobs", "stop", job_id, "--address", address) == 0
    assert capsys.readouterr().out.strip() == f"{job_id}: not running"
    before = {k: rows for k, rows in result_rows(folder).items() if k in done}

    assert dals("sweep", "submit", str(spec), "--address", address) == 0
    second = capsys.readouterr().out.splitlines()[0]
    assert second == f"{job_id}-2"
    status, logs = finish(second, address)
    assert status == "SUCCEEDED", logs[-4000:]
    assert f"resuming, {len(done)} finished before" in logs and "2/2 finished, 0 failed" in logs
    after = result_rows(folder)
    assert all(rows[-1]["status"] == "finished" and rows[-1]["epoch"] == 12 for rows in after.values())
    assert all(after[k] == rows for k, rows in before.items())  # not trained again


# ----------------------------------------------------------------------------- loopback and node loss
# The node-loss test stops the worker node for good: it stays the last test of this module.


def test_dashboard_mlflow_and_postgres_listen_on_loopback_only(cluster):
    """The services that would hand this machine to anyone who reaches them bind 127.0.0.1."""
    from urllib.parse import urlsplit

    from sockets import loopback_only

    ports = {"Ray dashboard": urlsplit(cluster["dashboard"]).port,
             "MLflow server": urlsplit(cluster["mlflow"]).port,
             "PostgreSQL": urlsplit(cluster["postgres"]).port}
    assert {name: loopback_only(port) for name, port in ports.items()} == dict.fromkeys(ports, True)


def actor_nodes(address: str, job_id: str) -> dict[int, str]:
    """pid -> node id of the job's Ray Tune trial actors (dead ones included)."""
    from ray.util.state import list_actors

    ray_job = jobs.client(address).get_job_info(job_id).job_id
    if ray_job is None:  # the job's driver has not started yet
        return {}
    actors = list_actors(address=address, filters=[("job_id", "=", ray_job)], detail=True, limit=1000)
    return {a.pid: a.node_id for a in actors if a.class_name == "ImplicitFunc" and a.pid}


def result_rows(folder: Path) -> dict[str, list[dict]]:
    """Trial key -> its result.json rows, in order."""
    return trial_rows(folder)


def test_lost_worker_node_moves_its_trial_to_the_head(cluster, tmp_path):
    """Kill the worker node (SIGKILL, as a machine dies) while a trial trains on it (wide MLPs keep
    the trials training long after Ray's result files reach the storage folder, however busy the
    machine is and however rarely Tune syncs them): Tune's
    FailureConfig (the spec's failure.max_retries, 1 by default) restores that trial from its last
    checkpoint on the head, every trial ends exactly once, and MLflow holds one child run per trial
    with each epoch logged once."""
    from ray.tune import ExperimentAnalysis

    epochs = 8
    spec = tmp_path / "node-loss.yaml"
    spec.write_text(textwrap.dedent(f"""
        name: node-loss
        grid: {{strategies: [sgd, adam], datasets: [synthetic], seeds: [0, 1]}}
        defaults: {{epochs: {epochs}, max_train: 2000, max_eval: 300, model: "mlp:1024,1024,1024"}}
        resources: {{cpu: 1}}
        checkpoint: {{every_epochs: 1}}  # the trial moves from its last epoch's checkpoint
        tracking: {{uri: "{cluster['mlflow']}", experiment: node-loss}}
        storage: {tmp_path / 'runs'}
    """))
    address, folder = cluster["dashboard"], tmp_path / "runs" / "node-loss"
    assert dals("sweep", "submit", str(spec), "--address", address) == 0
    job_id = next(j.submission_id for j in jobs.client(address).list_jobs()
                  if (j.metadata or {}).get(jobs.META_SPEC) == "node-loss")
    worker, head = node_ids(address)["worker"], node_ids(address)["head"]

    def on_worker() -> set[str]:
        """Keys of unfinished trials whose latest epoch ran on the worker node."""
        nodes = actor_nodes(address, job_id)
        return {key for key, rows in result_rows(folder).items()
                if rows[-1]["status"] == "running" and nodes.get(rows[-1]["pid"]) == worker}

    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not (lost := on_worker()):
        status = jobs.client(address).get_job_status(job_id)
        assert not status.is_terminal() and time.monotonic() < deadline, \
            f"no trial was caught training on the worker node ({status})"
        time.sleep(0.3)
    stopped = subprocess.run([sys.executable, str(SCRIPT), "stop-worker", "--dir", cluster["dir"]],
                             capture_output=True, text=True, timeout=120)
    killed_at = time.time()
    assert stopped.returncode == 0, stopped.stderr

    status, logs = finish(job_id, address)
    assert status == "SUCCEEDED", logs[-4000:]
    assert "4/4 finished, 0 failed" in logs and "failed, retrying" in logs

    # Ray: every trial ended once, with every epoch; the lost one finished on the head
    trials = ExperimentAnalysis(str(folder)).trials
    assert sorted(t.config["trial"]["key"] for t in trials) == sorted(result_rows(folder))
    assert len(trials) == 4 and all(t.status == "TERMINATED" for t in trials)
    assert {t.config["trial"]["key"]: t.num_failures for t in trials if t.num_failures} == dict.fromkeys(lost, 1)
    nodes = actor_nodes(address, job_id)
    for key, rows in result_rows(folder).items():
        assert sorted(r["epoch"] for r in rows) == list(range(1, epochs + 1)), key  # none lost or twice
        assert [r["status"] for r in rows].count("finished") == 1, key
        if key in lost:
            after = [r for r in rows if r["timestamp"] > killed_at]
            assert after and {nodes.get(r["pid"]) for r in after} == {head}, key

    # MLflow: one child run per trial, finished, each epoch logged exactly once
    store = tracking.Store(cluster["mlflow"], "node-loss")
    client = store.client()
    children = client.search_runs([store.experiment_id(client)], f"tags.`{tracking.TAG_ROLE}` = 'trial'")
    assert sorted(c.data.tags[tracking.TAG_KEY] for c in children) == sorted(result_rows(folder))
    for child in children:
        assert (child.data.tags[tracking.TAG_STATUS], child.info.status) == ("finished", "FINISHED")
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "eval_accuracy")]
        assert sorted(steps) == list(range(1, epochs + 1)), child.data.tags[tracking.TAG_KEY]
