"""`dals ui` in a real headless browser (Debian's chromium + chromedriver, driven by selenium):
the sweep's parent run is listed, and expanding it lists one child run per trial.

Skipped where chromium, chromedriver or selenium is missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from sweeps.tracking import store as tracking
from sweeps.runner.grid import trial_entry
from sweeps.spec.sweep import load_spec

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow, pytest.mark.timeout(300),
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs chromium and chromedriver (apt)"),
]
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tracked_sweep(tmp_path: Path) -> tuple[tracking.Store, list[str]]:
    """A sweep's MLflow runs, written by the real callback from stand-in Tune trials."""
    path = tmp_path / "ui.yaml"
    path.write_text(textwrap.dedent("""
        name: ui-sweep
        grid: {strategies: [sgd, dals], datasets: [synthetic], seeds: [0, 1]}
        defaults: {epochs: 2}
    """))
    spec, _ = load_spec(path)
    store = tracking.Store(spec.tracking_uri(), spec.experiment())
    tracking.open_parent(store, "ui-sweep-1", spec.name, spec.digest, path, {"trials": 4})
    callback = tracking.MlflowCallback(store, "ui-sweep-1")
    callback.setup()
    for i, t in enumerate(spec.trials()):
        trial = SimpleNamespace(trial_id=f"t{i}", config={"trial": trial_entry(t)}, last_result=None)
        callback.on_trial_start(0, [], trial)
        for epoch in (1, 2):
            trial.last_result = {"epoch": epoch, "eval_accuracy": 0.5 + 0.1 * epoch, "status":
                                 "finished" if epoch == 2 else "running"}
            callback.on_trial_result(0, [], trial, trial.last_result)
        callback.on_trial_complete(0, [], trial)
    callback.flush()
    return store, [t.slug for t in spec.trials()]


@pytest.fixture
def ui_server(tmp_path, monkeypatch):
    """`dals ui` on a free port; yields (address, store, child run names)."""
    monkeypatch.chdir(tmp_path)
    store, children = tracked_sweep(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeps.cli", "ui", "--store", store.uri, "--port", str(port)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True,  # its own process group: the UI and its server workers end together
    )
    try:
        address = None
        for line in proc.stdout:  # `dals ui` prints the address once the UI answers
            if line.startswith("MLflow UI: "):
                address = line.split()[2]
                break
        assert address == f"http://127.0.0.1:{port}", "dals ui did not report its address"
        yield address, store, children
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for_text(driver, words: list[str], timeout_s: float = 90.0) -> str:
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        text = driver.find_element(By.TAG_NAME, "body").text
        if all(w in text for w in words):
            return text
        time.sleep(0.5)
    raise AssertionError(f"page never showed {words}; it showed: {text[:2000]}")


def test_dals_ui_lists_the_sweep_runs(ui_server, browser):
    address, store, children = ui_server
    experiment_id = store.experiment_id()
    browser.get(f"{address}/#/experiments/{experiment_id}/runs")
    wait_for_text(browser, ["ui-sweep", "Run Name", "5 matching runs"])  # parent + 4 children
    # child runs are nested under the parent: expand it
    browser.find_element(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']").click()
    wait_for_text(browser, children)
