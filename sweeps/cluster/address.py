"""Ray addresses as users type them: checked before anything starts, so a typo is one line."""
from __future__ import annotations

from urllib.parse import urlsplit


def check_address(address: str, flag: str = "--address") -> str:
    """`auto`, `local`, HOST:PORT or SCHEME://HOST[:PORT]; ValueError naming the flag otherwise, so a
    typo fails here rather than after a sweep has made its folders and MLflow run."""
    if address in ("auto", "local"):
        return address
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if not parts.hostname or port == -1 or any(c.isspace() for c in address) or parts.path not in ("", "/"):
        raise ValueError(f"{flag} {address!r}: expected HOST:PORT, SCHEME://HOST:PORT, auto or local")
    return address
