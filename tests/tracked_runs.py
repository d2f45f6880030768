"""A sweep's MLflow runs written by the real tracking code on a SQLite store, without Ray (stand-in
Tune trials drive the real callback; each result carries a real system-metrics sample), and a git
checkout to run them in."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path
from types import SimpleNamespace

from sweeps.runner.grid import trial_entry
from sweeps.spec.sweep import load_spec
from sweeps.tracking import store as tracking
from sweeps.tracking.callback import MlflowCallback
from sweeps.tracking.system import SystemSampler

SPEC = """
    name: conv
    grid: {strategies: [sgd, dals], datasets: [synthetic], seeds: [0, 1]}
    defaults: {epochs: 2, max_train: 256, max_eval: 128}
"""


def tracked(folder: Path, epochs=(1, 2), text: str = SPEC, sweep_id: str = "conv-1") -> tuple[tracking.Store, list]:
    """(store, the spec's trials) after the callback logged `epochs` of every trial of the spec
    `text` (written to `folder`; its store is the working folder's default)."""
    path = folder / "conv.yaml"
    path.write_text(textwrap.dedent(text))
    spec, _ = load_spec(path)
    store = tracking.Store(spec.tracking_uri(), spec.experiment())
    tracking.open_parent(store, sweep_id, spec.name, spec.digest, path, {"trials": 4, "unset": None})
    callback = MlflowCallback(store, sweep_id)
    callback.setup()
    system = SystemSampler()
    for i, t in enumerate(spec.trials()):
        trial = SimpleNamespace(trial_id=f"t{i}", config={"trial": trial_entry(t)}, last_result=None)
        callback.on_trial_start(0, [], trial)
        for epoch in epochs:
            trial.last_result = {"epoch": epoch, "eval_accuracy": 0.5 + 0.1 * epoch, "training_iteration": epoch,
                                 "status": "finished" if epoch == max(epochs) else "running", **system.sample()}
            callback.on_trial_result(0, [], trial, trial.last_result)
        callback.on_trial_complete(0, [], trial)
    callback.on_experiment_end([])  # waits for the queued writes
    return store, spec.trials()


def git(folder: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org", "HOME": str(folder), "PATH": "/usr/bin:/bin"}
    return subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def git_checkout(folder: Path) -> str:
    """`folder` as a git checkout with one commit on branch `main`; returns the commit's hash."""
    git(folder, "init", "-q", "-b", "main")
    (folder / "README").write_text("x\n")
    git(folder, "add", "README")
    git(folder, "commit", "-q", "-m", "one")
    return git(folder, "rev-parse", "HEAD")
