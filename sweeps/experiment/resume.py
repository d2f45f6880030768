"""Crash safety of a trial: what lets a sweep killed at any moment (driver `kill -9`, a trial's
worker lost) be run again with nothing lost and nothing trained twice.

- A trial resumes from its newest saved state (`resume`): its final record (`record_final`,
  written as Tune ends it, before its checkpoints are dropped), else the newest whole checkpoint,
  which may be newer than the one Ray's last snapshot names (the driver died before recording it)
  or stand in for one Ray already deleted. Epochs the driver never recorded are reported again
  from that state instead of being trained again; an ended trial only reports that it ended.
- After a run (`complete_results`): result.json gets what a killed driver left out for trials Tune
  will not run again (MLflow's side: `sweeps.tracking.sync.reconcile_tracking`).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs
import torch

from sweeps.experiment.folder import FINAL_FILE, RESULT_FILE, final_record, own_metrics, parse_rows
from sweeps.experiment.storage import CHECKPOINT_PREFIX, AtomicLocalFiles, is_local
from sweeps.train.status import ENDED_BY_TRIAL, TrialStatus
from sweeps.train.trial import CHECKPOINT_FILE


@dataclass(frozen=True)
class TrialFolder:
    """A trial's folder in the sweep's storage: checkpoints, Ray's result.json, the final record."""

    fs: pyarrow.fs.FileSystem
    path: str

    @classmethod
    def current(cls) -> TrialFolder:
        """The folder of the trial this Ray worker runs."""
        from ray import tune

        storage = tune.get_context().get_storage()
        return cls(storage.storage_filesystem, storage.trial_fs_path)

    def local(self) -> Path | None:
        """The folder as a local path, when the storage is local (or a mounted shared folder)."""
        return Path(self.path) if is_local(self.fs) else None

    def read(self, name: str) -> str | None:
        try:
            with self.fs.open_input_stream(f"{self.path}/{name}") as f:
                return f.read().decode()
        except (FileNotFoundError, OSError):
            return None

    def write(self, name: str, text: str) -> None:
        self.fs.create_dir(self.path, recursive=True)
        with self.fs.open_output_stream(f"{self.path}/{name}") as f:
            f.write(text.encode())

    def recorded_epochs(self) -> int:
        """The last epoch in the trial's result.json on storage (0 if none can be read)."""
        return max((int(r.get("epoch", 0)) for r in parse_rows(self.read(RESULT_FILE) or "")), default=0)

    def checkpoints(self) -> list[Path]:
        """The trial's checkpoint folders (local storage only: others are read through Ray)."""
        local = self.local()
        return sorted(local.glob(CHECKPOINT_PREFIX + "*")) if local else []

    def final_record(self) -> dict[str, Any] | None:
        """What `record_final` wrote when Tune ended the trial, or None."""
        return final_record(self.read(FINAL_FILE))


def saved_epoch(folder: Path) -> int | None:
    """The epoch a checkpoint folder holds, or None when it is missing or not whole."""
    try:
        state = torch.load(folder / CHECKPOINT_FILE, map_location="cpu", weights_only=True, mmap=True)
        return int(state["epoch"])
    except Exception:  # missing, truncated or foreign: not a usable checkpoint
        return None


def resume(trial: Any, given: Path | None, folder: TrialFolder) -> list[dict[str, Any]]:
    """Bring `trial` to its newest saved state: its final record if it had ended, else the newest
    whole checkpoint, Ray's (`given`) or a newer one in its folder (saved by a worker whose driver
    died before recording it, or standing in for one Ray deleted). Returns the epochs to report
    again, not train: those after the last one in the driver's result.json (all of them when Ray
    starts the trial afresh, as its result.json then starts afresh too), and the last epoch of an
    ended trial (Ray's last result may predate the end)."""
    final = folder.final_record()
    if final is not None:  # nothing left to train: the history is all that is needed
        trial.epoch, trial.status, trial.history = int(final["epoch"]), str(final["status"]), final["history"]
    else:
        best, best_epoch = None, 0
        for path in ([given] if given is not None else []) + folder.checkpoints():
            epoch = saved_epoch(path)
            if epoch is not None and epoch > best_epoch:
                best, best_epoch = path, epoch
        if best is None:
            return []
        trial.restore(best)
    recorded = folder.recorded_epochs() if given is not None else 0
    replay = [m for m in trial.history if int(m["epoch"]) > recorded]
    if trial.done and not replay and trial.history:
        replay = [trial.history[-1]]
    return replay


