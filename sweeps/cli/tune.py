"""`dals tune run|export|dashboard|submit`."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from sweeps.cli import jobs, search
from sweeps.cli.args import port, shipped_specs
from sweeps.cluster.address import check_address
from sweeps.redact import redact
from sweeps.spec.common import SpecError
from sweeps.spec.loader import resolve_path
from sweeps.spec.search import load_search_spec
from sweeps.spec.tune import JOURNAL_FILE, TuneSpec, load_tune_spec

PRESET_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"


def _run(args: argparse.Namespace) -> int:
    if search.is_search_spec(args.spec):  # tune.strategies: a strategy search (`dals search SPEC`)
        spec, path = load_search_spec(args.spec)
        return search.run(spec, path, address=args.address, fresh=args.fresh, dry=args.dry_run)
    spec, path = load_tune_spec(args.spec)  # every input is checked before Ray, Optuna or MLflow
    if args.address is not None:
        check_address(args.address)
    if args.dry_run:
        dry_run(spec)
        return 0
    from sweeps.runner.optuna import run_tune  # Ray's and Optuna's start-up, only when running

    outcomes = run_tune(spec, path, address=args.address, fresh=args.fresh)
    short = [o.name for o in outcomes if o.done < o.trials]
    if short:
        print(f"tune {spec.name}: studies {', '.join(short)} are short of {spec.tune.trials} trials; "
              "run the same command again to continue")
        return 1
    print(f"tune {spec.name} done; export a study's best params: `dals tune export STUDY --spec {args.spec}`")
    return 0


def _param(p) -> str:
    """One search-space dimension as Optuna would read it: `float [0.0001, 0.3] log`."""
    if p.type == "categorical":
        return f"categorical {list(p.choices)}"
    return (f"{p.type} [{p.low:g}, {p.high:g}]" + (" log" if p.log else "")
            + (f" step {p.step:g}" if p.step is not None else ""))


def dry_run(spec: TuneSpec, say=print) -> None:
    """What `dals tune run` would do, started nothing: the studies, their datasets and budgets,
    the search space, trial counts and where the studies and runs are stored."""
    t = spec.tune
    studies = spec.studies()
    url = spec.optuna_storage_url()
    local = url if "://" not in url else url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
    state = "" if local is None else " (exists: running again continues its studies)" \
        if Path(local).is_file() else " (new)"
    say(f"{spec.name}: {len(studies)} {'study' if len(studies) == 1 else 'studies'} of {t.strategy} "
        f"(one per {t.study_per}), {t.trials} trials each, {t.concurrency} at a time; a trial is the "
        f"mean {spec.metric} ({spec.mode}) over {t.seeds} seed{'s' if t.seeds != 1 else ''} per dataset")
    for study in studies:
        say(f"  study {study.name}: regime {study.regime}, datasets {', '.join(study.datasets)}")
        for c in study.configs(0, {}):
            sizes = " ".join(f"{k}={getattr(c, k)}" for k in ("max_train", "max_eval", "validation", "max_length")
                             if getattr(c, k) is not None)
            say(f"    {c.dataset}: {c.epochs} epochs, batch {c.batch_size}, model {c.model} {sizes}".rstrip())
    width = max(len(k) for k in t.space)
    say("  search space:")
    for name, p in t.space.items():
        say(f"    {name:<{width}}  {_param(p)}")
    pruning = "off" if t.pruning.type == "none" else f"{t.pruning.type} (grace {t.pruning.grace_period} " \
        f"epochs, reduction {t.pruning.reduction_factor:g})"
    say(f"  sampler {t.sampler.type} (seed {t.sampler.seed}), pruning {pruning}, "
        f"{spec.resources.cpu:g} CPU + {spec.resources.gpu:g} GPU per trial")
    say(f"  Optuna storage {redact(url)}{state}")
    tracking = f"MLflow {redact(spec.tracking_uri())} (experiment {spec.experiment()})" \
        if spec.tracking.enabled else "MLflow off"
    say(f"  {tracking}; Ray results under {spec.storage}")


def _storage_url(spec_ref: str | None, storage: str | None) -> str:
    """--storage, else the tuning spec's Optuna storage, else the working folder's journal."""
    if storage:
        return storage if "://" in storage else str(Path(storage).resolve())
    if spec_ref:
        return load_tune_spec(spec_ref, check_trials=False)[0].optuna_storage_url()
    return str(Path(JOURNAL_FILE).resolve())


def _export(args: argparse.Namespace) -> int:
    from sweeps.runner.dashboard import check_storage

    if args.preset is not None and not re.fullmatch(PRESET_NAME, args.preset):
        raise ValueError(f"--preset {args.preset!r}: a preset name is letters, digits, '_', '.' and '-'")
    url = _storage_url(args.spec, args.storage)
    check_storage(url)
    from sweeps.runner.studies import export_preset  # Optuna, only when exporting

    path = export_preset(args.study, url, args.preset)
    print(f"preset: {path}")
    return 0


def _is_spec(ref: str) -> bool:
    """Whether `ref` names a spec file (a path, or a shipped spec) rather than a study."""
    try:
        resolve_path(ref)
        return True
    except SpecError as exc:
        if "no such spec file" in str(exc):
            return False
        raise


def _dashboard(args: argparse.Namespace) -> int:
    from sweeps.runner.dashboard import serve_dashboard  # Optuna and the dashboard, only here

    if _is_spec(args.target):
        spec = load_tune_spec(args.target, check_trials=False)[0]
        url = args.storage or spec.optuna_storage_url()
        return serve_dashboard(_storage_url(None, url), [s.name for s in spec.studies()], args.port)
    return serve_dashboard(_storage_url(args.spec, args.storage), [args.target], args.port)


def register(subparsers: argparse._SubParsersAction) -> None:
    tune = subparsers.add_parser("tune", help="tune a strategy per regime/dataset with Optuna on Ray Tune")
    actions = tune.add_subparsers(dest="tune_command", metavar="ACTION", required=True)
    run = actions.add_parser(
        "run", help="run a tuning spec (continues its studies when run again)",
        description="Run SPEC's studies (one per regime or dataset) with OptunaSearch on local Ray or "
                    "the cluster at --address. Running it again runs only the trials a study still lacks. "
                    f"Shipped tuning specs: {', '.join(shipped_specs('tune'))}.")
    run.add_argument("spec", metavar="SPEC", help="a tuning spec file, or a shipped one's name")
    run.add_argument("--address", default=None, help="Ray cluster address (default: local Ray)")
    run.add_argument("--dry-run", action="store_true",
                     help="print the studies, search space, trial counts and storage, and exit")
    run.add_argument("--fresh", action="store_true", help="delete the spec's studies and start over")
    run.set_defaults(func=_run)
    exp = actions.add_parser(
        "export", help="write a study's best params as a dalsopt preset (dalsopt/presets/S@P.json)")
    exp.add_argument("study", metavar="STUDY", help="study name (<spec name>-<regime or dataset>)")
    exp.add_argument("--spec", default=None, help="take the Optuna storage from this tuning spec")
    exp.add_argument("--storage", default=None,
                     help=f"Optuna storage: RDB URL or journal file (default: ./{JOURNAL_FILE})")
    exp.add_argument("--preset", default=None, help="preset name (default: the study's regime or dataset)")
    exp.set_defaults(func=_export)
    dash = actions.add_parser(
        "dashboard", help="optuna-dashboard on a tuning spec's studies (127.0.0.1)",
        description="Serve optuna-dashboard on the Optuna storage of a tuning spec (all its studies) or "
                    "of one study, on 127.0.0.1 only (the dashboard has no login: reach it from another "
                    "machine through an SSH tunnel). Ctrl+C stops it.")
    dash.add_argument("target", metavar="SPEC|STUDY",
                      help="a tuning spec (file or shipped name), or a study name (<spec name>-<regime or dataset>)")
    dash.add_argument("--spec", default=None, help="for a STUDY: take the Optuna storage from this tuning spec")
    dash.add_argument("--storage", default=None,
                      help=f"Optuna storage: RDB URL or journal file (default: the spec's, else ./{JOURNAL_FILE})")
    dash.add_argument("--port", type=port, default=8080, help="port on 127.0.0.1 (default 8080)")
    dash.set_defaults(func=_dashboard)
    jobs.add_submit(actions, "tune")
