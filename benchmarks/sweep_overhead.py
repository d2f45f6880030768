"""Sweep overhead: wall time of `dals sweep run SPEC` / (sum of the trials' own time / concurrency).

The trials' own time is what `Trial.run_epoch` measured (`seconds`: training + evaluation of each
epoch), summed over every epoch of every trial, then divided by how many trials run at once. So
1.0 would mean Ray, MLflow, checkpoints, Python start-up and the report cost nothing; the goal is
<= 1.25. Both numbers come from the same run. The sweep runs fresh in a scratch working folder
(its own dals-runs/, mlflow.db, results/), so nothing of yours is touched.

    python benchmarks/sweep_overhead.py [SPEC] [--keep DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL = 1.25


def concurrency(spec) -> int:
    """Trials at once on this machine: CPUs / CPUs per trial, capped by max_concurrent."""
    slots = max(1, int((os.cpu_count() or 1) // spec.resources.cpu))
    return min(slots, spec.resources.max_concurrent or slots)


def trial_times(folder: Path) -> tuple[float, float, int]:
    """(sum of epoch `seconds`, sum of Ray's per-trial time_total_s, trials) from result.json."""
    own = ray_total = 0.0
    trials = 0
    for result in folder.glob("*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows:
            trials += 1
            own += sum(r["seconds"] for r in rows)
            ray_total += rows[-1].get("time_total_s", 0.0)
    return own, ray_total, trials


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", default="quick")
    parser.add_argument("--keep", metavar="DIR", help="run in DIR and keep its files")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    args = parser.parse_args()

    from sweeps.spec.loader import resolve_path
    from sweeps.spec.sweep import load_spec

    spec_file = resolve_path(args.spec).resolve()
    spec, _ = load_spec(spec_file)
    workdir = Path(args.keep or tempfile.mkdtemp(prefix="dals-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "sweeps.cli", "sweep", "run", str(spec_file), "--fresh"]
    print(f"$ (cd {workdir} && {' '.join(cmd[1:])})", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(f"sweep failed with exit code {proc.returncode}", file=sys.stderr)
        return proc.returncode

    folder = workdir / spec.storage / spec.name if "://" not in spec.storage else None
    own, ray_total, trials = trial_times(folder)
    slots = concurrency(spec)
    ideal = own / slots
    numbers = {
        "spec": spec.name, "trials": trials, "concurrency": slots, "wall_s": round(wall, 2),
        "trials_own_s": round(own, 2), "trials_ray_total_s": round(ray_total, 2),
        "ideal_s": round(ideal, 2), "overhead_ratio": round(wall / ideal, 3), "goal": GOAL,
    }
    print(f"{spec.name}: {trials} trials, wall {wall:.1f} s; trials' own time {own:.1f} s "
          f"({ray_total:.1f} s as Ray timed them, with set-up and checkpoints) / {slots} at once "
          f"= {ideal:.1f} s; overhead ratio {wall / ideal:.2f} (goal <= {GOAL})")
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
