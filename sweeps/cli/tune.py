"""`dals tune run|export|submit`."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from sweeps.cli import jobs
from sweeps.cluster.address import check_address
from sweeps.spec.tune import JOURNAL_FILE, load_tune_spec

PRESET_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"


def _run(args: argparse.Namespace) -> int:
    spec, path = load_tune_spec(args.spec)  # every input is checked before Ray, Optuna or MLflow
    if args.address is not None:
        check_address(args.address)
    from sweeps.runner.optuna import run_tune  # Ray's and Optuna's start-up, only when running

    outcomes = run_tune(spec, path, address=args.address, fresh=args.fresh)
    short = [o.name for o in outcomes if o.done < o.trials]
    if short:
        print(f"tune {spec.name}: studies {', '.join(short)} are short of {spec.tune.trials} trials; "
              "run the same command again to continue")
        return 1
    print(f"tune {spec.name} done; export a study's best params: `dals tune export STUDY --spec {args.spec}`")
    return 0


def _export(args: argparse.Namespace) -> int:
    if args.preset is not None and not re.fullmatch(PRESET_NAME, args.preset):
        raise ValueError(f"--preset {args.preset!r}: a preset name is letters, digits, '_', '.' and '-'")
    if args.storage:
        url = args.storage
    elif args.spec:
        url = load_tune_spec(args.spec, check_trials=False)[0].optuna_storage_url()
    else:
        url = str(Path(JOURNAL_FILE).resolve())
    _check_storage_exists(url)
    from sweeps.runner.studies import export_preset  # Optuna, only when exporting

    path = export_preset(args.study, url, args.preset)
    print(f"preset: {path}")
    return 0


def _check_storage_exists(url: str) -> None:
    """Opening a journal file or an SQLite URL creates it: export reads studies, it makes none."""
    file = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None if "://" in url else url
    if file is not None and not Path(file).is_file():
        raise ValueError(f"no Optuna storage at {file}: no study has run there "
                         "(give the tuning spec with --spec, or --storage)")


def register(subparsers: argparse._SubParsersAction) -> None:
    tune = subparsers.add_parser("tune", help="tune a strategy per regime/dataset with Optuna on Ray Tune")
    actions = tune.add_subparsers(dest="tune_command", metavar="ACTION", required=True)
    run = actions.add_parser(
        "run", help="run a tuning spec (continues its studies when run again)",
        description="Run SPEC's studies (one per regime or dataset) with OptunaSearch on local Ray or "
                    "the cluster at --address. Running it again runs only the trials a study still lacks.")
    run.add_argument("spec", metavar="SPEC")
    run.add_argument("--address", default=None, help="Ray cluster address (default: local Ray)")
    run.add_argument("--fresh", action="store_true", help="delete the spec's studies and start over")
    run.set_defaults(func=_run)
    exp = actions.add_parser(
        "export", help="write a study's best params as a dalsopt preset (dalsopt/presets/S@P.json)")
    exp.add_argument("study", metavar="STUDY", help="study name (<spec name>-<regime or dataset>)")
    exp.add_argument("--spec", default=None, help="take the Optuna storage from this tuning spec")
    exp.add_argument("--storage", default=None,
                     help="Optuna storage: RDB URL or journal file (default: ./optuna-journal.log)")
    exp.add_argument("--preset", default=None, help="preset name (default: the study's regime or dataset)")
    exp.set_defaults(func=_export)
    jobs.add_submit(actions, "tune")
