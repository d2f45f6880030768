"""`dals search DATASET|SPEC`: which strategy, with which settings, for a dataset."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from sweeps.cluster.address import check_address
from sweeps.redact import redact
from sweeps.spec.common import SpecError
from sweeps.spec.loader import SPECS_DIR, read_yaml, resolve_path
from sweeps.spec.search import SearchSpec, load_search_spec, parse_search_spec

SOURCE = "dals search"
# where a flag's value lands in the spec, so an error names the flag the user typed
FLAGS = {"tune.trials": "--budget-trials", "tune.minutes": "--budget-minutes", "tune.seeds": "--seeds",
         "tune.rerun_seeds": "--rerun-seeds", "tune.top_k": "--top-k", "tune.strategies": "--strategies",
         "tune.concurrency": "--concurrency", "tune.datasets": "DATASET"}
SETTINGS = ("epochs", "max_train", "max_eval", "max_length", "validation", "batch_size", "model", "regime")


def _is_spec_file(ref: str) -> bool:
    """A spec file, or the bare name of a shipped one (`search-trec6`); else a dataset id."""
    return ref.endswith((".yaml", ".yml")) or Path(ref).is_file() or (SPECS_DIR / f"{ref}.yaml").is_file()


PLURAL = {"strategy": "strategies (each at its best settings)", "configuration": "configurations"}


def spec_data(args: argparse.Namespace) -> dict[str, Any]:
    """The search spec the flags describe."""
    tune: dict[str, Any] = {"strategies": args.strategies, "datasets": [args.dataset], "trials": args.budget_trials,
                            "seeds": args.seeds, "top_k": args.top_k, "concurrency": args.concurrency,
                            "rerun_seeds": args.rerun_seeds, "sampler": {"type": "tpe", "seed": args.sampler_seed}}
    if args.no_defaults_first:
        tune["defaults_first"] = False
    if args.rerun_all:
        tune["rerun_overlap"] = False
    if args.rerun_per:
        tune["rerun_per"] = args.rerun_per
    if args.budget_minutes is not None:
        tune["minutes"] = args.budget_minutes
    if args.storage:
        tune["storage"] = args.storage
    defaults = {k: getattr(args, k) for k in SETTINGS if getattr(args, k) is not None}
    # the study is <name>-<dataset>: search-synthetic
    return {"name": args.name or "search", "metric": "val_accuracy", "tune": tune, "defaults": defaults}


def load(args: argparse.Namespace) -> tuple[SearchSpec, Path | None]:
    if _is_spec_file(args.dataset):
        return load_search_spec(args.dataset)
    try:
        return parse_search_spec(spec_data(args), SOURCE), None
    except SpecError as e:
        msg = re.sub(r"tune: (\w+): ", r"tune.\1: ", str(e))  # a cross-field check names its key in the text
        for key, flag in FLAGS.items():
            msg = msg.replace(f"{SOURCE}: {key}", f"{SOURCE}: {flag} ({key})", 1)
        raise SpecError(msg) from None


def dry_run(spec: SearchSpec, say=print) -> None:
    t = spec.tune
    budget = f"{t.trials} trials" + (f" or {t.minutes:g} min, whichever ends first" if t.minutes else "")
    say(f"{spec.name}: search {len(t.strategies)} strategies on {spec.dataset} (regime {spec.search_regime}); "
        f"{budget}, {t.concurrency} at a time; objective: mean {spec.metric} over seeds 0..{t.seeds - 1}")
    pruning = "off" if t.pruning.type == "none" else \
        f"ASHA over epochs (grace {t.pruning.grace_period}, reduction {t.pruning.reduction_factor:g})"
    first = "every strategy at its defaults first, then TPE" if t.defaults_first else f"{t.sampler.type} from the start"
    rerun = " (the best first, the others only within 2 standard errors of its search value)" if t.rerun_overlap else ""
    say(f"  {first}; pruning {pruning}; then the top {t.top_k} {PLURAL[t.rerun_unit]} on fresh seeds "
        f"{t.rerun_seeds}{rerun} (test accuracy mean ± std)")
    settings = {k: v for k, v in spec.settings(spec.dataset).model_dump(exclude_none=True).items() if v != {}}
    say(f"  each trial: {', '.join(f'{k} {v}' for k, v in settings.items())}")
    for s in t.strategies:
        dims = ", ".join(f"{k.split('.', 1)[1]} {d.type}" + (f" [{d.low:g}, {d.high:g}]" if d.type != "categorical"
                                                             else f" {list(d.choices)}") + (" log" if d.log else "")
                         for k, d in spec.space(s).items())
        say(f"    {s}: {dims}")
    say(f"  Optuna storage {redact(spec.optuna_storage_url())}; winner preset {spec.preset_name('<strategy>')}")


def is_search_spec(ref: str) -> bool:
    """Whether spec file `ref` is a search (`tune.strategies`), so `dals tune run` hands it here."""
    try:
        data = read_yaml(resolve_path(ref))
    except (SpecError, OSError):
        return False  # `dals tune run` reports it
    return isinstance(data, dict) and isinstance(data.get("tune"), dict) and "strategies" in data["tune"]


def run(spec: SearchSpec, path: Path | None, *, address: str | None = None, fresh: bool = False,
        dry: bool = False, out_dir: str | None = None) -> int:
    """Run (or dry-run) a checked search spec; `path` None: the flags' spec, kept beside the results."""
    if address is not None:
        check_address(address)
    if dry:
        dry_run(spec)
        return 0
    from sweeps.runner.rerun import run_search  # Ray's and Optuna's start-up, only when running

    if path is None:  # MLflow's parent run holds it too
        import yaml

        path = Path(out_dir or Path("results") / spec.studies()[0].name) / "search-spec.yaml"  # the report's folder
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True), sort_keys=False))
    out = run_search(spec, path, address=address, fresh=fresh, out_dir=Path(out_dir) if out_dir else None)
    w = out.winner
    if w is None:
        print(f"search {spec.name}: no configuration finished within the budget ({out.done} trials done); "
              f"run the same command again to continue; report: {out.report}")
        return 1
    print(f"search {spec.name}: winner {w.strategy} {w.hp}: test {w.test_mean:.4f} ± {w.test_std:.4f} "
          f"(seeds {spec.tune.rerun_seeds}); {out.verdict}")
    print(f"preset: {out.preset} (dalsopt.make({out.preset.stem!r}, model, total_steps=T)); report: {out.report}")
    return 0 if out.done >= spec.tune.trials or spec.tune.minutes else 1


