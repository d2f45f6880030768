"""`dals sweep submit`, `dals tune submit` and `dals jobs list|status|logs|stop`: Ray Jobs from the
command line (`sweeps.cluster.jobs` does the work)."""
from __future__ import annotations

import argparse
import sys
import time

from sweeps.cluster import jobs as cluster


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
    job_id = cluster.submit(args.kind, args.spec, args.address, shared=args.shared_storage or [],
                            env=_pairs(args.env), run_args=run_args)
    print(job_id)
    if not args.follow:
        print(f"follow it with: dals jobs logs {job_id} --follow", file=sys.stderr)
        return 0
    status = cluster.wait(job_id, args.address)
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


# What submitting a spec again does, once its earlier job has ended (`dals KIND run` on the cluster)
ON_RESUBMIT = {
    "sweep": "it resumes the sweep from the experiment folder on the spec's storage: finished trials "
             "are not trained again, unfinished ones continue from their last checkpoint, each trial "
             "keeps its MLflow run",
    "tune": "it continues the spec's Optuna studies from their storage (tune.storage): only the trials "
            "a study still lacks run, and trials a killed job left running are marked failed and their "
            "params queued again; each job writes a new Ray experiment folder",
}


def add_submit(actions: argparse._SubParsersAction, kind: str) -> None:
    """`dals KIND submit` (KIND sweep or tune), added by that command's own register."""
    p = actions.add_parser(
        "submit", help=f"run a {kind} spec on a Ray cluster as a Ray Job",
        description=f"Submit `dals {kind} run SPEC` as a Ray Job: this checkout is the job's working dir, "
                    "the spec travels with it. Prints the job id (dals-KIND-NAME-HASH, then -2, -3... for "
                    "later submits of the same spec). While a job of this spec is still pending or running, "
                    f"another submit is refused. Submitted again after it ended, {ON_RESUBMIT[kind]}; "
                    "--fresh starts over instead.")
    p.add_argument("spec", metavar="SPEC", help=f"a {kind} spec file, or a shipped one's name")
    p.add_argument("--address", default=None,
                   help=f"the cluster's dashboard, e.g. http://HEAD:8265 (default: ${cluster.ADDRESS_ENVS[0]}, "
                        f"${cluster.ADDRESS_ENVS[1]}, {cluster.DEFAULT_ADDRESS})")
    p.add_argument("--shared-storage", action="append", metavar="DIR",
                   help="a folder mounted on every node, so a local storage path under it is fine (repeatable)")
    p.add_argument("--env", action="append", metavar="KEY=VALUE", help="environment variable for the job")
    p.add_argument("--fresh", action="store_true", help="discard an earlier run of this spec")
    if kind == "sweep":
        p.add_argument("--no-report", action="store_true", help="skip the report at the end")
    p.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    p.set_defaults(func=_submit, kind=kind)


def _status(args: argparse.Namespace) -> int:
    info = cluster.client(args.address).get_job_info(args.job)
    took = f", {((info.end_time or time.time() * 1000) - info.start_time) / 1000:.0f} s" if info.start_time else ""
    print(f"{args.job}: {info.status.value}{took}" + (f" ({info.message})" if info.message else ""))
    return 0


def _logs(args: argparse.Namespace) -> int:
    if args.follow:
        print(f"job {args.job}: {cluster.wait(args.job, args.address)}")
    else:
        print(cluster.client(args.address).get_job_logs(args.job), end="")
    return 0


def _stop(args: argparse.Namespace) -> int:
    stopped = cluster.client(args.address).stop_job(args.job)
    print(f"{args.job}: {'stop requested' if stopped else 'not running'}")
    return 0


def _list(args: argparse.Namespace) -> int:
    jobs = [j for j in cluster.client(args.address).list_jobs() if (j.metadata or {}).get(cluster.META_KIND) or args.all]
    for j in sorted(jobs, key=lambda j: j.start_time or 0):
        print(f"{j.submission_id or j.job_id:<50} {j.status.value:<10} {(j.metadata or {}).get(cluster.META_SPEC, '')}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """`dals jobs list|status|logs|stop`."""
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
    p = actions.add_parser("list", help="the cluster's dals jobs: id, status, spec")
    p.add_argument("--address", default=None, help="the cluster's dashboard (as for submit)")
    p.add_argument("--all", action="store_true", help="also jobs not submitted by dals")
    p.set_defaults(func=_list)

