#!/usr/bin/env python3
"""A cluster on this machine for development and tests: PostgreSQL, an MLflow server on it, a Ray
head and one extra Ray worker node, all on 127.0.0.1 and free ports, all under one folder.

    python scripts/local_cluster.py start [--dir DIR]   # prints the addresses as JSON
    python scripts/local_cluster.py env   [--dir DIR]   # the same as `export` lines
    python scripts/local_cluster.py stop  [--dir DIR]
    python scripts/local_cluster.py stop-worker [--dir DIR] [--graceful]   # lose the worker node only

Ray runs with token authentication (`RAY_AUTH_MODE=token`): `start` writes a fresh token for this
cluster to DIR/ray-auth-token (mode 0600) and every node, job and client reads it from there
(`RAY_AUTH_TOKEN_PATH`; `env` prints both), so nobody else on the machine can submit jobs or talk
to the GCS. What Ray lets be bound to 127.0.0.1 is: the dashboard and Jobs API, MLflow and
PostgreSQL. Ray resolves a node's `--node-ip-address 127.0.0.1` to the machine's address, and its
GCS, raylet, agents and Ray Client server listen there (behind the token); the Prometheus metrics
endpoint, which would listen on every interface without a token, is off.

Why not `ray start`/`ray stop` as usual: `ray stop` kills every Ray on the machine, and two raylets
on one machine must not share ports or a temp dir. So every service runs in the foreground
(`ray start --block`, `postgres`, `mlflow server`) as a child in its own process group, the groups
are recorded in DIR/cluster.json as soon as they exist, and `stop` ends exactly those groups (and any
process still naming DIR on its command line), also after a failed or interrupted `start`.
Run it with the project's virtualenv Python: the services use that Python's ray and mlflow.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path("/tmp/dals-local-cluster")  # short: Ray's unix socket paths live under it
STATE_FILE = "cluster.json"
PG_USER = "dals"
DATABASES = ("mlflow", "optuna")  # one server, two databases: both use alembic's version table
HEAD_RESOURCE = "dals_head"  # custom resources: tests tell the two nodes apart by them
WORKER_RESOURCE = "dals_worker"
OBJECT_STORE_BYTES = 256 * 1024 * 1024
STOP_GRACE_S = 10.0
TOKEN_FILE = "ray-auth-token"


# ----------------------------------------------------------------------------- small helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, ready, timeout: float, proc: subprocess.Popen | None = None,
             log: Path | None = None) -> None:
    """Poll `ready()` until true; a dead process or the timeout is one line plus the log's tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}{_tail(log)}")
        time.sleep(0.3)
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s{_tail(log)}")


def _tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return ""
    return f"; last lines of {log}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def venv_bin(name: str) -> str:
    """A console script of the running Python's environment (ray, mlflow), else from PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found beside {sys.executable}; run this script with the project's .venv")
    return found


def auth_env(root: Path) -> dict[str, str]:
    """How Ray's nodes, jobs and clients find this cluster's token: the file, never the token."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(root / TOKEN_FILE)}


def write_token(root: Path) -> None:
    """A new random token for this cluster, readable by its owner only."""
    import secrets

    path = root / TOKEN_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))


def service_env(root: Path) -> dict[str, str]:
    """The services' environment: this venv first on PATH (Ray jobs run `python`), no inherited
    Ray address or token (RAY_AUTH_TOKEN would win over this cluster's file), this cluster's
    token auth, and Ray's metrics exporter off (it listens on every interface)."""
    drop = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(auth_env(root), RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1",
               RAY_enable_metrics_collection="0")
    return env


# ----------------------------------------------------------------------------- state


def load_state(root: Path) -> dict[str, Any]:
    path = root / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else {"dir": str(root), "services": {}}


def save_state(root: Path, state: dict[str, Any]) -> None:
    tmp = root / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(root / STATE_FILE)