def _run(args: argparse.Namespace) -> int:
    spec, path = load(args)  # every input is checked before Ray, Optuna or MLflow start
    return run(spec, path, address=args.address, fresh=args.fresh, dry=args.dry_run, out_dir=args.out)


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds are whole numbers separated by commas, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "search", help="find the best strategy and its settings for a dataset (Optuna + ASHA on Ray Tune)",
        description="Search the strategies (each with its own space from dalsopt) on DATASET's validation split "
                    "with ASHA over epochs, train the top-k again on fresh seeds (test accuracy mean ± std, "
                    "a verdict), and export the winner as the preset <strategy>@<dataset>. DATASET may also be "
                    "a search spec file (tune.strategies). Running it again continues the study.")
    p.add_argument("dataset", metavar="DATASET|SPEC", help="a dataset id (synthetic, trec6-scratch, file:..) or a spec")
    p.add_argument("--strategies", nargs="+", default=["all"], help="ids or generation names (default: all)")
    p.add_argument("--regime", choices=("scratch", "finetune"), default=None, help="default: the dataset's")
    p.add_argument("--budget-trials", type=int, default=36, help="trials the search may start (default 36)")
    p.add_argument("--budget-minutes", type=float, default=None, help="wall minutes of the search phase")
    p.add_argument("--seeds", type=int, default=2, help="seeds per search trial (0..N-1; default 2)")
    p.add_argument("--rerun-seeds", type=_seeds, default=[100, 101, 102], help="fresh seeds (default 100,101,102)")
    p.add_argument("--top-k", type=int, default=3,
                   help="strategies (--rerun-per configuration: configurations) re-run on the fresh seeds (default 3)")
    p.add_argument("--rerun-per", choices=("strategy", "configuration"), default=None,
                   help="the top-k are k strategies at their best settings (default), or the k best "
                        "configurations (one strategy may fill them)")
    p.add_argument("--rerun-all", action="store_true", help="re-run all the top-k, also runners-up more than "
                   "2 standard errors below the best's search value (default: those are skipped)")
    p.add_argument("--concurrency", type=int, default=2, help="trials at once (default 2)")
    p.add_argument("--sampler-seed", type=int, default=0, help="TPE's seed (default 0)")
    p.add_argument("--no-defaults-first", action="store_true",
                   help="do not start with every strategy at its defaults (the grid's points)")
    for key in SETTINGS[:-1]:
        kind = float if key == "validation" else str if key == "model" else int
        p.add_argument(f"--{key.replace('_', '-')}", dest=key, type=kind, default=None, help="a trial setting")
    p.add_argument("--name", default=None, help="the search's name (default search; its study: <name>-<dataset>)")
    p.add_argument("--storage", default=None, help="Optuna storage (default: the journal beside mlflow.db)")
    p.add_argument("--out", default=None, help="report folder (default results/<study>)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: local Ray)")
    p.add_argument("--fresh", action="store_true", help="delete the study and start over")
    p.add_argument("--dry-run", action="store_true", help="print the strategies, spaces and budget, and exit")
    p.set_defaults(func=_run)
