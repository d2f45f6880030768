"""`dals ui` and `dals tune dashboard` as a user starts them (the real command, a real server on
127.0.0.1): quiet start-up, links that open MLflow's model-training view, one line for a port in
use; and in a real headless browser (Debian's chromium + chromedriver, driven by selenium) the
sweep's runs, nested, in the model-training view, and a trial's system metrics.

The browser tests skip where chromium, chromedriver or selenium is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from sockets import free_port, loopback_only
from tracked_runs import tracked

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
needs_browser = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs chromium and chromedriver (apt)")


def dals(*args: str, cwd: Path) -> subprocess.Popen:
    """`dals ARGS` in its own process group (the server and its workers end together)."""
    return subprocess.Popen([sys.executable, "-m", "sweeps.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def lines_until(proc: subprocess.Popen, done, limit: int = 20) -> list[str]:
    """stdout lines until `done(lines)` (or the output ends)."""
    out: list[str] = []
    for line in proc.stdout:
        out.append(line.rstrip("\n"))
        if done(out) or len(out) >= limit:
            break
    return out


def stop(proc: subprocess.Popen) -> str:
    """End the command's process group; returns what it wrote to stderr."""
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    return proc.stderr.read()


def descendants(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    found = [int(p) for p in children.read_text().split()] if children.exists() else []
    return found + [d for c in found for d in descendants(c)]


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory) -> Iterator[dict]:
    """`dals ui` on a free port over a tracked sweep's store; yields what it printed and where."""
    folder = tmp_path_factory.mktemp("ui")
    here = os.getcwd()
    os.chdir(folder)
    try:
        store, trials = tracked(folder, text="""
            name: ui-sweep
            grid: {strategies: [sgd, dals], datasets: [synthetic], seeds: [0, 1]}
            defaults: {epochs: 2}
        """, sweep_id="ui-sweep-1")
    finally:
        os.chdir(here)
    port = free_port()
    proc = dals("ui", "--store", store.uri, "--port", str(port), cwd=folder)
    try:
        out = lines_until(proc, lambda lines: any("ui-sweep: " in line for line in lines))
        yield {"proc": proc, "out": out, "port": port, "store": store, "trials": trials,
               "address": f"http://127.0.0.1:{port}"}
    finally:
        stop(proc)


def test_ui_starts_quietly_with_links_to_the_model_training_view(ui_server):
    out, store, port = ui_server["out"], ui_server["store"], ui_server["port"]
    experiment = store.experiment_id()
    assert out == [f"starting the MLflow UI for {store.uri} ...",
                   f"MLflow UI: http://127.0.0.1:{port} (Ctrl+C stops it)",
                   f"  ui-sweep: http://127.0.0.1:{port}/#/experiments/{experiment}?workflowType=machine_learning"]
    with urllib.request.urlopen(f"{ui_server['address']}/health", timeout=10) as answer:
        assert answer.read() == b"OK"
    assert loopback_only(port)
    servers = descendants(ui_server["proc"].pid)
    commands = [Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode() for p in servers]
    assert not [c for c in commands if "huey" in c], commands  # no job-execution workers
    environ = Path(f"/proc/{servers[0]}/environ").read_bytes().split(b"\0")
    assert b"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in environ


