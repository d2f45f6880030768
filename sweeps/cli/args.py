"""What every `dals` command shares: exit codes, one-line errors, argument types."""
from __future__ import annotations

import argparse
import json
import math
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


def finite(value: Any) -> Any:
    """JSON has no NaN/inf: non-finite floats become null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value