# ----------------------------------------------------------------------------- after a run


def saved_folder(trial: Any) -> TrialFolder | None:
    """A saved trial's folder, on local storage (None elsewhere)."""
    if not trial.path or "://" in trial.path:
        return None
    return TrialFolder(pyarrow.fs.PyFileSystem(AtomicLocalFiles()), trial.path)


def trial_rows(trial: Any) -> list[dict[str, Any]]:
    folder = saved_folder(trial)
    return parse_rows(folder.read(RESULT_FILE) or "") if folder else []


def record_final(trial: Any) -> None:
    """Driver side, as Tune ends a trial and before its checkpoints are dropped: write its final
    record (every epoch it reported) to its folder. Should the driver die before Tune saves the
    trial as ended, Tune resumes it with its checkpoints gone; the record makes the trainable
    report it ended instead of training it all again (`resume`)."""
    folder = saved_folder(trial)
    staging = Path(trial.local_path or "", RESULT_FILE)
    if folder is None or folder.final_record() is not None or not staging.is_file():
        return
    epochs: dict[int, dict[str, Any]] = {}
    for row in parse_rows(staging.read_text()):
        epochs.setdefault(int(row.get("epoch", 0)), own_metrics(row))
    history = [m for e, m in sorted(epochs.items()) if e > 0]
    if history:
        status = history[-1].get("status")
        folder.write(FINAL_FILE, json.dumps({
            "epoch": history[-1]["epoch"], "history": history,
            "status": status if status in ENDED_BY_TRIAL else TrialStatus.STOPPED}, default=str))


def empty_checkpoints(trial_path: str | os.PathLike) -> None:
    """Delete a trial's checkpoints, leaving their folders (see `AtomicLocalFiles.delete_dir`)."""
    for folder in Path(trial_path).glob(CHECKPOINT_PREFIX + "*"):
        for item in folder.iterdir():
            if item.is_dir():
                shutil.rmtree(item, ignore_errors=True)
            else:
                item.unlink(missing_ok=True)


def drop_empty_checkpoints(trials: list) -> None:
    """Remove the emptied checkpoint folders of trials Tune saved as finished (never resumed)."""
    for trial in trials:
        if trial.status == "TERMINATED" and saved_folder(trial) is not None:
            for folder in Path(trial.path).glob(CHECKPOINT_PREFIX + "*"):
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()


def complete_results(trials: list) -> None:
    """Give each finished trial's result.json the epochs its final record holds but the file
    lacks. Ray saves its state and the trials' result.json in one copy, file by file: a driver
    killed in the middle can leave a trial finished in the state, which is never run again, with
    its last epochs missing from result.json."""
    for trial in trials:
        folder = saved_folder(trial)
        if trial.status != "TERMINATED" or folder is None:
            continue
        final = folder.final_record()
        rows = trial_rows(trial)
        have = {int(r.get("epoch", 0)) for r in rows}
        missing = [m for m in (final or {}).get("history", []) if int(m["epoch"]) not in have]
        if missing:
            rows += [{**m, "trial_id": trial.trial_id, "done": m is final["history"][-1],
                      "config": trial.config} for m in missing]
            folder.write(RESULT_FILE, "".join(json.dumps(r, default=str) + "\n" for r in rows))
