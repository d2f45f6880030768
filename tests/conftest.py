"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One real `mlflow server` (SQLite, 127.0.0.1) for the session's tracking tests; a test that
    kills it leaves it down, so users call `ensure_up()` first."""
    from mlflow_server import Server
    from sockets import free_port

    server = Server(tmp_path_factory.mktemp("mlflow-server"), free_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()
