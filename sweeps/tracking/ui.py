"""`dals ui`: the MLflow UI for a sweep's tracking store, on the loopback interface unless told
otherwise (`--host`). The store URI reaches the server through its environment, not its command
line, so a password in it does not show in `ps`; printed, it is masked.

A port another program holds is refused before anything starts (one line): otherwise the address
printed would point at that program. The server's own start-up chatter (table migrations,
middleware notes, deprecation warnings, access logs) goes to a temporary log, shown only when the
server fails; MLflow's job-execution workers (GenAI scorers, not used here) stay off.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import IO

from sweeps.redact import redact
from sweeps.spec.common import DEFAULT_ARTIFACTS, DEFAULT_TRACKING_DB
from sweeps.spec.sweep import Spec

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
STORE_ENV = "MLFLOW_BACKEND_STORE_URI"  # `mlflow server --backend-store-uri`'s variable
# MLflow 3.17's server starts job-execution workers (huey) by default; the UI needs none
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PYTHONWARNINGS": "ignore"}
LOG_LINES = 5  # lines of the server's log shown when it fails


class PortUnavailable(ValueError):
    """The UI cannot listen where asked (one line: what, where, what to do)."""


def check_port(host: str, port: int) -> None:
    """Raise `PortUnavailable` when `host:port` cannot be listened on (another program holds it,
    or the host is not this machine's), binding the way the server will (SO_REUSEADDR)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise PortUnavailable(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    family, kind, proto, _, where = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(where)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortUnavailable(f"port {port} on {host} is in use by another program; "
                                      "pick a free one with --port") from None
            raise PortUnavailable(f"cannot listen on {host}:{port} ({exc.strerror})") from None


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
    cmd = [sys.executable, "-m", "mlflow", "ui", "--host", host, "--port", str(port), "--workers", "1",
           "--uvicorn-opts", "--no-access-log"]
    if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        cmd += ["--default-artifact-root", Path(DEFAULT_ARTIFACTS).resolve().as_uri()]
    return cmd


def ui_env(uri: str) -> dict[str, str]:
    return {**os.environ, **SERVER_ENV, STORE_ENV: uri}


def address(host: str, port: int) -> str:
    return f"http://{host}:{port}"


# MLflow 3.17's UI picks an experiment page's view from its "GenAI | Model training" switch (the
# `workflowType` URL parameter, else what the browser last chose, GenAI by default), not from the
# experiment's kind tag: links that carry the parameter open the runs in the model-training view.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"
MAX_LINKS = 5


def experiment_links(uri: str, base: str, limit: int = MAX_LINKS) -> list[tuple[str, str]]:
    """(name, link in the model-training view) of the store's most recently updated experiments
    that dals made (tagged as model training); none when the store cannot be read."""
    import logging

    from mlflow.tracking import MlflowClient

    from sweeps.tracking.conventions import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        found = MlflowClient(tracking_uri=uri).search_experiments(
            filter_string=f"tags.`{EXPERIMENT_KIND_TAG}` = '{EXPERIMENT_KIND}'",
            order_by=["last_update_time DESC"], max_results=limit)
    except Exception:  # noqa: BLE001 - the links are a convenience; the UI itself is up
        return []
    return [(e.name, f"{base}/#/experiments/{e.experiment_id}?{MODEL_TRAINING_VIEW}") for e in found]


def wait_until_up(url: str, proc: subprocess.Popen, timeout_s: float = 180.0) -> bool:
    """Poll the server's health check under `url` until it answers (True; the process must still
    run, so the answer is its own), the process exits or time runs out (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return proc.poll() is None
        except OSError:
            time.sleep(0.5)
    return False


def log_tail(log: IO[str], lines: int = LOG_LINES) -> list[str]:
    """The last non-empty lines of the server's log (its error, when it failed)."""
    log.flush()
    log.seek(0)
    return [line.rstrip() for line in log.read().splitlines() if line.strip()][-lines:]


def serve(uri: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, say=print) -> int:
    """Run the UI in the foreground until Ctrl+C, printing its address once it answers. Returns
    1 (with the end of the server's log on stderr) when the server does not start or dies."""
    check_port(host, port)
    say(f"starting the MLflow UI for {redact(uri)} ...", flush=True)
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(ui_command(uri, host, port), env=ui_env(uri), stdout=log,
                                stderr=subprocess.STDOUT)
        probe = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        try:
            if wait_until_up(address(probe, port), proc):
                say(f"MLflow UI: {address(host, port)} (Ctrl+C stops it)", flush=True)
                for name, link in experiment_links(uri, address(host, port)):
                    say(f"  {name}: {link}", flush=True)
            code = proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait(timeout=10)
            return 0
        if code != 0:
            tail = log_tail(log)
            print(f"dals ui: the MLflow server exited with code {code}"
                  + ("; its log ends:" if tail else ""), file=sys.stderr)
            for line in tail:
                print(f"  {redact(line)}", file=sys.stderr)
        return 1 if code else 0
