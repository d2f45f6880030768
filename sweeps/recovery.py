"""Crash safety: what lets a sweep killed at any moment (driver `kill -9`, a trial's worker lost)
be run again with nothing lost and nothing trained twice.

- Storage writes are atomic (`storage_filesystem`): Ray copies its whole driver staging folder
  (experiment state, every trial's result.json and params.json) onto the storage folder on each
  snapshot, and workers copy checkpoints there; a kill in the middle of such a copy used to leave
  truncated files (an empty params.json broke the report). Through this filesystem a file appears
  whole or not at all (written aside, then renamed).
- A trial resumes from its newest saved state (`resume`): its final record (`record_final`,
  written as Tune ends it, before its checkpoints are dropped), else the newest whole checkpoint,
  which may be newer than the one Ray's last snapshot names (the driver died before recording it)
  or stand in for one Ray already deleted. Epochs the driver never recorded are reported again
  from that state instead of being trained again; an ended trial only reports that it ended.
- After a run (`complete_results`, `reconcile_tracking`): result.json and MLflow get what a
  killed driver left out for trials Tune will not run again.
- Fault injection for tests (`Faults`): ``DALS_FAULT`` makes chosen trials raise or kill their own
  worker once, at a chosen epoch.
"""

from __future__ import annotations

import json
import os
import pickletools
import shutil
import signal
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow
import pyarrow.fs

FAULT_ENV = "DALS_FAULT"
CHECKPOINT_PREFIX = "checkpoint_"  # Ray's checkpoint folders in a trial's folder
RESULT_FILE = "result.json"  # Ray's, per trial
FINAL_FILE = "dals-final.json"  # per trial, written as Tune ends it (`record_final`)


# ----------------------------------------------------------------------------- atomic storage writes


class _AtomicWriter:
    """A binary file written under a temporary name and renamed over `path` on close."""

    def __init__(self, path: str):
        self.path = path
        self.tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.part-{uuid.uuid4().hex[:8]}"
        self._file = open(self.tmp, "wb")
        self.closed = False

    def write(self, data: Any) -> int:
        return self._file.write(data)

    def flush(self) -> None:
        self._file.flush()

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._file.close()
            if not _whole(self.path, Path(self.tmp).read_bytes()):
                os.unlink(self.tmp)  # a torn copy: keep the file it would have replaced
                return
            os.replace(self.tmp, self.path)


def _whole(name: str, data: bytes) -> bool:
    """Whether a state file's bytes are complete: a pickle that reaches its STOP opcode (read
    without running it), JSON, or JSON lines. Ray rewrites its state files (.json and .pkl, some
    .json files being pickles) in its staging folder in place while a background copy of them to
    storage may still be reading them, so a copy can come out empty or cut short (seen: an empty
    experiment state, which made the resume fail); such a copy must not replace a whole one."""
    if not name.endswith((".json", ".pkl")):
        return True
    if data.startswith(b"\x80"):
        last = None
        try:
            for op, _, _ in pickletools.genops(data):
                last = op.name
        except Exception:
            return False
        return last == "STOP"
    try:
        json.loads(data)
        return True
    except ValueError:
        pass
    lines = data.splitlines()
    try:
        return bool(lines) and all(isinstance(json.loads(line), dict) for line in lines)
    except ValueError:
        return False


class AtomicLocalFiles(pyarrow.fs.FileSystemHandler):
    """The local filesystem, except that files written through it appear whole or not at all, and
    a state file (.json, .pkl) only by a complete one (see `_whole`)."""

    def __init__(self) -> None:
        self._fs = pyarrow.fs.LocalFileSystem()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(type(self))

    def get_type_name(self) -> str:
        return "dals-atomic-local"

    def normalize_path(self, path: str) -> str:
        return self._fs.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list:
        return self._fs.get_file_info(paths)

    def get_file_info_selector(self, selector) -> list:
        return self._fs.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self._fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        if os.path.basename(path.rstrip("/")).startswith(CHECKPOINT_PREFIX):
            # Emptied, not removed: Tune drops old checkpoints before its next snapshot is saved,
            # and refuses to resume a trial whose saved checkpoint folder is gone; the trainable
            # passes over an empty one (`resume`), and `drop_empty_checkpoints` removes it later.
            self._fs.delete_dir_contents(path, missing_dir_ok=True)
            return
        self._fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise PermissionError("refusing to delete the contents of /")

    def delete_file(self, path: str) -> None:
        self._fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self._fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        with self._fs.open_input_stream(src) as f, self.open_output_stream(dest, None) as out:
            out.write(f.read())

    def open_input_stream(self, path: str):
        return self._fs.open_input_stream(path)

    def open_input_file(self, path: str):
        return self._fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any):
        return pyarrow.PythonFile(_AtomicWriter(path), mode="w")

    def open_append_stream(self, path: str, metadata: Any):
        return self._fs.open_append_stream(path)


def storage_filesystem(storage_path: str) -> pyarrow.fs.FileSystem | None:
    """`RunConfig(storage_filesystem=...)` for a storage path: atomic writes for a local (or
    mounted shared) folder; None (Ray's default) for a URI, whose object stores write whole objects."""
    if "://" in storage_path:
        return None
    return pyarrow.fs.PyFileSystem(AtomicLocalFiles())


