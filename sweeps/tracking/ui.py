"""`dals ui`: the MLflow UI for a sweep's tracking store, on the loopback interface unless told
otherwise (`--host`). The store URI reaches the server through its environment, not its command
line, so a password in it does not show in `ps`; printed, it is masked."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from sweeps.redact import redact
from sweeps.spec.common import DEFAULT_ARTIFACTS, DEFAULT_TRACKING_DB
from sweeps.spec.sweep import Spec

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
STORE_ENV = "MLFLOW_BACKEND_STORE_URI"  # `mlflow server --backend-store-uri`'s variable


def store_uri(spec: Spec | None, uri: str | None) -> str:
    """An explicit URI, else the spec's, else the working folder's SQLite default."""
    if uri:
        return uri
    if spec is not None:
        return spec.tracking_uri()
    return f"sqlite:///{Path(DEFAULT_TRACKING_DB).resolve()}"


def ui_command(uri: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> list[str]:
    """The `mlflow ui` command line for `uri` (artifacts of new experiments beside a local store);
    the URI itself goes in the environment (`ui_env`)."""
    cmd = [sys.executable, "-m", "mlflow", "ui", "--host", host, "--port", str(port), "--workers", "1"]
    if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        cmd += ["--default-artifact-root", Path(DEFAULT_ARTIFACTS).resolve().as_uri()]
    return cmd


def ui_env(uri: str) -> dict[str, str]:
    return {**os.environ, STORE_ENV: uri}


def address(host: str, port: int) -> str:
    return f"http://{host}:{port}"


def wait_until_up(url: str, proc: subprocess.Popen, timeout_s: float = 180.0) -> bool:
    """Poll `url` until it answers (True), the process exits or time runs out (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            time.sleep(0.5)
    return False


def serve(uri: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, say=print) -> int:
    """Run the UI in the foreground until Ctrl+C, printing its address once it answers."""
    say(f"starting the MLflow UI for {redact(uri)} ...", flush=True)
    proc = subprocess.Popen(ui_command(uri, host, port), env=ui_env(uri))
    probe = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    try:
        if wait_until_up(address(probe, port), proc):
            say(f"MLflow UI: {address(host, port)} (Ctrl+C stops it)", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=10)
        return 0
