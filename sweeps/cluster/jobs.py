"""Sweeps and tuning studies as Ray Jobs on a cluster (the commands are `sweeps.cli.jobs`).

A submitted job carries this checkout as its working dir (so the cluster runs exactly this code, on
top of the packages its image has installed) and the spec as a file inside it (`carried_spec`, so a
spec file may live anywhere; not in the job's environment, which Ray's Jobs API shows to anyone who
can list jobs); on the head node it runs `dals sweep run` / `dals tune run` on that file
(`sweeps.cli.main.job_main`), which reaches the cluster through the RAY_ADDRESS the job gets.
Credentials never travel with a job: the nodes have their own (instance profile, a Kubernetes
secret, the nodes' environment), and an `--env` that looks like one is refused. Submission ids are
the spec's name and hash plus a run number, and a spec with a job still pending or running is
refused: a second copy would fight the first over the same experiment folder and MLflow runs.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeps.cluster.address import check_address
from sweeps.cluster.shared_storage import check_storage_for_address, check_tracking_for_address
from sweeps.spec.credentials import refuse_credentials, refuse_secret_env
from sweeps.spec.sweep import Spec, load_spec
from sweeps.spec.tune import load_tune_spec

if TYPE_CHECKING:
    from ray.job_submission import JobDetails, JobSubmissionClient

KINDS = ("sweep", "tune")
# in the working dir while it is uploaded: <submission id>/<spec file>. Not in .gitignore: Ray's
# working_dir upload leaves out what .gitignore names
SPEC_DIR = ".dals-job"
JOB_COMMAND = "job"  # `python -m sweeps.cli.main job KIND SPEC_NAME ...`: the job's side
ADDRESS_ENVS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Never uploaded: environments, VCS, caches, local run state (the job writes its own on the cluster).
EXCLUDES = [".git", ".venv", "venv", "env", "__pycache__", "*.pyc", "*.egg-info", ".pytest_cache",
            ".hypothesis", ".mypy_cache", "node_modules", "build", "dist", "/mlruns", "/mlflow.db",
            "/dals-runs", "/results", "/data", "*.pt", "*.ckpt"]
META_KIND, META_SPEC, META_HASH = "dals.kind", "dals.spec", "dals.spec_hash"
POLL_S = 2.0


# ----------------------------------------------------------------------------- pieces


def repo_root() -> Path:
    """The checkout this package runs from: the job's working dir."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").exists():
        raise ValueError(f"{root} is not a source checkout (no pyproject.toml): submit from the repository")
    return root


def resolve_address(address: str | None) -> str:
    """--address, else $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS, else the local dashboard."""
    for name, value in (("--address", address), *((f"${k}", os.environ.get(k)) for k in ADDRESS_ENVS)):
        if value:
            check_address(value, name)  # a typo is one line, not Ray's parse error
            return value if "://" in value else f"http://{value}"
    return DEFAULT_ADDRESS


def client(address: str | None) -> JobSubmissionClient:
    from ray.job_submission import JobSubmissionClient

    url = resolve_address(address)
    try:
        return JobSubmissionClient(url)
    except ConnectionError as exc:
        raise ValueError(f"no Ray dashboard at {url}: {str(exc).splitlines()[0]}") from None


def cluster_hosts(url: str) -> int:
    """How many machines the cluster's alive nodes are on (0 when the state API does not answer)."""
    from ray.util.state import list_nodes

    try:
        return len({n.node_ip for n in list_nodes(address=url, filters=[("state", "=", "ALIVE")])})
    except Exception:  # an older or locked-down dashboard: fall back to the address-based check
        return 0


def base_id(kind: str, spec: Spec) -> str:
    return f"dals-{kind}-{spec.name}-{spec.digest[:8]}"


# How `dals jobs stop` (Ray's job stop) ends a job: Ray sends SIGTERM and SIGKILLs 3 s later, so a
# sweep driver died like a crash (Tune's state as of its last snapshot; a trial finished since then
# counted as unfinished). Ray's job supervisor reads these from the job's env: a stop is Ctrl+C
# (Tune saves its state, the MLflow parent is marked KILLED, "run the same command again to resume"),
# given 2 minutes before the SIGKILL. An `--env` of the same name wins.
STOP_ENV = {"RAY_JOB_STOP_SIGNAL": "SIGINT", "RAY_JOB_STOP_WAIT_TIME_S": "120"}


def runtime_env(env: dict[str, str]) -> dict[str, Any]:
    """The job's runtime env: this checkout (the carried spec in it), the stop settings and the
    `--env` variables, none of which may be a credential (the Jobs API lists a job's environment)."""
    for name, value in env.items():
        refuse_secret_env(name, "--env")
        refuse_credentials(value, f"--env {name}")
    return {"working_dir": str(repo_root()), "excludes": EXCLUDES, "env_vars": {**STOP_ENV, **env}}


