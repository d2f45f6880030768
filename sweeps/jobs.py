"""Sweeps and tuning studies as Ray Jobs on a cluster: `dals sweep submit`, `dals tune submit`,
`dals jobs list|status|logs|stop`.

A submitted job carries this checkout as its working dir (so the cluster runs exactly this code, on
top of the packages its image has installed) and the spec's text in an environment variable (so a
spec file may live anywhere); on the head node it runs `dals sweep run` / `dals tune run`, which
reaches the cluster through the RAY_ADDRESS the job gets. Submission ids are the spec's name and hash
plus a run number, and a spec with a job still pending or running is refused: a second copy would
fight the first over the same experiment folder and MLflow runs.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray.job_submission import JobDetails, JobSubmissionClient

    from sweeps.spec import Spec

KINDS = ("sweep", "tune")
SPEC_ENV = "DALS_JOB_SPEC"  # the spec's YAML text, carried to the cluster with the job
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
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").exists():
        raise ValueError(f"{root} is not a source checkout (no pyproject.toml): submit from the repository")
    return root


def resolve_address(address: str | None) -> str:
    """--address, else $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS, else the local dashboard."""
    from sweeps.cli import check_address

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


def runtime_env(spec_text: str, env: dict[str, str]) -> dict[str, Any]:
    return {"working_dir": str(repo_root()), "excludes": EXCLUDES,
            "env_vars": {**env, SPEC_ENV: spec_text}}


def entrypoint(kind: str, spec_file: Path, run_args: list[str]) -> str:
    """The shell command the job runs on the head node, in the uploaded working dir, with the
    `python` of the cluster's environment (the image's; the local cluster's .venv)."""
    return shlex.join(["python", "-m", "sweeps.jobs", kind, spec_file.name, *run_args])


