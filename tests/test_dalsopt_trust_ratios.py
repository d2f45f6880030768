"""scripts/trust_ratios.py, the measurement behind dals@finetune-decoupled, runs on the trial API."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ratios(*args: str) -> str:
    cmd = [sys.executable, "scripts/trust_ratios.py", "--dataset", "synthetic", "--max-train", "64", *args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_script_follows_the_ratios_of_every_block():
    out = ratios("--steps", "4", "--epochs", "1")
    assert "r = clamp(0.02 ||p||/||g + wd p||, 0.2, 5)" in out
    tables = out.split("\nstep ")[1:]
    assert [t.split("\n", 1)[0] for t in tables] == ["0", "1", "2", "3"]
    for table in tables:  # the synthetic MLP: 4 blocks, 2 tensors each
        rows = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
        assert [r.split("|")[1:3] for r in rows] == [[f" {b} ", " 2 "] for b in range(4)]


def test_decoupled_decay_measures_the_gradient_alone():
    out = ratios("--strategy", "dals@finetune-decoupled", "--hp", "weight_decay=0.5")
    assert "||g (decay decoupled)||" in out and "wd 0.5" in out
    for line in out.splitlines():
        if line.startswith("| ") and line[2].isdigit():
            cells = [c.strip() for c in line.split("|")[1:-1]]
            assert cells[3] == cells[4]  # ||u|| is ||g||: the decay is out of the ratio
