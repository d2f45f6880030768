"""Every read and write of an experiment folder, through `pyarrow.fs` (the filesystem Ray Tune uses):
a local path or shared mount, `file://`, `s3://` (AWS or any S3-compatible store: `AWS_ENDPOINT_URL`,
or `?endpoint_override=HOST:PORT&scheme=http` in the URI), `gs://`, or any other pyarrow URI.

A folder is a string: a local path or a URI (its `?query` kept at the end, `join`). `filesystem`
resolves it to (filesystem, path inside it); credentials come from the environment or the
machine (instance profile), never from the URI (`refuse_credentials`), so no key is copied into
Ray's state, trial paths, MLflow params or logs.

What Ray writes goes through `SweepFiles`, a thin wrapper over the store's own filesystem:
- Ray copies its whole driver staging folder (experiment state, every trial's result.json and
  params.json) onto storage on each snapshot while it may be rewriting those files, and workers
  copy checkpoints there; a kill in the middle used to leave truncated files (an empty params.json
  broke the report). A state file (.json, .pkl) is only written when its bytes are whole (`_whole`).
- Local disks and mounts: written aside, then renamed (`_AtomicWriter`).
- Object stores (S3, GCS): a PUT is atomic already (an object appears whole when its upload
  completes, multipart ones included, or not at all), so files go straight to the store; state
  files are checked in memory first (`_WholeUpload`), nothing emulates a rename.
- Checkpoint folders Tune drops are emptied, not removed (`SweepFiles.delete_dir`).
- Ray's snapshot copies the whole staging folder each time (every trial's files: quadratic in the
  trials over a sweep); `upload_changed` copies only the files that changed since it last copied
  them, so a snapshot costs what changed, not what exists.
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow
import pyarrow.fs

from sweeps.spec.credentials import refuse_credentials

CHECKPOINT_PREFIX = "checkpoint_"  # Ray's checkpoint folders in a trial's folder
LOCAL_SCHEMES = ("", "file")


# ----------------------------------------------------------------------------- folders as strings


def is_uri(folder: str) -> bool:
    return "://" in folder


def is_local_path(folder: str) -> bool:
    """A plain path or a file:// URI (a local disk or a mount), not an object store."""
    return urlsplit(folder).scheme in LOCAL_SCHEMES if is_uri(folder) else True


def join(folder: str, *names: str) -> str:
    """`folder/name/...`, keeping a URI's `?query` (endpoint_override=...) at the end."""
    base, sep, query = folder.partition("?") if is_uri(folder) else (folder, "", "")
    return "/".join([base.rstrip("/"), *names]) + (f"?{query}" if sep else "")


def filesystem(folder: str, where: str = "storage") -> tuple[pyarrow.fs.FileSystem, str]:
    """(the folder's filesystem, wrapped in `SweepFiles`; the path inside it). A URI holding a
    key or password is refused (ValueError, one line naming `where`)."""
    refuse_credentials(folder, where)
    if not is_uri(folder):
        return pyarrow.fs.PyFileSystem(AtomicLocalFiles()), str(Path(folder).absolute())
    inner, path = pyarrow.fs.FileSystem.from_uri(folder)
    if isinstance(inner, pyarrow.fs.LocalFileSystem):
        return pyarrow.fs.PyFileSystem(AtomicLocalFiles()), path
    return pyarrow.fs.PyFileSystem(SweepFiles(_uploads_in_place(inner))), path


def _uploads_in_place(fs: pyarrow.fs.FileSystem) -> pyarrow.fs.FileSystem:
    """S3 with `background_writes=False`: a stream's upload runs in the thread that closes it.
    Ray copies folders with `pyarrow.fs.copy_files`, whose IO threads call `SweepFiles`; a
    background upload started from one of them waits for a free IO thread, and with all of them
    waiting so (seen: 8 state files at once) the copy never ends."""
    if isinstance(fs, pyarrow.fs.S3FileSystem):
        rebuild, (options,) = fs.__reduce__()
        return rebuild({**options, "background_writes": False})
    return fs


def storage_filesystem(storage_path: str) -> pyarrow.fs.FileSystem:
    """`RunConfig(storage_filesystem=...)` / `Tuner.restore(storage_filesystem=...)` for a storage
    path; Ray then wants the path inside it (`filesystem(...)[1]`)."""
    return filesystem(storage_path)[0]


