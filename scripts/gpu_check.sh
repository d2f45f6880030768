#!/usr/bin/env bash
# The GPU check for a machine with an NVIDIA GPU (issue 14), one command from the repository root:
#
#   scripts/gpu_check.sh [OUT]        # OUT: where the report goes (default docs/results/gpu)
#
# 1. the gpu-marked tests (no host sync in any strategy's step under torch.cuda.set_sync_debug_mode,
#    every strategy's step under a GradScaler equal to the step without one, fp16 and bf16 on CUDA);
# 2. sweeps/specs/gpu-check.yaml: MiniLM fine-tuning on the full TREC-6 and RTE, bf16, gpu: 0.25
#    (four trials per GPU), six strategies, one seed, the authors' epochs;
# 3. OUT/: the sweep's report (report.md, CSV, curves), trials.md (examples/s, peak GPU memory and final
#    accuracy per trial), gpu.txt (the GPU, driver, torch), tests.log, sweep.log, and the precision
#    benchmark (benchmark.md).
# Sized for one H200 in under 8 minutes (each stage has its own time limit, so the whole stays inside
# it even when a stage runs long; what finished is written either way). The virtualenv is the
# Makefile's (.venv, created by `make venv` when missing); DALS_PYTHON=/path/to/python uses another
# interpreter with the requirements installed instead.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${1:-docs/results/gpu}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
START=$(date +%s)
say() { echo "[gpu_check $(( $(date +%s) - START )) s] $*"; }

if [ -n "${DALS_PYTHON:-}" ]; then
    PY=$DALS_PYTHON
    DALS=("$PY" -m sweeps.cli)
    export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
else
    [ -x .venv/bin/python ] || make venv || { say "could not create .venv (make venv)"; exit 1; }
    PY=$ROOT/.venv/bin/python
    DALS=("$ROOT/.venv/bin/dals")
fi
export DALS_OFFLINE=1 PYTHONUNBUFFERED=1

if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    say "no CUDA device visible to torch: this script is for a machine with a GPU"; exit 2
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
    "$PY" -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
              f"{torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported(including_emulation=False)}")'
} > "$OUT/gpu.txt"
say "$(tail -n 1 "$OUT/gpu.txt")"

# 1. the gpu-marked tests (about a minute), from the files that have any
say "gpu-marked tests"
mapfile -t gpu_tests < <(grep -l "mark.gpu" tests/test_*.py)
timeout -k 10 100 "$PY" -m pytest -q -m gpu -p no:cacheprovider "${gpu_tests[@]}" > "$OUT/tests.log" 2>&1
tests_rc=$?
say "tests: exit $tests_rc ($(tail -n 1 "$OUT/tests.log"))"

# 2. the fine-tuning sweep, in a folder of its own (Ray's runs, MLflow), fresh each time; at its time
# limit it is interrupted as by Ctrl+C (its state saved) and the report covers what finished
WORK=$(mktemp -d /tmp/dals-gpu-check.XXXXXX)
say "sweep gpu-check in $WORK"
( cd "$WORK" && timeout -s INT -k 30 300 "${DALS[@]}" sweep run "$ROOT/sweeps/specs/gpu-check.yaml" --fresh ) \
    > "$OUT/sweep.log" 2>&1
sweep_rc=$?
say "sweep: exit $sweep_rc ($(tail -n 1 "$OUT/sweep.log"))"

# 3. the report and the per-trial throughput (from Ray's result files: whatever finished)
( cd "$WORK" && timeout 40 "${DALS[@]}" report "$ROOT/sweeps/specs/gpu-check.yaml" --out "$OUT" ) \
    >> "$OUT/sweep.log" 2>&1
"$PY" - "$WORK/dals-runs/gpu-check" "$OUT/trials.md" <<'EOF'
"""trials.md: per trial, its precision, epochs, examples/s (mean of its epochs), peak GPU memory and
final eval accuracy, from each trial's result.json (one JSON object per epoch)."""
import json
import statistics
import sys
from pathlib import Path

folder, out = Path(sys.argv[1]), Path(sys.argv[2])
rows = []
for path in sorted(folder.glob("*/result.json")):
    epochs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    epochs = [e for e in epochs if "epoch" in e and "examples_per_second" in e]
    if not epochs:
        continue
    key = epochs[-1].get("config", {}).get("trial", {}).get("key", path.parent.name)
    rows.append((key, epochs[-1].get("precision", "?"), len(epochs),
                 statistics.mean(e["examples_per_second"] for e in epochs),
                 max(e.get("gpu_mem_peak_gb", 0.0) for e in epochs),
                 sum(e.get("seconds", 0.0) for e in epochs), epochs[-1].get("eval_accuracy", float("nan"))))
lines = ["| trial | precision | epochs | examples/s (train) | peak GPU memory (GB) | seconds | final eval_accuracy |",
         "|---|---|---|---|---|---|---|"]
lines += [f"| {k} | {p} | {n} | {eps:.0f} | {mem:.2f} | {sec:.0f} | {acc:.4f} |" for k, p, n, eps, mem, sec, acc in rows]
out.write_text("Per trial of `sweeps/specs/gpu-check.yaml` (scripts/gpu_check.sh), from Ray's result files; "
               "GPU memory is torch's peak allocation of the trial's process (four trials share the GPU).\n\n"
               + "\n".join(lines) + "\n")
print(f"{len(rows)} trials in {out}")
EOF

# the precision benchmark, if time is left (fp32 vs bf16 vs fp16 of one training step)
left=$(( 470 - ($(date +%s) - START) ))
if [ "$left" -gt 40 ]; then
    say "precision benchmark (${left} s left)"
    timeout "$left" "$PY" benchmarks/precision.py --rounds 20 > "$OUT/benchmark.md" 2>&1
fi
rm -rf "$WORK"
say "done: $OUT (tests exit $tests_rc, sweep exit $sweep_rc)"
[ "$tests_rc" -eq 0 ] && [ "$sweep_rc" -eq 0 ]
