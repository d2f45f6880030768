"""How close `dals search` gets to the best of the full 18-strategy grid, at what share of its compute.

    .venv/bin/python benchmarks/search_efficiency.py --datasets synthetic trec6-scratch --out benchmarks/results/search_efficiency.md

Per dataset, in one run, on the same data and the same fresh seeds:
- the grid (the paper's protocol): all 18 strategies at their regime defaults, each on `--grid-seeds`
  (3 by default, as the paper); its best is the strategy with the highest mean final test accuracy;
- the search: `--budget-trials` trials (strategy + its own space, ASHA over epochs, `--search-seeds`
  seeds each, mean val accuracy), then the top-k (strategies at their best settings; `--rerun-per
  configuration`: points) re-run on the grid's seeds (the best first, a
  runner-up only when its search value is within 2 standard errors of the best's; `--rerun-all`:
  every one of the top-k); its winner's test mean.
Compute is counted in trial-epochs ((configuration, seed) epochs trained); the search's count
includes its re-run. Goal: the winner within 0.5 points of the grid's best at <= 25% of its trial-epochs.
Everything runs in a scratch folder (`--work`), its own MLflow and Optuna storage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def settings(args: argparse.Namespace, dataset: str) -> dict:
    out = {"epochs": args.epochs, "max_train": args.max_train, "max_eval": args.max_eval, "validation": 0.1}
    if dataset.startswith("trec6"):
        out["max_length"] = args.max_length
    return out


def run_grid(args: argparse.Namespace, dataset: str, work: Path) -> tuple[str, float, float, int, float]:
    """(best strategy, its mean test accuracy, std, trial-epochs, wall s)."""
    from sweeps.experiment.folder import experiment_dir
    from sweeps.report.tables import finals, load_epochs
    from sweeps.runner.grid import run_sweep
    from sweeps.spec.sweep import parse_spec

    data = {"name": f"grid-{dataset}", "metric": "eval_accuracy", "mode": "max",
            "grid": {"strategies": "all", "datasets": [dataset], "seeds": args.grid_seeds},
            "defaults": settings(args, dataset), "tracking": {"enabled": False}, "storage": str(work / "runs")}
    spec = parse_spec(data, "grid")
    path = work / f"grid-{dataset}.json"
    path.write_text(json.dumps(data))
    start = time.monotonic()
    run_sweep(spec, path, report=False, num_cpus=args.cpus, say=lambda *a: None)
    wall = time.monotonic() - start
    per_trial = finals(load_epochs(experiment_dir(spec)), "eval_accuracy")
    stats = per_trial.groupby("strategy")["final"].agg(["mean", "std"]).sort_values("mean", ascending=False)
    best = stats.index[0]
    epochs = int(per_trial["epochs"].sum())
    return best, float(stats.loc[best, "mean"]), float(stats.loc[best, "std"]), epochs, wall


def run_search_once(args: argparse.Namespace, dataset: str, work: Path):
    from sweeps.runner.rerun import run_search
    from sweeps.spec.search import parse_search_spec

    data = {"name": "search", "metric": "val_accuracy",
            "tune": {"strategies": ["all"], "datasets": [dataset], "trials": args.budget_trials,
                     "seeds": args.search_seeds, "top_k": args.top_k, "rerun_seeds": args.grid_seeds,
                     "rerun_overlap": not args.rerun_all, "rerun_per": args.rerun_per,
                     "concurrency": args.cpus, "sampler": {"type": "tpe", "seed": 0},
                     "pruning": {"type": "asha", "grace_period": 1, "reduction_factor": args.reduction}},
            "defaults": settings(args, dataset), "tracking": {"enabled": False}, "storage": str(work / "runs")}
    spec = parse_search_spec(data, "search")
    path = work / f"search-{dataset}.json"
    path.write_text(json.dumps(data))
    start = time.monotonic()
    out = run_search(spec, path, num_cpus=args.cpus, out_dir=work / f"report-{dataset}", say=lambda *a: None)
    return out, time.monotonic() - start


HEADER = ["dataset", "grid best (test, mean ± std)", "search winner (test, mean ± std)", "gap (points)",
          "trial-epochs search / grid", "of which search + re-run", "wall s search / grid", "goal met"]


def write_table(args: argparse.Namespace, argv: list[str] | None, rows: list[list[str]]) -> None:
    cmd = "benchmarks/search_efficiency.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"Command: `.venv/bin/python {cmd}`", "",
             f"Settings: epochs {args.epochs}, max_train {args.max_train}, max_eval {args.max_eval}, validation 0.1; "
             f"grid: 18 strategies at their defaults x seeds {args.grid_seeds}; search: {args.budget_trials} trials x "
             f"{args.search_seeds} seed(s) (every strategy at its defaults first, then TPE), ASHA grace 1 reduction "
             f"{args.reduction:g}, top {args.top_k} {args.rerun_per}s re-run on the grid's seeds"
             f"{'' if args.rerun_all else ' (the best first, a runner-up only within 2 standard errors of its search value)'}"
             ". Gap = grid best - search winner, "
             "test accuracy, points.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    text = "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"
    print(text, flush=True)
    if args.out:
        out_path = args.out if args.out.is_absolute() else ROOT / args.out
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["synthetic", "trec6-scratch"])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--max-train", type=int, default=512)
    p.add_argument("--max-eval", type=int, default=500)
    p.add_argument("--max-length", type=int, default=16)
    p.add_argument("--grid-seeds", type=int, nargs="+", default=[100, 101, 102], help="the paper's 3 by default")
    p.add_argument("--search-seeds", type=int, default=1)
    p.add_argument("--budget-trials", type=int, default=12)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--rerun-per", choices=("strategy", "configuration"), default="strategy",
                   help="top-k strategies at their best settings (default) or top-k configurations (protocol 2)")
    p.add_argument("--rerun-all", action="store_true", help="re-run every one of the top-k (the first runs' protocol)")
    p.add_argument("--reduction", type=float, default=3.0)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("/tmp/dals-search-efficiency"))
    p.add_argument("--out", type=Path, default=None, help="write the table (Markdown) here too")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    os.chdir(args.work)  # the run's presets go to dalsopt/presets only through the search: redirect it
    from dalsopt import presets

    presets.DIRECTORY = args.work / "presets"
    import ray

    rows = []
    for dataset in args.datasets:
        out, s_wall = run_search_once(args, dataset, args.work)
        best, g_mean, g_std, g_epochs, g_wall = run_grid(args, dataset, args.work)
        w = out.winner
        s_epochs = out.trial_epochs["search"] + out.trial_epochs["rerun"]
        gap = 100 * (g_mean - w.test_mean) if w else float("nan")
        ratio = s_epochs / g_epochs
        rows.append([dataset, f"{best} {g_mean:.4f} ± {g_std:.4f}",
                     f"{w.strategy} {w.test_mean:.4f} ± {w.test_std:.4f}" if w else "-", f"{gap:+.2f}",
                     f"{s_epochs} / {g_epochs} = {ratio:.0%}",
                     f"{out.trial_epochs['search']} + {out.trial_epochs['rerun']} ({out.trial_epochs['search'] / g_epochs:.0%} + "
                     f"{out.trial_epochs['rerun'] / g_epochs:.0%})",
                     f"{s_wall:.0f} / {g_wall:.0f}",
                     "yes" if w and gap <= 0.5 and ratio <= 0.25 else "no"])
        print(" | ".join(rows[-1]), flush=True)
        print(f"search report: {out.report}", flush=True)
        write_table(args, argv, rows)  # after each dataset: a partial table survives a stopped run
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
