"""What every `dals` command shares: exit codes, one-line errors, argument types."""
from __future__ import annotations

import argparse
import json
import math
import re
from typing import Any, NoReturn, Sequence

from sweeps.redact import redact
from sweeps.spec.common import MAX_SEED

EXIT_FAILED_TRIALS = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
MAX_MESSAGE = 1000  # characters of an error line (a message may quote a huge bad value)


def parse_hp(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs -> dict; values are JSON when they parse (1e-3, true, 5), else strings."""
    hp: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--hp expects key=value, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        hp[key.strip()] = value
    return hp


def one_line(message: str) -> str:
    """The first line of a message, cut to MAX_MESSAGE characters, any URL password masked."""
    line = redact((message.strip().splitlines() or [""])[0])
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 3] + "..."


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (no usage block): `dals sweep run: error: ... (-h: help)`."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {one_line(message)} (see `{self.prog} -h`)\n")


def seed(text: str) -> int:
    """--seed: a whole number the trainers' 32-bit seeding takes."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected 0..{MAX_SEED}, got {value}")
    return value


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 1..65535, got {value}")
    return value


def shipped_specs(kind: str) -> list[str]:
    """The shipped specs (sweeps/specs) of one kind, by name: "tune" (a `tune:` section) or
    "sweep" (the others); read from the files' text, so building the parser stays instant."""
    from sweeps.spec.loader import SPECS_DIR

    def is_tune(path) -> bool:
        return re.search(r"^tune:", path.read_text(errors="replace"), re.MULTILINE) is not None

    return sorted(p.stem for p in SPECS_DIR.glob("*.yaml") if is_tune(p) == (kind == "tune"))


def version() -> str:
    """`dals 0.1.0 (torch 2.14.1, ray 2.60.0, ...)`: this package's version and its main libraries'
    (from their installed metadata: nothing is imported)."""
    from importlib import metadata

    def of(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    libs = ", ".join(f"{n} {of(n)}" for n in ("torch", "ray", "optuna", "mlflow"))
    return f"dals {of('dalsopt')} ({libs})"


def finite(value: Any) -> Any:
    """JSON has no NaN/inf: non-finite floats become null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value
