"""Credentials stay in the environment: a URI in a spec or on the command line that carries a
password or a key is refused, in one line that says where the credential goes instead.

A URI given to the sweep service is copied into places meant to be shared or kept: the spec copy
and the sweep's meta in the experiment folder (a bucket, for a cluster), Ray's experiment state
and trial paths, MLflow params, the job a cluster runs, exported presets. Masking each copy is a
game of whack-a-mole; a URI without the secret has nothing to mask. Every client this service
uses reads its credentials from the environment or the machine:
S3 (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, an instance profile or IRSA),
GCS (`GOOGLE_APPLICATION_CREDENTIALS`, the node's service account), PostgreSQL (`PGPASSWORD`,
`~/.pgpass`), MLflow's HTTP server (`MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD`,
`MLFLOW_TRACKING_TOKEN`).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

WHERE = ("credentials go in the environment or the machine, never in a spec, flag or URI: "
         "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an instance profile (s3://), "
         "GOOGLE_APPLICATION_CREDENTIALS (gs://), PGPASSWORD (PostgreSQL), "
         "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD (MLflow)")
# query keys that carry a secret (pyarrow's S3/GCS URIs, psycopg/SQLAlchemy, tokens)
SECRET_QUERY = re.compile(r"(?i)^(password|passwd|pwd|sslpassword|secret|secret_key|secret_access_key|"
                          r"access_key|access_key_id|session_token|security_token|access_token|"
                          r"token|api_key|apikey|credentials?|sig|signature)$")
# environment variables a job must not carry (Ray's Jobs API shows a job's env to anyone who lists jobs)
SECRET_NAME = re.compile(r"(?i)(password|passwd|secret|token|credential|private_key|api_key|access_key)")


def credential_in(uri: str) -> str | None:
    """What secret `uri` carries ("a password", "the query key 'secret_key'"), or None."""
    if "://" not in uri:
        return None
    try:
        parts = urlsplit(uri)
        password = parts.password
    except ValueError:  # a malformed port or host: not ours to judge here
        return None
    if password:
        return "a password (user:PASSWORD@)"
    if parts.username and parts.scheme in ("s3", "gs", "gcs", "s3a", "s3n", "abfs", "az"):
        return "an access key (KEY@)"
    for key, _ in parse_qsl(parts.query, keep_blank_values=True):
        if SECRET_QUERY.match(key):
            return f"the query key {key!r}"
    return None


def refuse_credentials(uri: str | None, where: str) -> None:
    """ValueError (one line, naming `where`) when `uri` carries a secret; the secret not shown."""
    found = credential_in(uri or "")
    if found:
        raise ValueError(f"{where + ': ' if where else ''}the URI holds {found}; {WHERE}")


def no_credentials(uri: str | None) -> str | None:
    """A spec field validator: `uri` unchanged, or the ValueError of `refuse_credentials` (pydantic
    puts the key in front)."""
    refuse_credentials(uri, "")
    return uri


def refuse_secret_env(name: str, where: str) -> None:
    """ValueError when an environment variable handed to a job is named like a secret."""
    if SECRET_NAME.search(name):
        raise ValueError(f"{where}: {name} looks like a credential, and a job's environment is shown to "
                         f"anyone who can list the cluster's jobs; set it on the cluster's nodes instead "
                         f"(instance profile, a Kubernetes secret, the nodes' environment); {WHERE}")