def is_local(fs: pyarrow.fs.FileSystem) -> bool:
    """Whether `fs` is a local disk (or mount), where files can be read in place."""
    if isinstance(fs, pyarrow.fs.PyFileSystem) and isinstance(fs.handler, SweepFiles):
        fs = fs.handler.inner
    return isinstance(fs, pyarrow.fs.LocalFileSystem)


# ----------------------------------------------------------------------------- whole files


def _whole(name: str, data: bytes) -> bool:
    """Whether a state file's bytes are complete: a pickle that reaches its STOP opcode (read
    without running it), JSON, or JSON lines. Ray rewrites its state files (.json and .pkl, some
    .json files being pickles) in its staging folder in place while a background copy of them to
    storage may still be reading them, so a copy can come out empty or cut short (seen: an empty
    experiment state, which made the resume fail); such a copy must not replace a whole one."""
    if not _is_state_file(name):
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


def _is_state_file(name: str) -> bool:
    return name.endswith((".json", ".pkl"))


class _AtomicWriter:
    """A local binary file written under a temporary name and renamed over `path` on close."""

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


class _WholeUpload(io.BytesIO):
    """A state file for an object store, kept in memory and PUT on close only when whole (the PUT
    itself is atomic: no temporary object, no rename)."""

    def __init__(self, fs: pyarrow.fs.FileSystem, path: str):
        super().__init__()
        self.fs, self.path = fs, path

    def close(self) -> None:
        if not self.closed:
            data = self.getvalue()
            if _whole(self.path, data):
                with self.fs.open_output_stream(self.path) as out:
                    out.write(data)
        super().close()


class SweepFiles(pyarrow.fs.FileSystemHandler):
    """A store's own filesystem (`inner`), except that state files written through it appear only
    whole (see `_whole`), local files appear whole or not at all, and checkpoint folders Tune drops
    are emptied, not removed. Pickles with its inner filesystem (no credentials: pyarrow resolves
    them again from the environment where it is unpickled)."""

    def __init__(self, inner: pyarrow.fs.FileSystem) -> None:
        self.inner = inner

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.inner.equals(other.inner)  # type: ignore[attr-defined]

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((type(self), self.inner.type_name))

    def get_type_name(self) -> str:
        return f"dals-{self.inner.type_name}"

    def normalize_path(self, path: str) -> str:
        return self.inner.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list:
        return self.inner.get_file_info(paths)

    def get_file_info_selector(self, selector) -> list:
        return self.inner.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.inner.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        if os.path.basename(path.rstrip("/")).startswith(CHECKPOINT_PREFIX):
            # Emptied, not removed: Tune drops old checkpoints before its next snapshot is saved,
            # and refuses to resume a trial whose saved checkpoint folder is gone; the trainable
            # passes over an empty one (`resume`), and `drop_empty_checkpoints` removes it later.
            # (An object store keeps the emptied folder as its directory marker.)
            self.inner.delete_dir_contents(path, missing_dir_ok=True)
            return
        self.inner.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.inner.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise PermissionError("refusing to delete the contents of the storage's root")

    def delete_file(self, path: str) -> None:
        self.inner.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.inner.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        with self.inner.open_input_stream(src) as f, self.open_output_stream(dest, None) as out:
            out.write(f.read())

    def open_input_stream(self, path: str):
        return self.inner.open_input_stream(path)

    def open_input_file(self, path: str):
        return self.inner.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any):
        if _is_state_file(path):
            return pyarrow.PythonFile(_WholeUpload(self.inner, path), mode="w")
        return self.inner.open_output_stream(path)  # an object's PUT is atomic already

    def open_append_stream(self, path: str, metadata: Any):
        return self.inner.open_append_stream(path)


class AtomicLocalFiles(SweepFiles):
    """The local filesystem through `SweepFiles`, every file written aside and renamed."""

    def __init__(self) -> None:
        super().__init__(pyarrow.fs.LocalFileSystem())

    def __hash__(self) -> int:
        return hash(type(self))

    def get_type_name(self) -> str:
        return "dals-atomic-local"

    def open_output_stream(self, path: str, metadata: Any):
        return pyarrow.PythonFile(_AtomicWriter(path), mode="w")


