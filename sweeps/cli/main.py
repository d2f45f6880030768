"""The `dals` command line: the parser, `main`, and the entry a submitted Ray Job runs.

Bad input (a bad argument, `ValueError`, `OSError`) is one `dals...: error: ...` line on stderr,
exit 2, before anything starts: no traceback, no Ray, no files.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from sweeps.cli import jobs, search, sweep, train, tune, ui
from sweeps.cli.args import EXIT_BAD_INPUT, EXIT_INTERRUPTED, Parser, one_line, version
from sweeps.cluster.jobs import JOB_COMMAND

COMMANDS = (train.register, sweep.register_sweep, sweep.register_report, ui.register, tune.register,
            search.register, jobs.register)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="dals", description="Learning-rate strategies, trials and sweeps.")
    parser.add_argument("--version", action="version", version=version(),
                        help="print the versions of dals and its main libraries, and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `dals` console script; returns the exit code (argparse's too: -h is 0)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as exc:  # OSError: an unreadable file, a folder given for a file...
        print(f"dals: error: {one_line(str(exc)) or type(exc).__name__}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("dals: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def job_main(argv: list[str]) -> int:
    """On the cluster (`python -m sweeps.cli.main job KIND SPEC ...`): run `dals KIND run SPEC ...`
    on the spec file the job carries in its working dir (`sweeps.cluster.jobs.carried_spec`)."""
    kind, spec, *rest = argv
    if not Path(spec).is_file():
        print(f"dals job: {spec}: no such spec in the job's working dir {os.getcwd()} (this entry point "
              "runs inside a job that `dals sweep|tune submit` made)", file=sys.stderr)
        return EXIT_BAD_INPUT
    return main([kind, "run", spec, *rest])


if __name__ == "__main__":
    sys.exit(job_main(sys.argv[2:]) if sys.argv[1:2] == [JOB_COMMAND] else main())