@contextlib.contextmanager
def carried_spec(root: Path, submission_id: str, spec_file: Path) -> Iterator[str]:
    """A copy of the spec inside the working dir `root` while the job is submitted (Ray zips and
    uploads the working dir in `submit_job`); yields its path relative to `root`, removes it after."""
    folder = root / SPEC_DIR / submission_id
    folder.mkdir(parents=True, exist_ok=True)
    try:
        (folder / spec_file.name).write_text(spec_file.read_text())
        yield (Path(SPEC_DIR) / submission_id / spec_file.name).as_posix()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            (root / SPEC_DIR).rmdir()  # only when no other submission is under way


def entrypoint(kind: str, spec_path: str, run_args: list[str]) -> str:
    """The shell command the job runs on the head node, in the uploaded working dir, with the
    `python` of the cluster's environment (the image's; the local cluster's .venv): the carried
    spec's path is relative to the working dir."""
    return shlex.join(["python", "-m", "sweeps.cli.main", JOB_COMMAND, kind, spec_path, *run_args])


def _same_spec(jobs: list[JobDetails], base: str) -> list[JobDetails]:
    return [j for j in jobs if j.submission_id and
            (j.submission_id == base or j.submission_id.rsplit("-", 1)[0] == base
             and j.submission_id.rsplit("-", 1)[1].isdigit())]


def next_submission_id(jobs: list[JobDetails], base: str) -> str:
    """`base` the first time, `base-2`, `base-3`... for reruns; ValueError while one is active."""
    mine = _same_spec(jobs, base)
    active = [j for j in mine if not j.status.is_terminal()]
    if active:
        sid = active[0].submission_id
        raise ValueError(f"{sid} for this spec is still {active[0].status.value.lower()}; follow it with "
                         f"`dals jobs logs {sid} --follow` or stop it with `dals jobs stop {sid}`")
    if not mine:
        return base
    runs = [int(j.submission_id.rsplit("-", 1)[1]) if j.submission_id != base else 1 for j in mine]
    return f"{base}-{max(runs) + 1}"


# ----------------------------------------------------------------------------- submit


def submit(kind: str, spec_ref: str, address: str | None, *, shared: list[str] = (),
           env: dict[str, str] | None = None, run_args: list[str] = ()) -> str:
    """Validate the spec here, check it can run on that cluster, submit it; returns the job id."""
    if kind not in KINDS:
        raise ValueError(f"unknown job kind {kind!r}; allowed: {', '.join(KINDS)}")
    spec, path = (load_tune_spec if kind == "tune" else load_spec)(spec_ref)
    url = resolve_address(address)
    check_storage_for_address(spec.storage, url, shared)  # before connecting: fails fast offline
    if spec.tracking.enabled:
        check_tracking_for_address(spec.tracking.uri, url)
    jobs = client(address)
    multi = cluster_hosts(url) > 1
    check_storage_for_address(spec.storage, url, shared, multi_host=multi)
    if spec.tracking.enabled:
        check_tracking_for_address(spec.tracking.uri, url, multi_host=multi)
    renv = runtime_env(env or {})  # a credential in --env is refused before anything is sent
    base = base_id(kind, spec)
    sid = next_submission_id(jobs.list_jobs(), base)
    try:
        with carried_spec(repo_root(), sid, path) as carried:
            return jobs.submit_job(
                entrypoint=entrypoint(kind, carried, list(run_args)), submission_id=sid,
                runtime_env=renv, metadata={META_KIND: kind, META_SPEC: spec.name, META_HASH: spec.digest},
            )
    except RuntimeError as exc:
        if "already exists" in str(exc):  # a concurrent submit of the same spec won the race
            raise ValueError(f"{sid} was just submitted by someone else; see `dals jobs status {sid}`") from None
        raise


def wait(job_id: str, address: str | None, timeout: float | None = None, say=print) -> str:
    """Stream the job's logs until it ends; returns its final status (SUCCEEDED, FAILED, STOPPED)."""
    import asyncio

    jobs = client(address)

    async def tail() -> None:
        async for lines in jobs.tail_job_logs(job_id):
            say(lines, end="")

    try:
        asyncio.run(asyncio.wait_for(tail(), timeout))
    except (asyncio.TimeoutError, RuntimeError):
        pass  # the log stream may close before the job's status settles: poll below
    deadline = None if timeout is None else time.monotonic() + timeout
    while not (status := jobs.get_job_status(job_id)).is_terminal():
        if deadline is not None and time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
    return status.value