def launch(root: Path, state: dict[str, Any], name: str, cmd: list[str], *, stop_signal: str = "SIGTERM",
           user: str | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `cmd` in its own process group, logging to DIR/NAME.log, and record it at once."""
    log = root / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**service_env(root), **(env or {})}, user=user,
                                cwd=root)
    state["services"][name] = {"pid": proc.pid, "stop_signal": stop_signal, "log": str(log)}
    save_state(root, state)
    return proc


# ----------------------------------------------------------------------------- PostgreSQL


def pg_bin() -> Path:
    """PostgreSQL's server binaries: $DALS_PG_BIN, Debian's /usr/lib/postgresql/N/bin, or PATH."""
    candidates = [os.environ.get("DALS_PG_BIN", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                         if Path(p).parent.name.isdigit() else 0, reverse=True)
    candidates.append(str(Path(shutil.which("initdb") or "/nonexistent").parent))
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "postgres").exists():
            return Path(c)
    raise RuntimeError("PostgreSQL server binaries (initdb, postgres) not found: install Debian's "
                       "`postgresql` package or set DALS_PG_BIN to their folder")


def pg_user() -> str | None:
    """PostgreSQL refuses to run as root: then run it as the `postgres` (or `nobody`) user."""
    if os.geteuid() != 0:
        return None
    import pwd

    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and no `postgres` or `nobody` user to run PostgreSQL as")


def start_postgres(root: Path, state: dict[str, Any]) -> None:
    bindir, user = pg_bin(), pg_user()
    data, sockets = root / "pg", root / "pg-sockets"
    for d in (data, sockets):
        d.mkdir(mode=0o700)
        if user:
            shutil.chown(d, user, user)
    init = subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust",
                           "-E", "UTF8", "--no-sync", "--no-instructions"],
                          capture_output=True, text=True, user=user, cwd=root)
    if init.returncode:
        raise RuntimeError(f"initdb failed: {(init.stderr or init.stdout).strip()}")
    port = free_port()
    proc = launch(root, state, "postgres", [
        str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets),
        "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200",
    ], stop_signal="SIGINT", user=user)  # SIGINT: PostgreSQL's "fast" shutdown

    def ready() -> bool:
        return subprocess.run([str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)]).returncode == 0

    wait_for("PostgreSQL", ready, 30, proc, root / "postgres.log")
    for db in DATABASES:
        made = subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, db],
                              capture_output=True, text=True)
        if made.returncode:
            raise RuntimeError(f"createdb {db} failed: {made.stderr.strip()}")
    base = f"postgresql://{PG_USER}@127.0.0.1:{port}"
    state.update(postgres=base, mlflow_backend=f"{base}/mlflow",
                 optuna_storage=f"postgresql+psycopg://{PG_USER}@127.0.0.1:{port}/optuna")
    save_state(root, state)


# ----------------------------------------------------------------------------- MLflow


def start_mlflow(root: Path, state: dict[str, Any]):
    """Launch the server and return a function that waits for it: its database migrations
    take ~15 s, so Ray starts meanwhile."""
    port = free_port()
    artifacts = root / "mlflow-artifacts"
    artifacts.mkdir()
    proc = launch(root, state, "mlflow", [
        venv_bin("mlflow"), "server", "--backend-store-uri", state["mlflow_backend"],
        "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
    ], env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # no job-runner processes
    url = f"http://127.0.0.1:{port}"

    def wait() -> None:
        wait_for("MLflow server", lambda: http_ok(f"{url}/health"), 120, proc, root / "mlflow.log")
        state.update(mlflow=url, mlflow_artifacts=str(artifacts))
        save_state(root, state)

    return wait


# ----------------------------------------------------------------------------- Ray


def alive_nodes(root: Path, dashboard: str) -> int:
    """Alive nodes, as the dashboard (which wants the cluster's token) lists them."""
    token = (root / TOKEN_FILE).read_text().strip()
    request = urllib.request.Request(f"{dashboard}/api/v0/nodes?limit=100",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=3) as r:
            nodes = json.load(r)["data"]["result"]["result"]
    except (OSError, KeyError, ValueError):
        return 0
    return sum(1 for n in nodes if n.get("state") == "ALIVE")


def start_ray(root: Path, state: dict[str, Any], head_cpus: int, worker_cpus: int) -> None:
    """Head + one worker node. Each node gets its own temp dir: on a shared one the worker node's
    runtime-env cleanup would delete job working dirs the head's driver still runs in."""
    ray = venv_bin("ray")
    temp = root / "ray"
    gcs, dashboard_port = free_port(), free_port()
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    common = ["--node-ip-address", "127.0.0.1", "--num-gpus", "0", "--block", "--disable-usage-stats",
              "--object-store-memory", str(OBJECT_STORE_BYTES), "--min-worker-port", "0", "--max-worker-port", "0"]
    head = launch(root, state, "ray-head", [
        ray, "start", "--head", "--port", str(gcs), "--dashboard-host", "127.0.0.1",
        "--dashboard-port", str(dashboard_port), "--ray-client-server-port", str(free_port()),
        "--dashboard-agent-listen-port", str(free_port()), "--num-cpus", str(head_cpus),
        "--resources", json.dumps({HEAD_RESOURCE: 1}), "--temp-dir", str(temp), *common,
    ])
    wait_for("Ray head", lambda: alive_nodes(root, dashboard) >= 1, 90, head, root / "ray-head.log")
    state.update(ray_address=f"127.0.0.1:{gcs}", dashboard=dashboard, ray_temp_dir=str(temp))
    save_state(root, state)
    worker = launch(root, state, "ray-worker", [
        ray, "start", "--address", f"127.0.0.1:{gcs}", "--num-cpus", str(worker_cpus),
        "--resources", json.dumps({WORKER_RESOURCE: 1}), "--dashboard-agent-listen-port", str(free_port()),
        "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
        "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
        "--temp-dir", str(root / "ray-worker"), *common,  # its own: runtime envs are per-node dirs
    ])
    wait_for("Ray worker node", lambda: alive_nodes(root, dashboard) >= 2, 90, worker, root / "ray-worker.log")
    state.update(head_resource=HEAD_RESOURCE, worker_resource=WORKER_RESOURCE)
    save_state(root, state)


# ----------------------------------------------------------------------------- start / stop


def start(root: Path, head_cpus: int, worker_cpus: int, with_ray: bool = True) -> dict[str, Any]:
    """Start everything; on any failure stop what did start, then raise."""
    if (root / STATE_FILE).exists():
        raise RuntimeError(f"{root} already holds a cluster ({STATE_FILE}); stop it first")
    if root.exists() and any(root.iterdir()):
        if not (root / f"{STATE_FILE}.stopped").exists():
            raise RuntimeError(f"{root} is not empty and holds no stopped local cluster; give another --dir")
        shutil.rmtree(root)  # the previous, stopped cluster's data and logs
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # the postgres user must reach its data dir below
    state = load_state(root)
    write_token(root)
    state.update(auth_env(root))
    save_state(root, state)
    try:
        start_postgres(root, state)
        mlflow_ready = start_mlflow(root, state)
        if with_ray:
            start_ray(root, state, head_cpus, worker_cpus)
        mlflow_ready()
    except BaseException:
        stop(root)
        raise
    state["ready"] = True
    save_state(root, state)
    return state


def _groups() -> dict[int, list[int]]:
    """Process group id -> its pids, for every process on the machine."""
    groups: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        groups.setdefault(int(fields[2]), []).append(int(Path(stat).parent.name))
    return groups


def _ancestors() -> set[int]:
    """This process and its parents (a shell running `stop --dir DIR` names DIR too)."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            break
    return pids


def _naming(root: Path) -> list[int]:
    """Pids whose command line names a path under `root` (Ray daemons that left our process groups)."""
    needle, skip, pids = f"{root}/".encode(), _ancestors(), []
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        pid = int(Path(cmdline).parent.name)
        try:
            if pid not in skip and needle in Path(cmdline).read_bytes():
                pids.append(pid)
        except OSError:
            continue
    return pids


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop(root: Path) -> list[str]:
    """End every recorded service, then strays naming `root`; returns what was stopped. All groups
    are signalled at once (their shutdowns overlap) and killed if still there after the grace time.
    Safe to run twice and after a half-finished start."""
    state = load_state(root)
    stopped = []
    live = {name: svc["pid"] for name, svc in state["services"].items() if _groups().get(svc["pid"])}
    for name, pgid in live.items():
        _signal(_groups().get(pgid, []), getattr(signal, state["services"][name].get("stop_signal", "SIGTERM")))
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline and any(_groups().get(pgid) for pgid in live.values()):
        time.sleep(0.2)
    groups = _groups()
    for name, pgid in live.items():
        _signal(groups.get(pgid, []), signal.SIGKILL)
        stopped.append(name)
    strays = _naming(root)
    if strays:
        _signal(strays, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and _naming(root):
            time.sleep(0.2)
        _signal(_naming(root), signal.SIGKILL)
        stopped.append(f"{len(strays)} stray processes")
    if (root / STATE_FILE).exists():
        (root / STATE_FILE).rename(root / f"{STATE_FILE}.stopped")
    return stopped


def _descendants(pids: set[int]) -> set[int]:
    """`pids` and every process below them (Ray starts its worker processes in their own groups)."""
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            ppid = int(Path(stat).read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(Path(stat).parent.name))
    out, todo = set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo.extend(children.get(pid, []))
    return out


def stop_worker(root: Path, graceful: bool = False) -> int:
    """End the worker node only, as if its machine died: its `ray start` group, every process
    below it (the raylet's worker processes, trials included) and strays naming its temp dir, all
    with SIGKILL at once (`graceful`: SIGTERM first, as `stop` does). The head, PostgreSQL and
    MLflow keep running. Returns how many processes were signalled."""
    state = load_state(root)
    service = state["services"].get("ray-worker")
    if not state.get("ready") or service is None:
        raise RuntimeError(f"no running local cluster with a worker node in {root}")
    temp = root / "ray-worker"
    targets = _descendants(set(_groups().get(service["pid"], [])) | set(_naming(temp)))
    if not targets:
        return 0
    if graceful:
        _signal(sorted(targets), signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in targets):
            time.sleep(0.2)
    _signal(sorted(targets), signal.SIGKILL)
    service["stopped"] = time.time()
    save_state(root, state)
    return len(targets)


def env_lines(state: dict[str, Any]) -> list[str]:
    """Shell exports for the running cluster (the names `dals` and MLflow/Ray clients read)."""
    pairs = {"RAY_API_SERVER_ADDRESS": state.get("dashboard"), "MLFLOW_TRACKING_URI": state.get("mlflow"),
             "DALS_OPTUNA_STORAGE": state.get("optuna_storage"), "RAY_AUTH_MODE": state.get("RAY_AUTH_MODE"),
             "RAY_AUTH_TOKEN_PATH": state.get("RAY_AUTH_TOKEN_PATH")}
    return [f"export {k}={v}" for k, v in pairs.items() if v]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("start", "stop", "stop-worker", "env"))
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"the cluster's folder (default {DEFAULT_DIR})")
    p.add_argument("--head-cpus", type=int, default=1)
    p.add_argument("--worker-cpus", type=int, default=1)
    p.add_argument("--no-ray", action="store_true", help="only PostgreSQL + MLflow")
    p.add_argument("--graceful", action="store_true",
                   help="stop-worker: SIGTERM first (default: SIGKILL, the node is lost)")
    args = p.parse_args(argv)
    root = args.dir.absolute()
    try:
        if args.action == "start":
            t0 = time.monotonic()
            state = start(root, args.head_cpus, args.worker_cpus, with_ray=not args.no_ray)
            state["start_s"] = round(time.monotonic() - t0, 1)
            print(json.dumps(state, indent=2))
        elif args.action == "stop":
            print(f"stopped: {', '.join(stop(root)) or 'nothing was running'}")
        elif args.action == "stop-worker":
            print(f"worker node stopped: {stop_worker(root, args.graceful)} processes signalled")
        else:
            state = load_state(root)
            if not state.get("ready"):
                raise RuntimeError(f"no running cluster in {root}")
            print("\n".join(env_lines(state)))
    except (RuntimeError, OSError) as exc:
        print(f"local_cluster: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