# ----------------------------------------------------------------------------- resuming a trial


def _is_local(fs: pyarrow.fs.FileSystem) -> bool:
    return isinstance(fs, pyarrow.fs.LocalFileSystem) or (
        isinstance(fs, pyarrow.fs.PyFileSystem) and isinstance(fs.handler, AtomicLocalFiles))


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
        return Path(self.path) if _is_local(self.fs) else None

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


def parse_rows(text: str) -> list[dict[str, Any]]:
    """JSON lines; unreadable ones skipped."""
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def final_record(text: str | None) -> dict[str, Any] | None:
    try:
        record = json.loads(text) if text else None
    except ValueError:
        return None
    return record if isinstance(record, dict) and record.get("history") else None


def saved_epoch(folder: Path) -> int | None:
    """The epoch a checkpoint folder holds, or None when it is missing or not whole."""
    import torch

    from sweeps.trainable import CHECKPOINT_FILE

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


def own_metrics(row: dict[str, Any]) -> dict[str, Any]:
    """A result row without what Ray adds to it: what the trainable reported."""
    from ray.tune.result import AUTO_RESULT_KEYS

    ray_keys = set(AUTO_RESULT_KEYS) | {"done", "should_checkpoint", "trial_id", "experiment_tag"}
    return {k: v for k, v in row.items() if k not in ray_keys}


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
            "status": status if status in ("finished", "diverged") else "stopped"}, default=str))


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


def reconcile_tracking(store: Any, sweep_id: str, trials: list) -> int:
    """Make MLflow agree with the saved trials (`tracking.sync_trial`) where a look at each child
    run's logged epochs and status says it does not. A killed driver can leave a run without epochs
    it had reported (a resumed trial does not report them again) or still RUNNING (its trial,
    finished in Tune's state, is never run again). Returns how many runs were repaired."""
    from sweeps import tracking
    from sweeps.run import final_status

    client = store.client()
    exp_id = store.experiment_id(client)
    parent, children = tracking.sweep_runs(store, sweep_id)
    if parent is None:
        return 0
    runs = {c.data.tags.get(tracking.TAG_KEY): c for c in children}
    repaired = 0
    for trial in trials:
        entry = trial.config.get("trial")
        rows = trial_rows(trial)
        if not entry or not rows:
            continue
        status = {"ERROR": "failed",
                  "TERMINATED": final_status((trial.last_result or {}).get("status"))}.get(trial.status)
        run = runs.get(entry["key"])
        if run is not None and (status is None or (
                run.data.tags.get(tracking.TAG_STATUS) == status
                and run.info.status == tracking.RUN_STATUS.get(status, "FINISHED"))):
            logged = {int(m.step) for m in client.get_metric_history(run.info.run_id, "epoch")}
            if logged >= {int(r.get("epoch", 0)) for r in rows}:
                continue
        tracking.sync_trial(client, exp_id, parent.info.run_id, sweep_id, trial)
        repaired += 1
    return repaired


# ----------------------------------------------------------------------------- fault injection


@dataclass(frozen=True)
class Fault:
    kind: str  # "exception" | "kill"
    epoch: int
    key: str | None  # a trial key, or None for every trial


def parse_faults(text: str) -> list[Fault]:
    """``KIND@EPOCH[:TRIAL_KEY]``, comma-separated; KIND is ``exception`` or ``kill``."""
    faults = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        head, _, key = item.partition(":")
        kind, _, epoch = head.partition("@")
        if kind not in ("exception", "kill") or not epoch.isdigit() or int(epoch) < 1:
            raise ValueError(f"{FAULT_ENV}: expected KIND@EPOCH[:TRIAL_KEY] with KIND exception or "
                             f"kill, got {item!r}")
        faults.append(Fault(kind, int(epoch), key or None))
    return faults


class InjectedFault(RuntimeError):
    """The exception a ``DALS_FAULT=exception@N`` trial raises."""


class Faults:
    """Test hook: ``DALS_FAULT=exception@2`` (or ``kill@2``, optionally ``:TRIAL_KEY``, several
    comma-separated) makes a trial fail after training that epoch, before reporting it: raise
    `InjectedFault`, or SIGKILL its own worker process. Each fault fires once per trial (a marker
    file in the trial's folder), so the retry Ray makes from the last checkpoint runs clean.
    Without the variable this does nothing."""

    def __init__(self, key: str, folder: TrialFolder, faults: list[Fault]):
        self.folder = folder
        self.mine = [f for f in faults if f.key in (None, key)]

    @classmethod
    def from_env(cls, key: str, folder: TrialFolder) -> Faults:
        return cls(key, folder, parse_faults(os.environ.get(FAULT_ENV, "")))

    def after_epoch(self, epoch: int) -> None:
        for fault in self.mine:
            if fault.epoch != epoch:
                continue
            marker = f"dals-fault-{fault.kind}@{fault.epoch}"
            if self.folder.read(marker) is not None:
                continue  # fired before: this is the retry
            self.folder.write(marker, str(os.getpid()))
            if fault.kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise InjectedFault(f"{FAULT_ENV}: injected {fault.kind} after epoch {epoch}")
