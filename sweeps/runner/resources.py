"""Can the cluster ever run one trial? Checked before `fit`, so a spec asking for what nobody has
fails in one line instead of waiting forever (Ray's own warning is muted by `logging_level=ERROR`).

A trial is one bundle (`tune.with_resources`): it runs on one node, so the question is whether some
node (alive now, or one an autoscaler can add) holds the whole request. What an autoscaler can add
comes from its cluster config: autoscaler v2 keeps it in the GCS (`ray._private.state`, as Ray Train
reads it), the cluster launcher's v1 leaves `~/ray_bootstrap_config.yaml` on the head node. A v1
autoscaler whose node types are not known here (KubeRay) is trusted: the sweep starts and the
progress line says why trials wait (`pending_reason`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from sweeps.spec.common import SpecError

BOOTSTRAP = Path("~/ray_bootstrap_config.yaml")
NAMES = {"CPU": "cpu", "GPU": "gpu"}  # Ray's resource -> the spec's `resources:` key
Node = Mapping[str, float]


@dataclass(frozen=True)
class Capacity:
    """The nodes a trial could run on: `nodes` alive now; `node_types` an autoscaler can add
    (None: no autoscaler; `unknown_autoscaler`: one runs whose node types are not readable)."""

    nodes: tuple[Node, ...]
    node_types: tuple[Node, ...] | None = None
    unknown_autoscaler: bool = False


def request(cpu: float, gpu: float) -> dict[str, float]:
    """One trial's bundle in Ray's names (what `tune.with_resources` asks for)."""
    return {k: v for k, v in (("CPU", cpu), ("GPU", gpu)) if v > 0}


def holds(node: Node, ask: Mapping[str, float]) -> bool:
    return all(node.get(k, 0.0) >= v for k, v in ask.items())


def shortfall(ask: Mapping[str, float], capacity: Capacity) -> str | None:
    """None when some node (alive or addable) holds `ask`, else why not, in one phrase naming the
    spec's key of the resource nobody has enough of."""
    candidates = [*capacity.nodes, *(capacity.node_types or ())]
    if capacity.unknown_autoscaler or any(holds(n, ask) for n in candidates):
        return None
    short = [k for k in ask if all(n.get(k, 0.0) < ask[k] for n in candidates)]
    key = short[0] if short else next(iter(ask))
    most = max((n.get(key, 0.0) for n in candidates), default=0.0)
    scope = "the cluster" if capacity.node_types is None else "the cluster or its autoscaler"
    if not short:  # each resource exists, never together
        together = " and ".join(f"{v:g} {k}" for k, v in ask.items())
        return f"resources: a trial asks for {together} on one node, but no node of {scope} has them together"
    return (f"resources.{NAMES.get(key, key)}: a trial asks for {ask[key]:g} {key} on one node, but the "
            f"most any node of {scope} has is {most:g}"
            + (" (no autoscaler is configured)" if capacity.node_types is None else ""))


def alive_nodes() -> tuple[Node, ...]:
    import ray

    return tuple(dict(n["Resources"]) for n in ray.nodes() if n.get("Alive"))


def autoscaler_node_types() -> tuple[tuple[Node, ...] | None, bool]:
    """(the node types an autoscaler can add, whether one runs with node types unknown here)."""
    from ray._private import state

    config = state.state.get_cluster_config()  # autoscaler v2
    if config is not None and config.node_group_configs:
        return tuple(dict(g.resources) for g in config.node_group_configs if g.max_count != 0), False
    bootstrap = BOOTSTRAP.expanduser()
    if bootstrap.is_file():  # `ray up`'s v1 autoscaler, on its head node
        types = bootstrap_node_types(bootstrap.read_text())
        return (None, True) if types is None else (types, False)
    return None, v1_autoscaler_running()


def bootstrap_node_types(text: str) -> tuple[Node, ...] | None:
    """The `available_node_types` of a cluster launcher config that may start a worker (their
    `max_workers`, else the config's, above 0); None when a type leaves its resources to the
    provider to fill in (not readable here)."""
    import yaml

    config = yaml.safe_load(text) or {}
    types = [t for t in (config.get("available_node_types") or {}).values()
             if t.get("max_workers", config.get("max_workers", 0))]
    if any(not t.get("resources") for t in types):
        return None
    return tuple({k: float(v) for k, v in t["resources"].items()} for t in types)


def v1_autoscaler_running() -> bool:
    """Whether a v1 autoscaler with node types of its own runs (KubeRay's): Ray's monitor reports
    one everywhere, but without an autoscaling config its node types are read-only, one per node
    and named after it (`node_<id>`, Ray's `format_readonly_node_type`)."""
    from ray._private import ray_constants
    from ray.experimental import internal_kv

    status = internal_kv._internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    try:
        report = json.loads(status).get("autoscaler_report") or {} if status else {}
    except ValueError:
        return False
    mapping = report.get("node_type_mapping") or {}
    return any(kind != f"node_{node}" for node, kind in mapping.items())


def capacity() -> Capacity:
    """What the connected Ray cluster has and can get."""
    types, unknown = autoscaler_node_types()
    return Capacity(alive_nodes(), types, unknown)


def check(cpu: float, gpu: float, source: str) -> None:
    """Raise a one-line `SpecError` (exit 2) when no node can ever hold one trial of `source`."""
    reason = shortfall(request(cpu, gpu), capacity())
    if reason is not None:
        raise SpecError(f"{source}: {reason}; lower it or run on a cluster that has it (--address)")


def pending_reason(ask: Mapping[str, float], free: Mapping[str, Any], total: Mapping[str, Any]) -> str:
    """Why a trial waits, for the progress line: the first resource with less free than it asks."""
    for key, value in ask.items():
        if float(free.get(key, 0.0)) < value:
            return (f"waiting for {value:g} {key} per trial ({float(free.get(key, 0.0)):g} free of "
                    f"{float(total.get(key, 0.0)):g})")
    return "the resources are free: held back by max_concurrent or Ray's scheduling"



def preload_mlflow() -> None:
    """Import MLflow's SQL store while Ray starts: the check comes before anything is recorded, so
    the first MLflow write follows Ray's start-up instead of overlapping it; its imports still can."""
    import importlib

    for name in ("mlflow.tracking", "mlflow.store.tracking.sqlalchemy_store", "mlflow.store.db.utils"):
        importlib.import_module(name)
