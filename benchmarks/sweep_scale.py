"""Per-trial cost of a sweep as it grows: `dals sweep run` at 36 and 180 trials (1,000 with --large)
next to bare Ray Tune (`reuse_actors=True`, trivial trials that import torch and report twice), in
one run, so machine load hits every row alike.

Each sweep is 18 strategies x N/18 seeds on `synthetic`, 2 epochs of 256 examples (~0.05 s of
training a trial), 2 trial slots, MLflow on (SQLite), fresh, in a scratch working folder. Per row:
wall time per trial, the driver process's own CPU (user + sys, `getrusage(RUSAGE_SELF)` at its exit:
every thread of the driver, none of Ray's processes) per trial, the CPU of every process the run
left behind (`RUSAGE_CHILDREN`: the driver and the Ray processes it reaped, trials included), and the growth of that per-trial
CPU from the smallest sweep to each larger one. Goals (issue 16): wall per trial <= 2x bare Ray
Tune's, driver CPU <= 0.2 s per trial, growth 36 -> 180 <= 1.2x.

    python benchmarks/sweep_scale.py [--trials 36 180] [--large] [--keep DIR] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STRATEGIES = 18
WALL_GOAL, CPU_GOAL, GROWTH_GOAL = 2.0, 0.2, 1.2

# Runs `main(argv)` in this process and writes its own CPU (all threads) to RUSAGE on exit.
_MEASURED = """
import atexit, json, resource, sys
def _done():
    r = resource.getrusage(resource.RUSAGE_SELF)
    open({out!r}, "w").write(json.dumps({{"user": r.ru_utime, "sys": r.ru_stime}}))
atexit.register(_done)
sys.argv = {argv!r}
{body}
"""

_DALS = """
from sweeps.cli.main import main
sys.exit(main(sys.argv[1:]))
"""

# Bare Ray Tune: the same slots, the same trial count, trials that only import torch and report
# twice (what any trainable does), reuse_actors=True, no checkpoints, no callbacks.
_BARE = """
import os, ray
from ray import tune
def trainable(config):
    import torch  # noqa: F401
    for epoch in (1, 2):
        tune.report({"epoch": epoch, "score": config["i"] * epoch})
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
tuner = tune.Tuner(tune.with_resources(trainable, {"cpu": 1}),
                   param_space={"i": tune.grid_search(list(range(int(sys.argv[1]))))},
                   tune_config=tune.TuneConfig(reuse_actors=True, metric="score", mode="max"),
                   run_config=tune.RunConfig(name="bare", storage_path=os.path.abspath("bare-runs"),
                                             verbose=0))
tuner.fit()
"""


def spec_text(trials: int) -> str:
    seeds = list(range(trials // STRATEGIES))
    return f"""name: scale{trials}
grid: {{strategies: all, datasets: [synthetic], seeds: {seeds}}}
defaults: {{epochs: 2, max_train: 256, max_eval: 256}}
resources: {{cpu: 1, max_concurrent: 2}}
tracking: {{experiment: scale{trials}}}
storage: dals-runs
"""


def measured(workdir: Path, argv: list[str], body: str, label: str) -> dict[str, float]:
    """Run `body` as a child Python process in `workdir`: (wall, driver user, driver sys) seconds."""
    out = workdir / f"rusage-{label}.json"
    code = _MEASURED.format(out=str(out), argv=argv, body=body)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(workdir / f"{label}.log", "w") as log:
        proc = subprocess.run([sys.executable, "-c", code], cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    tree = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed with exit code {proc.returncode}; see {workdir / label}.log")
    usage = json.loads(out.read_text())
    return {"wall_s": wall, "user_s": usage["user"], "sys_s": usage["sys"], "tree_cpu_s": tree}


def row(label: str, trials: int, m: dict[str, float]) -> dict[str, float | str | int]:
    cpu = m["user_s"] + m["sys_s"]
    return {"run": label, "trials": trials, **{k: round(v, 2) for k, v in m.items()},
            "wall_per_trial_s": round(m["wall_s"] / trials, 3), "cpu_per_trial_s": round(cpu / trials, 3)}


def table(rows: list[dict], anchor: dict) -> str:
    base = next(r for r in rows if r["run"] == "dals")["cpu_per_trial_s"]
    lines = ["| run | trials | wall | wall/trial | x bare | driver CPU (user + sys) | CPU/trial | growth "
             "| marginal CPU/trial | all processes' CPU/trial |", "|---|---|---|---|---|---|---|---|---|---|"]
    previous = None
    for r in rows + [anchor]:
        ratio = r["wall_per_trial_s"] / anchor["wall_per_trial_s"]
        growth = f"{r['cpu_per_trial_s'] / base:.2f}x" if r["run"] == "dals" else ""
        cpu = r["user_s"] + r["sys_s"]
        marginal = ""  # what each trial more costs: the fixed start-up and report left out
        if r["run"] == "dals" and previous is not None:
            marginal = f"{(cpu - previous[1]) / (r['trials'] - previous[0]):.3f} s"
        if r["run"] == "dals":
            previous = (r["trials"], cpu)
        lines.append(f"| {'dals sweep run' if r['run'] == 'dals' else 'bare Ray Tune'} | {r['trials']} | "
                     f"{r['wall_s']:.1f} s | {r['wall_per_trial_s']:.3f} s | {ratio:.2f}x | "
                     f"{r['user_s'] + r['sys_s']:.1f} s ({r['user_s']:.1f} + {r['sys_s']:.1f}) | "
                     f"{r['cpu_per_trial_s']:.3f} s | {growth} | {marginal} | {r['tree_cpu_s'] / r['trials']:.3f} s |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[36, 180],
                        help=f"sweep sizes (multiples of {STRATEGIES})")
    parser.add_argument("--large", action="store_true", help="also 1,008 trials (56 seeds)")
    parser.add_argument("--anchor-trials", type=int, default=180, help="bare Ray Tune's trial count")
    parser.add_argument("--keep", metavar="DIR", help="run in DIR and keep its files")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table to FILE")
    args = parser.parse_args()
    sizes = sorted(set(args.trials + ([1008] if args.large else [])))
    if any(n % STRATEGIES for n in sizes):
        parser.error(f"--trials: each size must be a multiple of {STRATEGIES}, got {sizes}")
    workdir = Path(args.keep or tempfile.mkdtemp(prefix="dals-scale-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"working folder {workdir}", flush=True)

    rows = []
    anchor = row("bare", args.anchor_trials,
                 measured(workdir, ["bare", str(args.anchor_trials)], _BARE, "bare"))
    print(json.dumps(anchor), flush=True)
    for n in sizes:
        spec = workdir / f"scale{n}.yaml"
        spec.write_text(spec_text(n))
        rows.append(row("dals", n, measured(workdir, ["dals", "sweep", "run", str(spec), "--fresh"],
                                            _DALS, f"dals{n}")))
        print(json.dumps(rows[-1]), flush=True)
    text = table(rows, anchor)
    print(text)
    goals = (f"goals: wall/trial <= {WALL_GOAL}x bare Ray Tune, driver CPU <= {CPU_GOAL} s/trial, "
             f"growth {sizes[0]} -> {sizes[-1]} <= {GROWTH_GOAL}x")
    print(goals)
    if args.markdown:
        command = "python benchmarks/sweep_scale.py " + " ".join(sys.argv[1:])
        Path(args.markdown).write_text(f"`{command}`\n\n{text}\n\n{goals}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
