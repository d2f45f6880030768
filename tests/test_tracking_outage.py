"""A real MLflow server (SQLite backend, 127.0.0.1, a free port) killed in the middle of a real
`dals sweep run`: training goes on at its pace, what could not be written waits and is recorded
when the server is back (during the sweep), or, when it stays down to the end, the sweep says in
one line exactly what MLflow lacks and `dals sweep sync` records it from Ray's result files.
Ray's result.json rows are the ground truth every assertion compares MLflow against."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mlflow_server import Server
from ray_results import polled_sweep_env, trial_rows
from sweeps.cli import main as cli
from sweeps.tracking import store as tracking

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
NOT_RECORDED = re.compile(r"did not record (\d+) metric values, (\d+) params, (\d+) tags, "
                          r"(\d+) run statuses, (\d+) artifact uploads")
IN_FLIGHT = re.compile(r"\(and (.*) in flight when it went down, perhaps recorded\)")
KINDS = {"metric values": "metrics", "params": "params", "tags": "tags", "run statuses": "statuses",
         "artifact uploads": "artifacts"}


def in_flight(line: str) -> dict[str, int]:
    """The write cut off by the outage, by kind (none: zeros): it may or may not have been recorded."""
    found = IN_FLIGHT.search(line)
    counts = dict.fromkeys(KINDS.values(), 0)
    for part in found.group(1).split(", ") if found else []:
        number, kind = part.split(" ", 1)
        counts[KINDS[kind]] = int(number)
    return counts


@pytest.fixture
def server(mlflow_server):
    return mlflow_server.ensure_up()


def write_spec(folder: Path, name: str, url: str, epochs: int, max_train: int, model: str = "mlp") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""
        name: {name}
        grid: {{strategies: [sgd, adam], datasets: [synthetic], seeds: [0]}}
        defaults: {{epochs: {epochs}, max_train: {max_train}, max_eval: 200, model: "{model}"}}
        resources: {{cpu: 1}}
        tracking: {{uri: "{url}", experiment: {name}}}
        storage: {folder / 'runs'}
    """))
    return path


def start_sweep(spec: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sweeps.cli", "sweep", "run", str(spec)],
                            cwd=spec.parent, env=polled_sweep_env(), stdout=log.open("w"), stderr=subprocess.STDOUT)


def ray_epochs(folder: Path) -> dict[str, dict[int, dict]]:
    """Trial key -> epoch -> its first result row (as the tracking logs it)."""
    out: dict[str, dict[int, dict]] = {}
    for key, found in trial_rows(folder).items():
        for row in found:
            out.setdefault(key, {}).setdefault(int(row["epoch"]), row)
    return out


def wait_until(what: str, check, timeout_s: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {log.read_text()[-3000:]}"
        assert proc.poll() is None, f"the sweep ended before {what}: {log.read_text()[-3000:]}"
        time.sleep(0.2)


def kill_after_first_result(server: Server, proc: subprocess.Popen, folder: Path, log: Path) -> float:
    """Kill the server once a trial has reported; returns when (time.time())."""
    wait_until("a first result", lambda: any(ray_epochs(folder).values()), 240, proc, log)
    server.kill()
    return time.time()


def sweep_runs(url: str, name: str):
    store = tracking.Store(url, name)
    exp = store.client().get_experiment_by_name(name)
    runs = store.client().search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(tracking.TAG_ROLE) == "sweep"]
    assert len(parents) == 1
    return store, parents[0], [r for r in runs if r.data.tags.get(tracking.TAG_ROLE) == "trial"]


def metric_gaps(store: tracking.Store, children, epochs: dict[str, dict[int, dict]]) -> dict:
    """(key, metric, step) -> Ray's value, for every metric value Ray has and MLflow lacks (or
    holds twice, or holds another value for)."""
    client, gaps = store.client(), {}
    runs = {c.data.tags[tracking.TAG_KEY]: c for c in children}
    for key, rows in epochs.items():
        expected = {(name, step): value for step, row in rows.items()
                    for name, value in tracking.epoch_metrics(row).items()}
        logged: dict[tuple[str, int], list[float]] = {}
        if key in runs:
            for name in {n for n, _ in expected}:
                for m in client.get_metric_history(runs[key].info.run_id, name):
                    logged.setdefault((name, m.step), []).append(m.value)
        for (name, step), value in expected.items():
            got = logged.get((name, step), [])
            same = len(got) == 1 and (got[0] == value or (math.isnan(got[0]) and math.isnan(value)))
            if not same:
                gaps[(key, name, step)] = value
    return gaps


def assert_complete(store: tracking.Store, parent, children, epochs) -> None:
    """MLflow holds exactly what Ray has: one run per trial, every metric value once, final statuses."""
    assert sorted(c.data.tags[tracking.TAG_KEY] for c in children) == sorted(epochs)
    assert metric_gaps(store, children, epochs) == {}
    for child in children:
        assert (child.data.tags[tracking.TAG_STATUS], child.info.status) == ("finished", "FINISHED")
        assert child.data.tags[tracking.PARENT] == parent.info.run_id
    assert parent.info.status == "FINISHED"
    assert "report/report.md" in {a.path for a in store.client().list_artifacts(parent.info.run_id, "report")}


