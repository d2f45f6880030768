"""The files in cluster/ parse and carry what Ray's cluster launcher, KubeRay and the tracking services
need, checked offline: Ray's own config validation (its JSON schema + cross-field checks), the keys
KubeRay's RayJob CRD requires, and the wiring between the services (ports, selectors, databases, pins)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"


def load(name: str):
    return yaml.safe_load((CLUSTER / name).read_text())


def pin(package: str) -> str:
    """The version requirements.txt pins for `package`."""
    found = re.search(rf"^{re.escape(package)}(\[[^\]]*\])?==(\S+)", (REPO / "requirements.txt").read_text(), re.M)
    assert found, f"requirements.txt does not pin {package}"
    return found.group(2)


def test_ray_up_file_passes_rays_validation():
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    config = load("aws-gpu.yaml")
    validate_config(fillout_defaults(config))  # ray-schema.json + head/worker type checks
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    gpu = [t for name, t in types.items() if name != config["head_node_type"] and t["resources"].get("GPU")]
    assert gpu and all(t["max_workers"] > t.get("min_workers", 0) for t in gpu), "an autoscaling GPU worker type"
    assert config["head_start_ray_commands"] and config["worker_start_ray_commands"]


def test_ray_up_file_installs_this_checkout_with_the_pinned_torch():
    config = load("aws-gpu.yaml")
    (remote, local), = config["file_mounts"].items()
    assert local in ("./", ".") and ".venv" in config["rsync_exclude"]
    setup = "\n".join(config["setup_commands"])
    assert f"torch=={pin('torch')}" in setup and f"torchvision=={pin('torchvision')}" in setup
    assert f"-r {remote}/requirements.txt" in setup and f"-e {remote}" in setup
    assert f"rayproject/ray:{pin('ray')}" in config["docker"]["image"]


def test_rayjob_has_what_kuberay_requires():
    job = load("rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert spec["entrypoint"] and spec["shutdownAfterJobFinishes"] is True
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == pin("ray")
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict) and head["template"]["spec"]["containers"][0]["image"]
    assert cluster["workerGroupSpecs"]
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        container = group["template"]["spec"]["containers"][0]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    # every volume a container mounts is declared in its pod
    for pod in [head["template"]["spec"], *(g["template"]["spec"] for g in cluster["workerGroupSpecs"])]:
        declared = {v["name"] for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            assert {m["name"] for m in c.get("volumeMounts", [])} <= declared


def test_rayjob_entrypoint_is_a_dals_command():
    from sweeps.cli.main import build_parser

    argv = load("rayjob.yaml")["spec"]["entrypoint"].split()
    assert argv[:3] == ["python", "-m", "sweeps.cli"]
    args = build_parser().parse_args(argv[3:])
    assert (args.command, args.sweep_command) == ("sweep", "run")


def test_compose_runs_mlflow_on_postgres_with_an_optuna_database():
    compose = load("tracking/compose.yaml")
    services = compose["services"]
    assert set(services) >= {"postgres", "mlflow"}
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    command = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri postgresql+psycopg://" in command and "@postgres:5432/mlflow" in command
    assert "--artifacts-destination" in command
    assert services["postgres"]["environment"]["POSTGRES_DB"] == "mlflow"
    init = compose["configs"][services["postgres"]["configs"][0]["source"]]["content"]
    assert "CREATE DATABASE optuna" in init
    assert set(compose["volumes"]) >= {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])}


def test_kubernetes_tracking_manifests_fit_together():
    docs = [d for d in yaml.safe_load_all((CLUSTER / "tracking" / "k8s.yaml").read_text()) if d]
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    for key in [("StatefulSet", "postgres"), ("Service", "postgres"), ("Deployment", "mlflow"),
                ("Service", "mlflow"), ("ConfigMap", "postgres-init"), ("Secret", "postgres")]:
        assert key in by_kind, key
    namespace = by_kind[("Namespace", "dals-tracking")]["metadata"]["name"]
    for d in docs:
        assert d["kind"] == "Namespace" or d["metadata"]["namespace"] == namespace
        if d["kind"] in ("StatefulSet", "Deployment"):
            labels = d["spec"]["template"]["metadata"]["labels"]
            assert d["spec"]["selector"]["matchLabels"].items() <= labels.items()
            service = by_kind[("Service", d["metadata"]["name"])]
            assert service["spec"]["selector"].items() <= labels.items()
            port = service["spec"]["ports"][0]["targetPort"]
            assert port in [p["containerPort"] for p in d["spec"]["template"]["spec"]["containers"][0]["ports"]]
    args = " ".join(by_kind[("Deployment", "mlflow")]["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "postgresql+psycopg://" in args and "@postgres:5432/mlflow" in args and "--artifacts-destination" in args
    assert "CREATE DATABASE optuna" in by_kind[("ConfigMap", "postgres-init")]["data"]["10-optuna.sql"]


@pytest.mark.parametrize("name", ["tracking/compose.yaml", "tracking/k8s.yaml", "aws-gpu.yaml"])
def test_one_postgres_driver_pin_everywhere(name):
    from importlib.metadata import PackageNotFoundError, version

    pins = set(re.findall(r"psycopg\[binary\]==(\S+?)[\"\s]", (CLUSTER / name).read_text()))
    assert len(pins) == 1, pins
    try:
        assert pins == {version("psycopg")}, "cluster files and this environment disagree on psycopg"
    except PackageNotFoundError:
        pytest.fail("psycopg is not installed: requirements.txt must pin psycopg[binary] (the local cluster needs it)")
