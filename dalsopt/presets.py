"""Tuned presets: ``strategy@preset`` names whose hyperparameters come from a JSON file.

A preset file ``dalsopt/presets/<strategy>@<preset>.json`` holds ``{"strategy": ..., "preset": ...,
"hyperparameters": {...}, "source": {...}}`` (``source`` says which study produced it). ``dals tune
export`` writes them; ``dalsopt.make("dals@finetune", ...)`` reads them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["DIRECTORY", "names", "load", "path"]

# DALSOPT_PRESETS=DIR: presets are read from and written to DIR instead of the package's folder (an
# installed package may not be writable; a test's `dals search` subprocess exports into its own folder)
DIRECTORY = Path(os.environ.get("DALSOPT_PRESETS") or Path(__file__).with_name("presets"))


def names() -> list[str]:
    return sorted(p.stem for p in DIRECTORY.glob("*@*.json"))


def path(name: str) -> Path:
    return DIRECTORY / f"{name}.json"


def load(name: str) -> dict:
    """The hyperparameters of preset ``name`` (e.g. ``dals@finetune``)."""
    file = path(name)
    if not file.is_file():
        known = ", ".join(names()) or "none"
        raise ValueError(f"unknown preset {name!r}; known presets: {known}")
    data = json.loads(file.read_text())
    if data.get("strategy") != name.split("@", 1)[0]:
        raise ValueError(f"preset file {file} is for strategy {data.get('strategy')!r}, not {name.split('@')[0]!r}")
    return dict(data["hyperparameters"])
