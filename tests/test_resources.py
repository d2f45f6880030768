"""Resources nobody has (issue 14): a spec whose trial no node can ever hold is one line and exit 2,
before any trial starts or anything is recorded; GPU shares are validated; a trial pending past a
minute has its reason on the progress line.

The cluster checks run against a real local Ray (this machine: CPUs, no GPU) and the shipped
`ray up` config; the command line runs as a user runs it, in a subprocess.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from spec_files import write_spec
from sweeps.runner import resources
from sweeps.runner.progress import pending_note
from sweeps.spec.common import SpecError
from sweeps.spec.sweep import parse_spec

ROOT = Path(__file__).resolve().parents[1]
GRID = """\
name: needs-gpu
grid: {strategies: [adamw], datasets: [synthetic], seeds: 2}
defaults: {epochs: 1, max_train: 64, max_eval: 64}
resources: {cpu: 1, gpu: GPU}
"""
TUNE = """\
name: needs-gpu-tune
tune:
  strategy: adamw
  datasets: [synthetic]
  space: {lr: {type: float, low: 0.001, high: 0.1, log: true}}
  trials: 2
  concurrency: 1
  seeds: 1
  sampler: {type: tpe, seed: 0}
defaults: {epochs: 1, max_train: 64, max_eval: 64}
resources: {cpu: 1, gpu: 1}
"""
CPU_NODE = {"CPU": 2.0, "memory": 1e10}
GPU_NODE = {"CPU": 4.0, "GPU": 1.0}


# --- what can hold a trial (pure) ---------------------------------------------------------------------

def test_no_node_with_a_gpu_names_resources_gpu():
    line = resources.shortfall({"CPU": 1, "GPU": 1}, resources.Capacity((CPU_NODE,)))
    assert line == ("resources.gpu: a trial asks for 1 GPU on one node, but the most any node of the "
                    "cluster has is 0 (no autoscaler is configured)")


def test_more_cpus_than_any_node_names_resources_cpu():
    line = resources.shortfall({"CPU": 4}, resources.Capacity((CPU_NODE, CPU_NODE)))  # 4 in all, 2 a node
    assert line.startswith("resources.cpu: a trial asks for 4 CPU on one node, but the most any node")


def test_resources_on_different_nodes_are_not_one_trials():
    line = resources.shortfall({"CPU": 4, "GPU": 1}, resources.Capacity(({"CPU": 8.0}, {"CPU": 1.0, "GPU": 1.0})))
    assert line == "resources: a trial asks for 4 CPU and 1 GPU on one node, but no node of the cluster has them together"


def test_what_fits_or_an_autoscaler_can_add_passes():
    ask = {"CPU": 1, "GPU": 0.25}
    assert resources.shortfall(ask, resources.Capacity((GPU_NODE,))) is None
    assert resources.shortfall(ask, resources.Capacity((CPU_NODE,), node_types=(GPU_NODE,))) is None
    assert resources.shortfall(ask, resources.Capacity((CPU_NODE,), unknown_autoscaler=True)) is None
    line = resources.shortfall({"GPU": 2}, resources.Capacity((CPU_NODE,), node_types=(GPU_NODE,)))
    assert line == ("resources.gpu: a trial asks for 2 GPU on one node, but the most any node of the "
                    "cluster or its autoscaler has is 1")


def test_the_shipped_ray_up_config_can_add_gpu_nodes():
    types = resources.bootstrap_node_types((ROOT / "cluster" / "aws-gpu.yaml").read_text())
    assert types is not None and {"CPU": 4.0, "GPU": 1.0} in types
    assert resources.shortfall({"CPU": 1, "GPU": 0.25}, resources.Capacity((CPU_NODE,), types)) is None
    # a node type whose resources the provider fills in is not known here: trusted
    assert resources.bootstrap_node_types("max_workers: 2\navailable_node_types: {w: {node_config: {}}}\n") is None


def test_the_pending_reason_names_what_is_short():
    assert resources.pending_reason({"CPU": 1, "GPU": 1}, {"CPU": 2.0}, {"CPU": 2.0}) == \
        "waiting for 1 GPU per trial (0 free of 0)"
    assert resources.pending_reason({"CPU": 2}, {"CPU": 1.0}, {"CPU": 2.0}) == \
        "waiting for 2 CPU per trial (1 free of 2)"
    assert resources.pending_reason({"CPU": 1}, {"CPU": 2.0}, {"CPU": 2.0}).startswith("the resources are free")


# --- GPU shares in a spec ----------------------------------------------------------------------------

def grid(gpu) -> dict:
    import yaml

    return yaml.safe_load(GRID.replace("GPU", str(gpu)))


@pytest.mark.parametrize("gpu", [0, 0.25, 0.5, 1, 2, 4])
def test_gpu_shares_and_whole_gpus_are_accepted(gpu):
    assert parse_spec(grid(gpu), "s.yaml", check_trials=False).resources.gpu == gpu


@pytest.mark.parametrize("gpu, message", [
    (1.5, "resources.gpu: must be 0, a fraction of one GPU in (0, 1] (0.25 packs four trials per GPU) "
          "or a whole number of GPUs, got 1.5"),
    (-0.5, "resources.gpu: Input should be greater than or equal to 0"),
    ("half", "resources.gpu: Input should be a valid number"),
])
def test_a_bad_gpu_share_is_one_line_naming_the_file_and_key(gpu, message):
    with pytest.raises(SpecError) as e:
        parse_spec(grid(gpu), "s.yaml", check_trials=False)
    assert str(e.value).startswith(f"s.yaml: {message}") and "\n" not in str(e.value)


# --- a real local Ray (no GPU here) ------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_ray():
    import ray

    from sweeps.runner.ray_setup import init_ray

    started = not ray.is_initialized()
    init_ray(None, num_cpus=1)
    yield
    if started:
        ray.shutdown()


def no_gpu_here() -> bool:
    import torch

    return not torch.cuda.is_available()


@pytest.mark.timeout(300)
def test_against_this_machines_ray(local_ray, tmp_path, monkeypatch):
    if not no_gpu_here():
        pytest.skip("this machine has a GPU")
    cap = resources.capacity()
    assert cap.node_types is None and not cap.unknown_autoscaler and cap.nodes[0]["CPU"] == 1
    resources.check(1, 0, "s.yaml")
    with pytest.raises(SpecError, match=r"^s\.yaml: resources\.gpu: a trial asks for 1 GPU on one node"):
        resources.check(1, 1, "s.yaml")
    with pytest.raises(SpecError, match=r"^s\.yaml: resources\.cpu: a trial asks for 2 CPU"):
        resources.check(2, 0, "s.yaml")
    # the progress line of a trial pending past the minute (wait shortened)
    waiting = SimpleNamespace(trial_id="t1", status="PENDING",
                              placement_group_factory=SimpleNamespace(required_resources={"CPU": 1.0, "GPU": 1.0}))
    since: dict[str, float] = {}
    assert pending_note([waiting], since, now=100.0) is None
    assert pending_note([waiting], since, now=165.0) == "pending 1:05: waiting for 1 GPU per trial (0 free of 0)"
    assert pending_note([], since, now=170.0) is None and since == {}


@pytest.mark.timeout(300)
def test_run_sweep_and_run_tune_record_nothing(local_ray, tmp_path, monkeypatch):
    if not no_gpu_here():
        pytest.skip("this machine has a GPU")
    from sweeps.runner.grid import run_sweep
    from sweeps.runner.optuna import run_tune
    from sweeps.runner.rerun import run_search
    from sweeps.spec.search import parse_search_spec
    from sweeps.spec.sweep import load_spec
    from sweeps.spec.tune import load_tune_spec

    monkeypatch.chdir(tmp_path)
    spec, path = load_spec(write_spec(tmp_path, GRID.replace("GPU", "1")))
    with pytest.raises(SpecError, match="resources.gpu"):
        run_sweep(spec, path)
    tune, tpath = load_tune_spec(write_spec(tmp_path, TUNE, "tune.yaml"))
    with pytest.raises(SpecError, match="resources.gpu"):
        run_tune(tune, tpath)
    search_file = tmp_path / "search.yaml"
    search_file.write_text(json.dumps({"name": "s", "tune": {"strategies": ["sgd", "adam"], "datasets": ["synthetic"],
                                                             "trials": 2, "top_k": 1}, "resources": {"cpu": 1, "gpu": 1}}))
    with pytest.raises(SpecError, match=r"search\.yaml: resources\.gpu"):
        run_search(parse_search_spec(json.loads(search_file.read_text()), str(search_file)), search_file)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["search.yaml", "spec.yaml", "tune.yaml"]  # no db, runs, journal


@pytest.mark.timeout(300)
def test_dals_sweep_run_with_a_gpu_nobody_has_is_one_line_and_exit_2(tmp_path):
    if not no_gpu_here():
        pytest.skip("this machine has a GPU")
    spec = write_spec(tmp_path, GRID.replace("GPU", "1"))
    script = Path(sys.executable).with_name("dals")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "sweeps.cli"]
    start = time.monotonic()
    r = subprocess.run([*command, "sweep", "run", str(spec)], cwd=tmp_path, capture_output=True, text=True,
                       timeout=240)
    took = time.monotonic() - start
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dals: error: {spec}: resources.gpu: a trial asks for 1 GPU")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]  # no mlflow.db, mlruns, dals-runs
    assert took < 120  # Ray's start-up and the check: seconds, not a wait (generous on a busy machine)