def pause(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def test_server_back_during_the_sweep_gets_every_queued_write(server, tmp_path):
    """The trials' worker processes are paused (SIGSTOP) while the server restarts, so the sweep
    cannot end first whatever the machine's load: the driver must notice the server is back by
    itself, during the sweep, and record the backlog before training resumes."""
    epochs = 30  # wide layers: trials that outlast the outage even on an idle machine
    spec = write_spec(tmp_path, "outage-back", server.url, epochs, max_train=4000, model="mlp:1024,1024")
    log = tmp_path / "sweep.log"
    proc = start_sweep(spec, log)
    folder = tmp_path / "runs" / "outage-back"
    workers: set[int] = set()
    try:
        killed = kill_after_first_result(server, proc, folder, log)
        trained_while_down = lambda: [r for t in ray_epochs(folder).values() for r in t.values()
                                      if r["timestamp"] > killed + 1]  # noqa: E731
        wait_until("an epoch trained during the outage", trained_while_down, 120, proc, log)
        # pause the trials before anything else: on a fast machine they would finish while the driver
        # is still noticing the outage (the driver itself keeps running)
        workers = {r["pid"] for t in ray_epochs(folder).values() for r in t.values()}
        pause(workers, signal.SIGSTOP)
        wait_until("the outage to be noticed", lambda: "is unreachable" in log.read_text(), 120, proc, log)
        server.start()
        wait_until("the driver to find the server back", lambda: "is reachable again" in log.read_text(),
                   60, proc, log)
        pause(workers, signal.SIGCONT)
        assert proc.wait(timeout=400) == 0, log.read_text()[-3000:]
    finally:
        pause(workers, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert "did not record" not in out, out[-3000:]
    rows = ray_epochs(folder)
    assert all(sorted(r) == list(range(1, epochs + 1)) for r in rows.values())
    store, parent, children = sweep_runs(server.url, "outage-back")
    assert_complete(store, parent, children, rows)


def test_server_down_at_the_end_is_one_exact_line_and_sync_records_it(server, tmp_path, capsys,
                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)  # the sync writes the report under ./results
    epochs = 8  # wide layers: trials still running when the server goes, even on an idle machine
    spec = write_spec(tmp_path, "outage-down", server.url, epochs, max_train=3000, model="mlp:1024,1024")
    log = tmp_path / "sweep.log"
    proc = start_sweep(spec, log)
    folder = tmp_path / "runs" / "outage-down"
    try:
        kill_after_first_result(server, proc, folder, log)
        assert proc.wait(timeout=400) == 0, log.read_text()[-3000:]  # an outage is no trial failure
        ended = time.time()
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    rows = ray_epochs(folder)
    assert all(sorted(r) == list(range(1, epochs + 1)) for r in rows.values())
    last_result = max(r["timestamp"] for t in rows.values() for r in t.values())
    assert ended - last_result < 45, "the sweep's end waited on MLflow's retries"
    lines = [line for line in out.splitlines() if "did not record" in line]
    assert len(lines) == 1 and f"dals sweep sync {spec}" in lines[0], out[-3000:]
    metrics, params, _, statuses, artifacts = map(int, NOT_RECORDED.search(lines[0]).groups())
    maybe = in_flight(lines[0])  # the batch a kill cut off mid-request: recorded or not, either way

    server.start()
    store, parent, children = sweep_runs(server.url, "outage-down")
    gaps = len(metric_gaps(store, children, rows))
    assert metrics <= gaps <= metrics + maybe["metrics"] and gaps > 0  # exactly what MLflow lacks
    runs = {c.data.tags[tracking.TAG_KEY]: c for c in children}
    entries = {key: next(iter(r.values()))["config"]["trial"] for key, r in rows.items()}
    wanted = {k: {p.key for p in tracking.run_params(e)} | set(tracking.RUN_FACTS) for k, e in entries.items()}
    lacking = sum(len(want - set(runs[k].data.params if k in runs else ())) for k, want in wanted.items())
    assert params <= lacking <= params + maybe["params"]
    unended = sum(runs.get(k) is None or runs[k].info.status == "RUNNING" for k in rows)
    assert statuses <= unended + (parent.info.status == "RUNNING") <= statuses + maybe["statuses"]
    assert unended > 0 and artifacts == 1  # the report

    capsys.readouterr()
    assert cli.main(["sweep", "sync", str(spec)]) == 0
    assert f"recorded {gaps} metric values, {lacking} params" in capsys.readouterr().out
    store, parent, children = sweep_runs(server.url, "outage-down")
    assert_complete(store, parent, children, rows)
    assert cli.main(["sweep", "sync", str(spec)]) == 0  # idempotent: nothing left to record
    assert "recorded 0 metric values, 0 params, 0 tags, 0 run statuses, 0 artifact uploads" in \
        capsys.readouterr().out