def test_ui_on_a_port_in_use_is_one_line(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "sweeps.cli", "ui", "--port", str(port)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"dals: error: port {port} on 127.0.0.1 is in use by another program; " \
                       "pick a free one with --port\n"
    assert os.listdir(tmp_path) == []  # no store, no server started


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for_text(driver, words: list[str], timeout_s: float = 90.0) -> str:
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        text = driver.find_element(By.TAG_NAME, "body").text
        if all(w in text for w in words):
            return text
        time.sleep(0.5)
    raise AssertionError(f"page never showed {words}; it showed: {text[:2000]}")


@needs_browser
def test_the_printed_link_shows_the_sweep_runs_in_the_model_training_view(ui_server, browser):
    from selenium.webdriver.common.by import By

    link = ui_server["out"][-1].split(": ", 1)[1]
    browser.get(link)
    text = wait_for_text(browser, ["ui-sweep", "Run Name", "5 matching runs"])  # parent + 4 children
    assert "workflowType=machine_learning" in browser.current_url and "Usage" not in text  # not GenAI's
    # child runs are nested under the parent: expand it
    browser.find_element(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']").click()
    wait_for_text(browser, [t.slug for t in ui_server["trials"]])


@needs_browser
def test_a_trial_run_shows_its_system_metrics(ui_server, browser):
    store = ui_server["store"]
    client = store.client()
    [child, *_] = [r for r in client.search_runs([store.experiment_id()])
                   if r.data.tags["dals.role"] == "trial"]
    browser.get(f"{ui_server['address']}/#/experiments/{store.experiment_id()}/runs/{child.info.run_id}"
                "/system-metrics")
    wait_for_text(browser, ["System metrics", "cpu_utilization_percentage", "system_memory_usage_megabytes"])


# ----------------------------------------------------------------------------- dals tune dashboard


def journal_with_studies(folder: Path, names: list[str]) -> Path:
    """An Optuna journal file in `folder` holding a finished 3-trial study per name."""
    import optuna

    from sweeps.runner.studies import optuna_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = folder / "optuna-journal.log"
    storage = optuna_storage(str(path))
    for name in names:
        optuna.create_study(study_name=name, storage=storage).optimize(
            lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=3)
    return path


def test_dashboard_serves_a_specs_studies_on_loopback(tmp_path):
    journal_with_studies(tmp_path, ["tune-dals-cpu-scratch", "tune-dals-cpu-finetune", "other"])
    port = free_port()
    proc = dals("tune", "dashboard", "tune-dals-cpu", "--port", str(port), cwd=tmp_path)
    try:
        out = lines_until(proc, lambda lines: len(lines) == 3)
        assert out[0] == f"Optuna dashboard for {tmp_path / 'optuna-journal.log'}: " \
                         f"http://127.0.0.1:{port}/dashboard (Ctrl+C stops it)"
        links = dict(re.fullmatch(r"  (\S+): (\S+)", line).groups() for line in out[1:])
        assert sorted(links) == ["tune-dals-cpu-finetune", "tune-dals-cpu-scratch"]  # the spec's only
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=30) as answer:
            summaries = json.loads(answer.read())["study_summaries"]
        ids = {s["study_name"]: s["study_id"] for s in summaries}
        assert set(ids) == {"tune-dals-cpu-scratch", "tune-dals-cpu-finetune", "other"}
        for name, link in links.items():
            assert link == f"http://127.0.0.1:{port}/dashboard/studies/{ids[name]}"
            with urllib.request.urlopen(link, timeout=30) as answer:
                assert answer.status == 200
        assert loopback_only(port)
        busy = subprocess.run([sys.executable, "-m", "sweeps.cli", "tune", "dashboard", "other",
                               "--port", str(port)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert busy.returncode == 2 and busy.stderr.count("\n") == 1 and f"port {port}" in busy.stderr
    finally:
        assert stop(proc) == ""


def test_dashboard_for_one_study_by_name(tmp_path):
    journal = journal_with_studies(tmp_path, ["s-one"])
    port = free_port()
    proc = dals("tune", "dashboard", "s-one", "--storage", str(journal), "--port", str(port), cwd=tmp_path)
    try:
        out = lines_until(proc, lambda lines: len(lines) == 2)
        assert out[1] == f"  s-one: http://127.0.0.1:{port}/dashboard/studies/0"
    finally:
        stop(proc)
    wrong = subprocess.run([sys.executable, "-m", "sweeps.cli", "tune", "dashboard", "s-on", "--storage",
                            str(journal)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2
    assert wrong.stderr == "dals: error: no study 's-on' (did you mean 's-one'?) in this storage; studies: s-one\n"
