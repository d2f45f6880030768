"""Secrets out of what the sweep service prints, logs and tracks.

A tracking URI or an Optuna storage may carry a password (`postgresql://user:secret@host/db`,
`http://user:secret@mlflow:5000`, `...?password=secret`). The real URI is used to connect; every
copy meant for people (terminal lines, warnings, MLflow params and artifacts, reports) goes
through :func:`redact`, which keeps the user name and host and masks the secret as `***`.
"""

from __future__ import annotations

import re

MASK = "***"
# scheme://user:password@ — RFC 3986 userinfo holds no unencoded '/', '?', '#' or '@'
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*:)(?P<secret>[^/?#@\s]+)@")
# ?password=... / &token=... (psycopg and some SQLAlchemy dialects take credentials as query args)
_QUERY = re.compile(r"(?i)(?P<head>[?&](?:password|passwd|pwd|token|secret|api_key|access_key|"
                    r"secret_key|sslpassword)=)(?P<secret>[^&#\s'\"]+)")


def redact(text: str) -> str:
    """`text` with every URL password and credential query value replaced by `***`."""
    text = _USERINFO.sub(lambda m: f"{m['head']}{MASK}@", text)
    return _QUERY.sub(lambda m: f"{m['head']}{MASK}", text)