def check_runnable(kind: str) -> None:
    """`dals KIND run` must exist in this checkout, or the job would fail on the cluster."""
    from sweeps.cli import build_parser

    group = _actions(build_parser()).choices.get(kind)
    if group is None or "run" not in _actions(group).choices:
        raise ValueError(f"`dals {kind} run` is not available in this checkout, so it cannot be submitted")


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
    from sweeps.shared_storage import check_storage_for_address, check_tracking_for_address
    from sweeps.spec import load_spec
    from sweeps.tune_spec import load_tune_spec

    if kind not in KINDS:
        raise ValueError(f"unknown job kind {kind!r}; allowed: {', '.join(KINDS)}")
    check_runnable(kind)
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
    base = base_id(kind, spec)
    sid = next_submission_id(jobs.list_jobs(), base)
    try:
        return jobs.submit_job(
            entrypoint=entrypoint(kind, path, list(run_args)), submission_id=sid,
            runtime_env=runtime_env(path.read_text(), env or {}),
            metadata={META_KIND: kind, META_SPEC: spec.name, META_HASH: spec.digest},
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


# ----------------------------------------------------------------------------- the job's side


def job_main(argv: list[str]) -> int:
    """On the cluster: write the carried spec to a file and run `dals KIND run FILE ...`."""
    from sweeps.cli import main

    kind, name, *rest = argv
    text = os.environ.get(SPEC_ENV)
    if text is None:
        print(f"dals job: ${SPEC_ENV} is not set (this entry point runs inside a submitted job)", file=sys.stderr)
        return 2
    spec_file = Path(tempfile.mkdtemp(prefix="dals-job-")) / name
    spec_file.write_text(text)
    return main([kind, "run", str(spec_file), *rest])


# ----------------------------------------------------------------------------- commands


def _pairs(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--env expects KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _submit(args: argparse.Namespace) -> int:
    run_args = (["--fresh"] if args.fresh else []) + (["--no-report"] if getattr(args, "no_report", False) else [])
    job_id = submit(args.kind, args.spec, args.address, shared=args.shared_storage or [],
                    env=_pairs(args.env), run_args=run_args)
    print(job_id)
    if not args.follow:
        print(f"follow it with: dals jobs logs {job_id} --follow", file=sys.stderr)
        return 0
    status = wait(job_id, args.address)
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def _add_submit(actions: argparse._SubParsersAction, kind: str) -> None:
    p = actions.add_parser(
        "submit", help=f"run a {kind} spec on a Ray cluster as a Ray Job",
        description=f"Submit `dals {kind} run SPEC` as a Ray Job: this checkout is the job's working dir, "
                    "the spec travels with it. Prints the job id. A spec whose job is still running is "
                    "refused; submitting it again later resumes it (same experiment folder).")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--address", default=None,
                   help=f"the cluster's dashboard, e.g. http://HEAD:8265 (default: ${ADDRESS_ENVS[0]}, "
                        f"${ADDRESS_ENVS[1]}, {DEFAULT_ADDRESS})")
    p.add_argument("--shared-storage", action="append", metavar="DIR",
                   help="a folder mounted on every node, so a local storage path under it is fine (repeatable)")
    p.add_argument("--env", action="append", metavar="KEY=VALUE", help="environment variable for the job")
    p.add_argument("--fresh", action="store_true", help="discard an earlier run of this spec")
    if kind == "sweep":
        p.add_argument("--no-report", action="store_true", help="skip the report at the end")
    p.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    p.set_defaults(func=_submit, kind=kind)


def _actions(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _status(args: argparse.Namespace) -> int:
    info = client(args.address).get_job_info(args.job)
    took = f", {((info.end_time or time.time() * 1000) - info.start_time) / 1000:.0f} s" if info.start_time else ""
    print(f"{args.job}: {info.status.value}{took}" + (f" ({info.message})" if info.message else ""))
    return 0


def _logs(args: argparse.Namespace) -> int:
    if args.follow:
        print(f"job {args.job}: {wait(args.job, args.address)}")
    else:
        print(client(args.address).get_job_logs(args.job), end="")
    return 0


def _stop(args: argparse.Namespace) -> int:
    stopped = client(args.address).stop_job(args.job)
    print(f"{args.job}: {'stop requested' if stopped else 'not running'}")
    return 0


def _list(args: argparse.Namespace) -> int:
    jobs = [j for j in client(args.address).list_jobs() if (j.metadata or {}).get(META_KIND) or args.all]
    for j in sorted(jobs, key=lambda j: j.start_time or 0):
        print(f"{j.submission_id or j.job_id:<50} {j.status.value:<10} {(j.metadata or {}).get(META_SPEC, '')}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """`dals sweep submit`, `dals tune submit` (when `dals tune` exists) and `dals jobs ...`.

    Runs after the registers that create `dals sweep` / `dals tune` (argparse refuses a second
    parser of the same name, so this one adds its action to theirs)."""
    if "sweep" not in subparsers.choices:
        raise RuntimeError("sweeps.jobs.register must run after `dals sweep` is registered")
    for kind in KINDS:
        if kind in subparsers.choices:
            _add_submit(_actions(subparsers.choices[kind]), kind)
    jobs = subparsers.add_parser("jobs", help="follow and stop submitted sweeps and tuning jobs")
    actions = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    for name, func, help in (("status", _status, "a job's status"), ("logs", _logs, "a job's output"),
                             ("stop", _stop, "stop a job")):
        p = actions.add_parser(name, help=help)
        p.add_argument("job", metavar="JOB", help="the id `submit` printed")
        p.add_argument("--address", default=None, help="the cluster's dashboard (as for submit)")
        if name == "logs":
            p.add_argument("--follow", action="store_true", help="stream until the job ends")
        p.set_defaults(func=func)
    p = actions.add_parser("list", help="the cluster's dals jobs")
    p.add_argument("--address", default=None)
    p.add_argument("--all", action="store_true", help="also jobs not submitted by dals")
    p.set_defaults(func=_list)


if __name__ == "__main__":
    sys.exit(job_main(sys.argv[1:]))
