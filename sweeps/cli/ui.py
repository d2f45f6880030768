"""`dals ui`: the MLflow UI for the sweeps' tracking store, on 127.0.0.1 by default."""
from __future__ import annotations

import argparse

from sweeps.cli.args import port
from sweeps.spec.sweep import load_spec
from sweeps.tracking.ui import DEFAULT_HOST, DEFAULT_PORT, serve, store_uri


def _ui(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec, check_trials=False)[0] if args.spec else None
    return serve(store_uri(spec, args.store), host=args.host, port=args.port)


def register(subparsers: argparse._SubParsersAction) -> None:
    ui = subparsers.add_parser("ui", help="start the MLflow UI for the sweeps' tracking store (127.0.0.1)")
    ui.add_argument("--store", default=None, help="MLflow tracking URI (default: sqlite:///./mlflow.db)")
    ui.add_argument("--spec", default=None, help="use this spec's tracking URI")
    ui.add_argument("--port", type=port, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    ui.add_argument("--host", default=DEFAULT_HOST,
                    help=f"interface to listen on (default {DEFAULT_HOST}: this machine only; the UI "
                         "has no login, so prefer an SSH tunnel to 0.0.0.0)")
    ui.set_defaults(func=_ui)
