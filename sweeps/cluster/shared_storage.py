"""Where a sweep may keep its state when it runs on a cluster.

Ray Tune syncs every trial's checkpoints to `storage_path`, and trials run on many nodes: a plain
local path is a different, private folder on each node, so multi-node runs need object storage
(s3://, gs://, ...) or a filesystem mounted on every node (NFS, EFS, a PVC). Likewise MLflow needs a
server every node can reach. These checks run before anything is submitted, as one-line errors.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from sweeps.experiment.storage import is_local_path

SHARED_ENV = "DALS_SHARED_STORAGE"  # os.pathsep-separated folders mounted on every node
LOCAL_HOSTS = frozenset({"", "localhost", "127.0.0.1", "::1", "0.0.0.0"})
LOCAL_ADDRESSES = frozenset({"local", "auto"})


def is_remote_address(address: str | None) -> bool:
    """True when `address` (a Ray address or a dashboard URL) names another machine's cluster."""
    if address is None or address.strip() in LOCAL_ADDRESSES | {""}:
        return False
    host = urlsplit(address if "://" in address else f"ray://{address}").hostname or ""
    return host not in LOCAL_HOSTS and not host.startswith("127.")


def declared_shared(extra: Iterable[str] = ()) -> list[Path]:
    """Folders the user declares mounted on every node: `extra` plus $DALS_SHARED_STORAGE."""
    listed = [p for p in os.environ.get(SHARED_ENV, "").split(os.pathsep) if p]
    return [Path(p).expanduser().absolute() for p in [*extra, *listed]]


def check_storage_for_address(storage_path: str, address: str | None, shared: Iterable[str] = (),
                              multi_host: bool = False) -> None:
    """ValueError (one line) when a remote cluster would get a node-local `storage_path`.
    `multi_host`: the cluster is known to span machines even though its address looks local
    (a dashboard reached through an SSH tunnel, `ray dashboard cluster.yaml`)."""
    if not is_local_path(storage_path) or not (multi_host or is_remote_address(address)):
        return
    if "://" in storage_path:  # file:///mnt/shared/runs: a local path too
        storage_path = urlsplit(storage_path).path
    path = Path(storage_path).expanduser().absolute()
    if any(path == root or root in path.parents for root in declared_shared(shared)):
        return
    raise ValueError(
        f"storage: {storage_path!r} is a local path, but the cluster at {address} has several nodes; "
        f"use object storage (s3://..., gs://...) or a folder mounted on every node, declared with "
        f"--shared-storage or ${SHARED_ENV}"
    )


def check_tracking_for_address(tracking_uri: str | None, address: str | None, multi_host: bool = False) -> None:
    """ValueError (one line) when a remote cluster would track into a file on its head node."""
    if not (multi_host or is_remote_address(address)):
        return
    scheme = urlsplit(tracking_uri).scheme if tracking_uri else ""
    if scheme in ("", "file", "sqlite"):
        raise ValueError(
            f"tracking.uri: {tracking_uri or 'the default SQLite file'} would live on the cluster's head "
            f"node and vanish with it; point tracking.uri at an MLflow server (http://...), see cluster/README.md"
        )
