"""`dals tune dashboard`: optuna-dashboard on a tuning spec's Optuna storage (its journal file or
RDB URL), on the loopback interface only (the dashboard has no login; use an SSH tunnel to reach
it from elsewhere). The storage is opened the way the studies were written (`optuna_storage`), so
a journal file needs no storage-class hint, and a password in an RDB URL is never printed."""

from __future__ import annotations

import logging
import socketserver
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from sweeps.redact import redact
from sweeps.runner.studies import optuna_storage
from sweeps.spec.common import SpecError
from sweeps.tracking.ui import check_port
from sweeps.train.hints import did_you_mean

HOST = "127.0.0.1"
DEFAULT_PORT = 8080


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a browser's open connection never holds Ctrl+C up


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # no access log on the terminal
        pass


def check_storage(url: str) -> None:
    """A journal file or SQLite database that does not exist holds no study (opening one would
    create it): refuse, in one line."""
    file = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None if "://" in url else url
    if file is not None and not Path(file).is_file():
        raise SpecError(f"no Optuna storage at {file}: no study has run there yet "
                        "(run `dals tune run SPEC` first, or give --spec or --storage)")


def study_ids(storage, names: list[str] | None) -> dict[str, int]:
    """Study name -> the id the dashboard's URLs use: `names` (each must exist), or all of them."""
    import optuna

    have = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    for name in names or []:
        if name not in have:
            known = ", ".join(sorted(have)) or "none"
            raise SpecError(f"no study {name!r}{did_you_mean(name, have)} in this storage; studies: {known}")
    return {n: storage.get_study_id_from_name(n) for n in (have if names is None else names)}


def serve_dashboard(url: str, studies: list[str] | None, port: int = DEFAULT_PORT, say=print) -> int:
    """Serve optuna-dashboard for the storage at `url` until Ctrl+C, printing a link per study
    (`studies`, or every study in the storage)."""
    import optuna

    try:
        import optuna_dashboard
    except ImportError:
        raise ValueError("optuna-dashboard is not installed here: `pip install optuna-dashboard` "
                         "(requirements.txt pins the tested version)") from None
    check_storage(url)
    check_port(HOST, port)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna_dashboard").setLevel(logging.WARNING)
    storage = optuna_storage(url)
    ids = study_ids(storage, studies)
    server = make_server(HOST, port, optuna_dashboard.wsgi(storage), server_class=_Server,
                         handler_class=_QuietHandler)
    base = f"http://{HOST}:{port}"
    say(f"Optuna dashboard for {redact(url)}: {base}/dashboard (Ctrl+C stops it)", flush=True)
    for name, study_id in ids.items():
        say(f"  {name}: {base}/dashboard/studies/{study_id}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
