"""Submitting to a cluster without one: the shared-storage check, submission ids, the runtime env,
the job's entry point and the command wiring."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from ray.job_submission import JobStatus

from sweeps.cluster import jobs
from sweeps.cluster.shared_storage import (check_storage_for_address, check_tracking_for_address,
                                   is_remote_address)

REMOTE = "http://head.example.com:8265"


@pytest.mark.parametrize("address,remote", [
    (None, False), ("", False), ("auto", False), ("local", False), ("127.0.0.1:6379", False),
    ("http://127.0.0.1:8265", False), ("http://localhost:8265", False), ("ray://[::1]:10001", False),
    (REMOTE, True), ("10.0.0.5:6379", True), ("ray://head:10001", True),
])
def test_remote_addresses(address, remote):
    assert is_remote_address(address) is remote


def test_local_storage_is_refused_for_a_remote_cluster_only(monkeypatch, tmp_path):
    monkeypatch.delenv("DALS_SHARED_STORAGE", raising=False)
    check_storage_for_address("dals-runs", None)
    check_storage_for_address("dals-runs", "http://127.0.0.1:8265")
    check_storage_for_address("s3://bucket/runs", REMOTE)
    check_storage_for_address("gs://bucket/runs", REMOTE)
    with pytest.raises(ValueError, match=r"^storage: '/data/runs' is a local path"):
        check_storage_for_address("file:///data/runs", REMOTE)  # a file:// URI is a local path too
    with pytest.raises(ValueError, match=r"^storage: 'dals-runs' is a local path.*--shared-storage") as err:
        check_storage_for_address("dals-runs", REMOTE)
    assert "\n" not in str(err.value)
    check_storage_for_address(str(tmp_path / "runs"), REMOTE, shared=[str(tmp_path)])
    monkeypatch.setenv("DALS_SHARED_STORAGE", f"/elsewhere:{tmp_path}")
    check_storage_for_address(str(tmp_path / "a" / "b"), REMOTE)
    with pytest.raises(ValueError, match=rf"^storage: '{tmp_path}-not-below' is a local path"):
        check_storage_for_address(str(tmp_path) + "-not-below", REMOTE)


def test_file_tracking_is_refused_for_a_remote_cluster():
    check_tracking_for_address(None, None)
    check_tracking_for_address("http://mlflow:5000", REMOTE)
    for uri in (None, "sqlite:///mlflow.db", "file:///tmp/mlruns", "mlruns"):
        with pytest.raises(ValueError, match="^tracking.uri: .*MLflow server"):
            check_tracking_for_address(uri, REMOTE)


def job(sid: str, status: JobStatus) -> SimpleNamespace:
    return SimpleNamespace(submission_id=sid, status=status)


def test_submission_ids_number_reruns_and_refuse_a_running_spec():
    base = "dals-sweep-quick-0123abcd"
    assert jobs.next_submission_id([], base) == base
    assert jobs.next_submission_id([job(base, JobStatus.SUCCEEDED)], base) == f"{base}-2"
    done = [job(base, JobStatus.FAILED), job(f"{base}-2", JobStatus.STOPPED),
            job("dals-sweep-quick-0123abcd-x", JobStatus.RUNNING), job("other", JobStatus.RUNNING)]
    assert jobs.next_submission_id(done, base) == f"{base}-3"
    with pytest.raises(ValueError, match=rf"^{base}-2 for this spec is still running; .*dals jobs stop {base}-2"):
        jobs.next_submission_id([job(base, JobStatus.SUCCEEDED), job(f"{base}-2", JobStatus.RUNNING)], base)
    with pytest.raises(ValueError, match="still pending"):
        jobs.next_submission_id([job(base, JobStatus.PENDING)], base)


def test_runtime_env_uploads_the_checkout_without_environments_or_run_state():
    env = jobs.runtime_env({"A": "1"})
    assert env["working_dir"] == str(jobs.repo_root())
    assert {".venv", ".git", "/mlruns", "/dals-runs", "/results"} <= set(env["excludes"])
    # the spec no longer travels in the job's environment; a stop is Ctrl+C, with time to save
    assert env["env_vars"] == {"A": "1", "RAY_JOB_STOP_SIGNAL": "SIGINT", "RAY_JOB_STOP_WAIT_TIME_S": "120"}
    assert jobs.runtime_env({"RAY_JOB_STOP_WAIT_TIME_S": "600"})["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"] == "600"


@pytest.mark.parametrize("name, value, words", [
    ("AWS_SECRET_ACCESS_KEY", "x", ["--env", "AWS_SECRET_ACCESS_KEY", "looks like a credential"]),
    ("MLFLOW_TRACKING_PASSWORD", "x", ["MLFLOW_TRACKING_PASSWORD"]),
    ("RAY_AUTH_TOKEN", "x", ["RAY_AUTH_TOKEN"]),
    ("MLFLOW_TRACKING_URI", "http://u:pw@mlflow:5000", ["--env MLFLOW_TRACKING_URI", "a password"]),
])
def test_a_credential_in_the_job_environment_is_refused(name, value, words):
    with pytest.raises(ValueError) as err:
        jobs.runtime_env({name: value})
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words) and "pw" not in message.split(";")[0]


def test_the_spec_travels_as_a_file_in_the_working_dir(tmp_path):
    """Ray zips the working dir while `submit_job` runs: the spec is there then, gone after."""
    spec = tmp_path / "elsewhere" / "my spec.yaml"
    spec.parent.mkdir()
    spec.write_text("name: carried\n")
    root = tmp_path / "checkout"
    root.mkdir()
    with jobs.carried_spec(root, "dals-sweep-carried-0123abcd-2", spec) as carried:
        assert carried == f"{jobs.SPEC_DIR}/dals-sweep-carried-0123abcd-2/my spec.yaml"
        assert (root / carried).read_text() == "name: carried\n"
    assert list(root.iterdir()) == []  # nothing left in the checkout
    assert jobs.entrypoint("sweep", carried, ["--fresh"]) == \
        f"python -m sweeps.cli.main job sweep '{carried}' --fresh"


def test_the_job_runs_the_carried_spec(monkeypatch, tmp_path):
    seen = {}
    from sweeps.cli import main as cli

    monkeypatch.setattr(cli, "main", lambda argv: seen.setdefault("argv", argv) and 0)
    monkeypatch.chdir(tmp_path)  # the job's working dir
    carried = tmp_path / jobs.SPEC_DIR / "sid" / "my spec.yaml"
    carried.parent.mkdir(parents=True)
    carried.write_text("name: carried\n")
    relative = str(carried.relative_to(tmp_path))
    assert cli.job_main(["sweep", relative, "--fresh"]) == 0
    assert seen["argv"] == ["sweep", "run", relative, "--fresh"]


def test_a_job_without_its_spec_is_one_line(monkeypatch, tmp_path, capsys):
    from sweeps.cli import main as cli

    monkeypatch.chdir(tmp_path)
    assert cli.job_main(["sweep", ".dals-job/x/missing.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.yaml: no such spec in the job's working dir" in err


def test_commands_attach_to_dals_sweep():
    """Wired by the CLI itself (a test that added them when missing would hide a wiring regression)."""
    from sweeps.cli import jobs as jobs_cli
    from sweeps.cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(["sweep", "submit", "quick", "--address", REMOTE, "--shared-storage", "/mnt"])
    assert (args.func, args.kind, args.address, args.shared_storage) == (jobs_cli._submit, "sweep", REMOTE, ["/mnt"])
    args = parser.parse_args(["tune", "submit", "tune-dals-cpu"])
    assert (args.func, args.kind) == (jobs_cli._submit, "tune")
    assert parser.parse_args(["jobs", "logs", "J", "--follow"]).follow
    assert parser.parse_args(["jobs", "list"]).func is jobs_cli._list


def test_submitting_a_local_path_to_a_remote_cluster_fails_before_any_connection(monkeypatch):
    monkeypatch.delenv("DALS_SHARED_STORAGE", raising=False)
    with pytest.raises(ValueError, match="^storage: 'dals-runs' is a local path"):
        jobs.submit("sweep", "quick", REMOTE)
