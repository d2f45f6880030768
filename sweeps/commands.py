"""The sweep service's `dals` subcommands: `sweep run`, `report`, `ui`.

Each `register_*` adds one subcommand to the `dals` parser (sweeps/cli.py collects `REGISTER`).
Handlers return an exit code; a bad spec raises `SpecError` (a ValueError), which cli.main prints
as one `dals: error: ...` line with exit 2.
"""

from __future__ import annotations

import argparse

EXIT_FAILED_TRIALS = 1
EXIT_INTERRUPTED = 130


# ----------------------------------------------------------------------------- dals sweep run


def _sweep_run(args: argparse.Namespace) -> int:
    from sweeps.run import dry_run, run_sweep
    from sweeps.spec import load_spec

    spec, path = load_spec(args.spec)
    if args.dry_run:
        dry_run(spec)
        return 0
    outcome = run_sweep(spec, path, address=args.address, fresh=args.fresh,
                        report=not args.no_report)
    summary = (f"{outcome.finished}/{outcome.total} finished, {outcome.failed} failed "
               f"({outcome.finished_before} before this run), {outcome.wall_s:.1f} s")
    if not outcome.complete:
        print(f"sweep {spec.name} interrupted: {summary}; run the same command again to resume")
        return EXIT_INTERRUPTED
    print(f"sweep {spec.name} done: {summary}")
    if spec.tracking.enabled:
        print(f"browse: `dals ui` (MLflow store {spec.tracking_uri()}, experiment {spec.experiment()!r})")
    return EXIT_FAILED_TRIALS if outcome.failed else 0


def register_sweep(subparsers: argparse._SubParsersAction) -> None:
    sweep = subparsers.add_parser("sweep", help="run sweeps of strategies x datasets x seeds on Ray Tune")
    actions = sweep.add_subparsers(dest="sweep_command", metavar="ACTION", required=True)
    run = actions.add_parser(
        "run", help="run a sweep spec (resumes an unfinished run of the same spec)",
        description="Run SPEC (a YAML file, or the name of a shipped spec: quick, paper, paper-cpu) "
                    "on local Ray, or on the cluster at --address. Running the same spec again "
                    "resumes it; finished trials are not trained again.")
    run.add_argument("spec", metavar="SPEC")
    run.add_argument("--address", default=None, help="Ray cluster address (default: local Ray)")
    run.add_argument("--dry-run", action="store_true", help="print the trials and exit")
    run.add_argument("--fresh", action="store_true", help="discard an earlier run of this spec")
    run.add_argument("--no-report", action="store_true", help="skip the report at the end")
    run.set_defaults(func=_sweep_run)


# ----------------------------------------------------------------------------- dals report


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sweeps.report import make_report, sweep_folder

    path = make_report(sweep_folder(args.sweep), Path(args.out) if args.out else None)
    print(f"report: {path}")
    return 0


def register_report(subparsers: argparse._SubParsersAction) -> None:
    rep = subparsers.add_parser(
        "report", help="(re)write a sweep's report: rankings, epochs to target, regime winners, curves",
        description="SWEEP is a spec (file or shipped name) or a sweep's experiment folder.")
    rep.add_argument("sweep", metavar="SWEEP")
    rep.add_argument("--out", default=None, help="output folder (default: results/<sweep name>)")
    rep.set_defaults(func=_report)


# ----------------------------------------------------------------------------- dals ui


def _ui(args: argparse.Namespace) -> int:
    from sweeps import ui
    from sweeps.spec import load_spec

    spec = load_spec(args.spec, check_trials=False)[0] if args.spec else None
    return ui.serve(ui.store_uri(spec, args.store), port=args.port)


def register_ui(subparsers: argparse._SubParsersAction) -> None:
    from sweeps.ui import DEFAULT_PORT

    ui = subparsers.add_parser("ui", help="start the MLflow UI for the sweeps' tracking store (127.0.0.1)")
    ui.add_argument("--store", default=None, help="MLflow tracking URI (default: sqlite:///./mlflow.db)")
    ui.add_argument("--spec", default=None, help="use this spec's tracking URI")
    ui.add_argument("--port", type=int, default=DEFAULT_PORT)
    ui.set_defaults(func=_ui)


def _register_tune(subparsers: argparse._SubParsersAction) -> None:
    """`dals tune run` and `dals tune export` (sweeps/tune_cli.py)."""
    from sweeps import tune_cli

    tune_cli.register(subparsers)


def _register_jobs(subparsers: argparse._SubParsersAction) -> None:
    """Ray Jobs submission (`dals sweep submit`, `dals jobs ...`): after `sweep`, whose parser it extends."""
    from sweeps import jobs

    jobs.register(subparsers)


REGISTER = [register_sweep, register_report, register_ui, _register_tune, _register_jobs]
