""""Did you mean ...?" for a mistyped name (a strategy, dataset, spec or spec key): the closest
known names by `difflib`'s similarity, so a one-line error also says what was probably meant."""

from __future__ import annotations

import difflib
from typing import Iterable


def did_you_mean(word: object, known: Iterable[str], cutoff: float = 0.6) -> str:
    """` (did you mean 'dals'?)`, or `''` when no known name is close; goes after the quoted word."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=cutoff)
    if not close:
        return ""
    return f" (did you mean {close[0]!r}?)"
