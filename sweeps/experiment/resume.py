"""Crash safety of a trial: what lets a sweep killed at any moment (driver `kill -9`, a trial's
worker lost) be run again with nothing lost and nothing trained twice, on any storage.

- A trial resumes from its newest saved state (`resume`): its final record (`record_final`,
  written as Tune ends it, before its checkpoints are dropped), else the newest whole checkpoint in
  its folder (or in the folders of the earlier trials it continues, `also`), which may be newer
  than the one Ray's last snapshot names (the driver died before recording it) or stand in for one
  Ray already emptied. Epochs the driver never recorded are reported again from that state instead
  of being trained again; an ended trial only reports that it ended.
- Each checkpoint holds `CHECKPOINT_META` (its epoch and files, written last): a checkpoint is whole
  when every file it lists is there, which is read from a listing and one small file, also on an
  object store (no checkpoint is downloaded to learn its epoch).
- A trial saves a checkpoint when `CheckpointEvery` says (every N epochs and/or S seconds, always
  at its end), not every epoch. Between checkpoints each epoch it reports goes to `REPORTED_FILE`
  first: a trial redone from an older checkpoint trains those epochs again (bit for bit on CPU)
  and reports them as it first did (`reported_before`), so no recorded epoch changes.
- After a run (`complete_results`): result.json gets what a killed driver left out for trials Tune
  will not run again (MLflow's side: `sweeps.tracking.sync.reconcile_tracking`).
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow.fs
import torch

from sweeps.experiment.folder import (
    FINAL_FILE, REPORTED_FILE, RESULT_FILE, final_record, own_metrics, parse_rows,
)
from sweeps.experiment.storage import CHECKPOINT_PREFIX, download, entries, is_local, read_at, remove_dir
from sweeps.train.status import ENDED_BY_TRIAL, TrialStatus
from sweeps.train.trial import CHECKPOINT_FILE

CHECKPOINT_META = "dals-checkpoint.json"  # in each checkpoint: {"epoch": N, "files": [...]}


class Resumable(Protocol):
    """A `sweeps.train.trial.Trial`, or anything saved and restored like one (a tuning trial's seeds)."""

    epoch: int
    status: str
    history: list[dict[str, Any]]

    @property
    def done(self) -> bool: ...

    def save(self, path: str | Path) -> None: ...

    def restore(self, path: str | Path) -> None: ...


@dataclass(frozen=True)
class TrialFolder:
    """A trial's folder in the sweep's storage: checkpoints, Ray's result.json, the final record."""

    fs: pyarrow.fs.FileSystem
    path: str

    @classmethod
    def current(cls) -> TrialFolder | None:
        """The folder of the trial this Ray worker runs (None outside a Ray Tune session)."""
        from ray import tune

        storage = tune.get_context().get_storage()
        return None if storage is None else cls(storage.storage_filesystem, storage.trial_fs_path)

    @classmethod
    def of(cls, trial: Any) -> TrialFolder | None:
        """A Ray trial's folder on its storage (the filesystem Ray wrote it with), or None when
        the trial has none yet."""
        if not trial.path:
            return None
        return cls(trial.storage.storage_filesystem, trial.path)

    def sibling(self, name: str) -> TrialFolder:
        """Another trial's folder in the same experiment."""
        return TrialFolder(self.fs, posixpath.join(posixpath.dirname(self.path.rstrip("/")), name))

    def local(self) -> Path | None:
        """The folder as a local path, when the storage is local (or a mounted shared folder)."""
        return Path(self.path) if is_local(self.fs) else None

    def read(self, name: str) -> str | None:
        return read_at(self.fs, f"{self.path}/{name}")

    def write(self, name: str, text: str) -> None:
        self.fs.create_dir(self.path, recursive=True)
        with self.fs.open_output_stream(f"{self.path}/{name}") as f:
            f.write(text.encode())

    def names(self, prefix: str = "") -> list[str]:
        """What the folder holds (files and folders) whose names start with `prefix`."""
        return [i.base_name for i in entries(self.fs, self.path) if i.base_name.startswith(prefix)]

    def rows(self) -> list[dict[str, Any]]:
        """Ray's result.json rows on storage (none when missing)."""
        return parse_rows(self.read(RESULT_FILE) or "")

    def recorded_epochs(self) -> int:
        """The last epoch in the trial's result.json on storage (0 if none can be read)."""
        return max((int(r.get("epoch", 0)) for r in self.rows()), default=0)

    def checkpoints(self) -> list[str]:
        """The paths (on `fs`) of the trial's checkpoint folders."""
        return [f"{self.path}/{n}" for n in self.names(CHECKPOINT_PREFIX)]

    def final_record(self) -> dict[str, Any] | None:
        """What `record_final` wrote when Tune ended the trial, or None."""
        return final_record(self.read(FINAL_FILE))

    def empty_checkpoints(self) -> None:
        """Delete the trial's checkpoints, leaving their folders (see `SweepFiles.delete_dir`)."""
        for path in self.checkpoints():
            self.fs.delete_dir_contents(path, missing_dir_ok=True)

    def drop_empty_checkpoints(self) -> None:
        for path in self.checkpoints():
            if not entries(self.fs, path):
                remove_dir(self.fs, path)

    def empty_older_checkpoints(self, newest: str, keep: int) -> None:
        """Empty the checkpoints older than `newest` (a whole one just registered), keeping the
        `keep - 1` newest of them: Tune keeps every checkpoint (`num_to_keep=None`, so it does
        not force a snapshot of the whole experiment at each one); this keeps `keep`. Folders newer
        than `newest` (being written) are never touched; emptied ones stay (`SweepFiles.delete_dir`)."""
        name = posixpath.basename(newest.rstrip("/"))
        older = [p for p in self.checkpoints() if posixpath.basename(p) < name and entries(self.fs, p)]
        for path in older[: max(0, len(older) - (keep - 1))]:
            self.fs.delete_dir_contents(path, missing_dir_ok=True)

    def reported_before(self) -> dict[int, dict[str, Any]]:
        """Epoch -> the metrics the trial reported for it since its last checkpoint (`REPORTED_FILE`)."""
        try:
            return {int(k): v for k, v in json.loads(self.read(REPORTED_FILE) or "{}").items()}
        except (ValueError, AttributeError):
            return {}


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(trial: Resumable, folder: str | Path) -> None:
    """`trial.save(folder)`, then `CHECKPOINT_META` naming the epoch and every file it wrote."""
    trial.save(folder)
    root = Path(folder)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    (root / CHECKPOINT_META).write_text(json.dumps({"epoch": trial.epoch, "files": files}))


@dataclass
class CheckpointEvery:
    """When a trial saves a checkpoint: after every `epochs`-th epoch and/or once `seconds` have
    passed since its last one (either is enough; None: not that way), and always at its end. A
    trial killed in between is redone from its last checkpoint."""

    epochs: int | None = None
    seconds: float | None = None
    _last: float = field(default_factory=time.monotonic, repr=False)

    def due(self, trial: Resumable) -> bool:
        """Whether to save now (after an epoch); starts the next interval when it is."""
        now = time.monotonic()
        due = (trial.done or (self.epochs is not None and trial.epoch % self.epochs == 0)
               or (self.seconds is not None and now - self._last >= self.seconds))
        if due:
            self._last = now
        return due


def checkpoint_epoch(fs: pyarrow.fs.FileSystem, path: str) -> int | None:
    """The epoch a checkpoint folder holds, or None when it is missing, empty or not whole. On
    local storage a checkpoint without `CHECKPOINT_META` (written before it existed) is read."""
    try:
        meta = json.loads(read_at(fs, f"{path}/{CHECKPOINT_META}") or "null")
        if isinstance(meta, dict):
            infos = fs.get_file_info([f"{path}/{f}" for f in meta["files"]])
            if all(i.type == pyarrow.fs.FileType.File for i in infos):
                return int(meta["epoch"])
            return None
    except (ValueError, KeyError, TypeError, OSError):
        return None
    return saved_epoch(Path(path)) if is_local(fs) else None


def saved_epoch(folder: Path) -> int | None:
    """The epoch of a local checkpoint folder's trial file, or None when missing or not whole."""
    try:
        state = torch.load(folder / CHECKPOINT_FILE, map_location="cpu", weights_only=True, mmap=True)
        return int(state["epoch"])
    except Exception:  # missing, truncated or foreign: not a usable checkpoint
        return None


def newest_checkpoint(folders: list[TrialFolder]) -> tuple[TrialFolder, str] | None:
    """(folder, checkpoint path) of the newest whole checkpoint in any of `folders`."""
    best, best_epoch = None, 0
    for folder in folders:
        for path in folder.checkpoints():
            epoch = checkpoint_epoch(folder.fs, path)
            if epoch is not None and epoch > best_epoch:
                best, best_epoch = (folder, path), epoch
    return best


def resume(trial: Resumable, folder: TrialFolder, restored: bool, also: list[TrialFolder] = ()) -> list[dict[str, Any]]:
    """Bring `trial` to its newest saved state: its final record if it had ended, else the newest
    whole checkpoint in its folder or in `also` (the folders of earlier trials it continues: a
    tuning trial queued again after a killed run). Returns the epochs to report again, not train:
    those after the last one in the driver's result.json when Ray `restored` the trial (its
    result.json continues), all of them when Ray starts it afresh (its result.json starts afresh
    too), and the last epoch of an ended trial (Ray's last result may predate the end)."""
    final = folder.final_record()
    if final is not None:  # nothing left to train: the history is all that is needed
        trial.epoch, trial.status, trial.history = int(final["epoch"]), str(final["status"]), final["history"]
    else:
        found = newest_checkpoint([folder, *also])
        if found is None:
            return []
        where, path = found
        with contextlib.ExitStack() as stack:
            local = where.local()
            if local is None:  # an object store: the one checkpoint chosen is downloaded
                local = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dals-ckpt-")))
                download(where.fs, path, local)
                trial.restore(local)
            else:
                trial.restore(Path(path))
    recorded = folder.recorded_epochs() if restored else 0
    replay = [m for m in trial.history if int(m["epoch"]) > recorded]
    if trial.done and not replay and trial.history:
        replay = [trial.history[-1]]
    return replay


# ----------------------------------------------------------------------------- after a run


def trial_rows(trial: Any) -> list[dict[str, Any]]:
    folder = TrialFolder.of(trial)
    return folder.rows() if folder else []


def record_final(trial: Any) -> None:
    """Driver side, as Tune ends a trial and before its checkpoints are dropped: write its final
    record (every epoch it reported) to its folder. Should the driver die before Tune saves the
    trial as ended, Tune resumes it with its checkpoints gone; the record makes the trainable
    report it ended instead of training it all again (`resume`)."""
    folder = TrialFolder.of(trial)
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


def empty_checkpoints(trial: Any) -> None:
    """Delete an ended trial's checkpoints, leaving their folders (Tune's saved state may name them)."""
    folder = TrialFolder.of(trial)
    if folder is not None:
        folder.empty_checkpoints()


def drop_empty_checkpoints(trials: list) -> None:
    """Remove the emptied checkpoint folders of trials Tune saved as finished (never resumed)."""
    for trial in trials:
        folder = TrialFolder.of(trial)
        if trial.status == "TERMINATED" and folder is not None:
            folder.drop_empty_checkpoints()


def complete_results(trials: list) -> None:
    """Give each finished trial's result.json the epochs its final record holds but the file
    lacks. Ray saves its state and the trials' result.json in one copy, file by file: a driver
    killed in the middle can leave a trial finished in the state, which is never run again, with
    its last epochs missing from result.json."""
    for trial in trials:
        folder = TrialFolder.of(trial)
        if trial.status != "TERMINATED" or folder is None:
            continue
        final = folder.final_record()
        rows = folder.rows()
        have = {int(r.get("epoch", 0)) for r in rows}
        missing = [m for m in (final or {}).get("history", []) if int(m["epoch"]) not in have]
        if missing:
            rows += [{**m, "trial_id": trial.trial_id, "done": m is final["history"][-1],
                      "config": trial.config} for m in missing]
            folder.write(RESULT_FILE, "".join(json.dumps(r, default=str) + "\n" for r in rows))
