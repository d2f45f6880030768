"""`dals sweep run|sync|submit` and `dals report`.

Handlers return an exit code; a bad spec raises `SpecError` (a ValueError), which `cli.main` prints
as one `dals: error: ...` line with exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sweeps.cli import jobs
from sweeps.cli.args import EXIT_FAILED_TRIALS, EXIT_INTERRUPTED, shipped_specs
from sweeps.cluster.address import check_address
from sweeps.experiment.folder import read_meta, sweep_folder
from sweeps.redact import redact
from sweeps.spec.sweep import load_spec
from sweeps.train.status import TrialStatus


# ----------------------------------------------------------------------------- dals sweep run


def _sweep_run(args: argparse.Namespace) -> int:
    spec, path = load_spec(args.spec)  # every input is checked before Ray, MLflow or a folder
    if args.address is not None:
        check_address(args.address)
    from sweeps.runner.grid import dry_run, run_sweep  # Ray's start-up, only when running

    if args.dry_run:
        dry_run(spec)
        return 0
    outcome = run_sweep(spec, path, address=args.address, fresh=args.fresh,
                        report=not args.no_report)
    diverged = diverged_count(outcome.folder)
    summary = (f"{outcome.finished}/{outcome.total} finished"
               + (f" ({diverged} diverged)" if diverged else "")
               + f", {outcome.failed} failed "
               f"({outcome.finished_before} before this run), {outcome.wall_s:.1f} s")
    if not outcome.complete:
        print(f"sweep {spec.name} interrupted: {summary}; run the same command again to resume")
        return EXIT_INTERRUPTED
    print(f"sweep {spec.name} done: {summary}")
    if spec.tracking.enabled:
        print(f"browse: `dals ui` (MLflow store {redact(spec.tracking_uri())}, "
              f"experiment {spec.experiment()!r})")
    # a diverged trial is a result (the strategy diverges with these settings), not a crash
    return EXIT_FAILED_TRIALS if outcome.failed else 0


def diverged_count(folder: str) -> int:
    """Trials whose last result says they diverged (Tune counts them as finished)."""
    from sweeps.runner.grid import saved_trials

    return sum((t.last_result or {}).get("status") == TrialStatus.DIVERGED for t in saved_trials(folder))


def _sweep_sync(args: argparse.Namespace) -> int:
    from sweeps.tracking.sync import sync_sweep  # MLflow's start-up, only when syncing

    sync_sweep(sweep_folder(args.sweep))
    return 0


def register_sweep(subparsers: argparse._SubParsersAction) -> None:
    sweep = subparsers.add_parser("sweep", help="run sweeps of strategies x datasets x seeds on Ray Tune")
    actions = sweep.add_subparsers(dest="sweep_command", metavar="ACTION", required=True)
    run = actions.add_parser(
        "run", help="run a sweep spec (resumes an unfinished run of the same spec)",
        description="Run SPEC (a YAML file, or the name of a shipped spec) on local Ray, or on the "
                    "cluster at --address. Running the same spec again resumes it; finished trials "
                    f"are not trained again. Shipped sweep specs: {', '.join(shipped_specs('sweep'))}.")
    run.add_argument("spec", metavar="SPEC", help="a sweep spec file, or a shipped one's name")
    run.add_argument("--address", default=None, help="Ray cluster address (default: local Ray)")
    run.add_argument("--dry-run", action="store_true", help="print the trials and exit")
    run.add_argument("--fresh", action="store_true", help="discard an earlier run of this spec")
    run.add_argument("--no-report", action="store_true", help="skip the report at the end")
    run.set_defaults(func=_sweep_run)
    sync = actions.add_parser(
        "sync", help="record in MLflow what a sweep's Ray results hold and MLflow lacks",
        description="After a tracking outage: record the runs, params, per-epoch metrics and "
                    "final statuses that the sweep's Ray result files hold and its MLflow runs "
                    "lack. SWEEP is a spec (file or shipped name) or a sweep's experiment folder. "
                    "Running it twice records nothing the second time.")
    sync.add_argument("sweep", metavar="SWEEP", help="a spec (file or shipped name) or a sweep's experiment folder")
    sync.set_defaults(func=_sweep_sync)
    jobs.add_submit(actions, "sweep")


# ----------------------------------------------------------------------------- dals report


def _report(args: argparse.Namespace) -> int:
    from sweeps.report.tables import write_report  # pandas and MLflow, only for a report
    from sweeps.tracking import outbox, store, sync

    folder = sweep_folder(args.sweep)
    path = write_report(folder, Path(args.out) if args.out else None)
    sync.upload_report(folder, path.parent)
    print(f"report: {path}")
    meta = read_meta(folder)
    if meta is not None and meta.tracking_uri:  # MLflow down: say the report is not logged there
        line = outbox.unrecorded_line(store.Store(meta.tracking_uri, meta.experiment), folder,
                                      args.sweep)
        if line:
            print(line, file=sys.stderr)
    return 0


def register_report(subparsers: argparse._SubParsersAction) -> None:
    rep = subparsers.add_parser(
        "report", help="(re)write a sweep's report: rankings, epochs to target, regime winners, curves",
        description="SWEEP is a spec (file or shipped name) or a sweep's experiment folder.")
    rep.add_argument("sweep", metavar="SWEEP", help="a spec (file or shipped name) or a sweep's experiment folder")
    rep.add_argument("--out", default=None, help="output folder (default: results/<sweep name>)")
    rep.set_defaults(func=_report)
