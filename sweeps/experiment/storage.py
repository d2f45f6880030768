"""Every read and write of an experiment folder, through `pyarrow.fs` (the filesystem Ray Tune uses).

Local folders (and shared mounts) are written atomically (`AtomicLocalFiles`): Ray copies its whole
driver staging folder (experiment state, every trial's result.json and params.json) onto the storage
folder on each snapshot, and workers copy checkpoints there; a kill in the middle of such a copy used
to leave truncated files (an empty params.json broke the report). Through this filesystem a file
appears whole or not at all (written aside, then renamed).
"""

from __future__ import annotations

import json
import os
import pickletools
import uuid
from pathlib import Path
from typing import Any

import pyarrow
import pyarrow.fs

CHECKPOINT_PREFIX = "checkpoint_"  # Ray's checkpoint folders in a trial's folder


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


def is_local(fs: pyarrow.fs.FileSystem) -> bool:
    return isinstance(fs, pyarrow.fs.LocalFileSystem) or (
        isinstance(fs, pyarrow.fs.PyFileSystem) and isinstance(fs.handler, AtomicLocalFiles))


def filesystem(path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI."""
    if "://" in path:
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), path


def read_text(folder: str, name: str) -> str | None:
    """`folder/name` as text, or None when it is missing or unreadable."""
    fs, base = filesystem(folder)
    try:
        with fs.open_input_stream(f"{base}/{name}") as f:
            return f.read().decode()
    except (FileNotFoundError, OSError):
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