# ----------------------------------------------------------------------------- snapshots

STABLE_S = 2.0  # a file last modified this long ago is not being written (Ray writes in bursts)
_copied: dict[tuple[str, str], tuple[int, int]] = {}  # (source, dest) -> (size, mtime_ns) copied
_copied_lock = threading.Lock()


def upload_changed(local_path: str, fs: pyarrow.fs.FileSystem, fs_path: str,
                   exclude: list[str] | None = None) -> None:
    """Ray's `_upload_to_fs_path` for the driver's snapshots, copying only what changed: a file
    whose size and mtime are those it had when this process last copied it whole is skipped.
    A file is remembered only when it was stable (untouched for `STABLE_S`) as it was read, so a
    copy taken while Ray rewrote it (dropped as torn, see `_whole`, or whole but older) is made
    again next time. A new driver (a resumed sweep) remembers nothing and copies everything once.
    A single file or an `exclude` list goes to Ray's own upload."""
    if exclude or not os.path.isdir(local_path):
        from ray.train._internal.storage import _upload_to_fs_path

        _upload_to_fs_path(local_path=local_path, fs=fs, fs_path=fs_path, exclude=exclude)
        return
    made: set[str] = set()
    for root, _, files in os.walk(local_path):
        rel = os.path.relpath(root, local_path)
        dest_dir = fs_path if rel == "." else f"{fs_path}/{Path(rel).as_posix()}"
        for name in files:
            src, dest = os.path.join(root, name), f"{dest_dir}/{name}"
            try:
                st = os.stat(src)
            except FileNotFoundError:  # Ray replaced it between the listing and now
                continue
            stamp = (st.st_size, st.st_mtime_ns)
            with _copied_lock:
                if _copied.get((src, dest)) == stamp:
                    continue
            if dest_dir not in made:
                fs.create_dir(dest_dir, recursive=True)
                made.add(dest_dir)
            try:
                with open(src, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                continue
            with fs.open_output_stream(dest) as out:
                out.write(data)
            if time.time() - st.st_mtime >= STABLE_S and len(data) == st.st_size:
                with _copied_lock:
                    _copied[(src, dest)] = stamp


# ----------------------------------------------------------------------------- reads and writes


def read_text(folder: str, name: str) -> str | None:
    """`folder/name` as text, or None when it is missing or unreadable."""
    fs, base = filesystem(folder)
    return read_at(fs, f"{base}/{name}")


def read_at(fs: pyarrow.fs.FileSystem, path: str) -> str | None:
    try:
        with fs.open_input_stream(path) as f:
            return f.read().decode()
    except (FileNotFoundError, OSError, UnicodeDecodeError):
        return None


def write_text(folder: str, name: str, text: str) -> None:
    fs, base = filesystem(folder)
    fs.create_dir(base, recursive=True)
    with fs.open_output_stream(f"{base}/{name}") as f:
        f.write(text.encode())


def delete_dir(folder: str) -> None:
    fs, base = filesystem(folder)
    if fs.get_file_info(base).type != pyarrow.fs.FileType.NotFound:
        fs.delete_dir(base)


def remove_dir(fs: pyarrow.fs.FileSystem, path: str) -> None:
    """Remove a folder, a checkpoint folder too (`SweepFiles.delete_dir` only empties those)."""
    if isinstance(fs, pyarrow.fs.PyFileSystem) and isinstance(fs.handler, SweepFiles):
        fs = fs.handler.inner
    fs.delete_dir(path)


def entries(fs: pyarrow.fs.FileSystem, path: str) -> list[pyarrow.fs.FileInfo]:
    """The files and folders directly in `path` (none when it is missing), sorted by name."""
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(infos, key=lambda i: i.base_name)


def subfolders(folder: str) -> list[str]:
    """The names of the folders directly in `folder`."""
    fs, base = filesystem(folder)
    return [i.base_name for i in entries(fs, base) if i.type == pyarrow.fs.FileType.Directory]


def download(fs: pyarrow.fs.FileSystem, path: str, local: Path) -> None:
    """Copy the folder `path` on `fs` into the local folder `local`."""
    local.mkdir(parents=True, exist_ok=True)
    pyarrow.fs.copy_files(path, str(local), source_filesystem=fs,
                          destination_filesystem=pyarrow.fs.LocalFileSystem())
