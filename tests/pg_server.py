"""A throwaway PostgreSQL server on 127.0.0.1 that checks passwords (scram-sha-256), for tests that
prove a password given in PGPASSWORD is used and shown nowhere. Its binaries are found, and run as
a non-root user when root, the way scripts/local_cluster.py does."""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from sockets import free_port

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "local_cluster.py"
USER = "dals"


def _script():
    spec = importlib.util.spec_from_file_location("local_cluster_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def postgres_with_password(password: str, databases: tuple[str, ...]) -> Iterator[str]:
    """Yields `postgresql+psycopg://dals@127.0.0.1:PORT` (no password: it goes in PGPASSWORD);
    skips (one line) where PostgreSQL's server binaries are missing."""
    script = _script()
    try:
        bindir, user = script.pg_bin(), script.pg_user()
    except RuntimeError as e:
        pytest.skip(f"{e} (`make test` installs them when run as root)")
    root = Path(tempfile.mkdtemp(prefix="dals-pg-", dir="/tmp"))  # outside root's private pytest folder
    root.chmod(0o755)
    data, sockets, pwfile = root / "data", root / "sockets", root / "pw"
    pwfile.write_text(password + "\n")
    for d in (data, sockets):
        d.mkdir(mode=0o700)
    for p in (data, sockets, pwfile):
        if user:
            shutil.chown(p, user, user)
    init = subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", USER, "--auth=scram-sha-256",
                           f"--pwfile={pwfile}", "--no-sync", "--no-instructions"],
                          capture_output=True, text=True, user=user, cwd=root)
    pwfile.unlink()
    assert init.returncode == 0, init.stderr
    port = free_port()
    proc = subprocess.Popen([str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets),
                             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
                            stdout=(root / "log").open("w"), stderr=subprocess.STDOUT, user=user, cwd=root,
                            start_new_session=True)
    env = {**os.environ, "PGPASSWORD": password}
    try:
        deadline = time.monotonic() + 120
        while subprocess.run([str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)]).returncode:
            assert proc.poll() is None and time.monotonic() < deadline, (root / "log").read_text()[-2000:]
            time.sleep(0.2)
        for db in databases:
            made = subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", USER, db],
                                  capture_output=True, text=True, env=env)
            assert made.returncode == 0, made.stderr
        yield f"postgresql+psycopg://{USER}@127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # PostgreSQL's fast shutdown
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)
