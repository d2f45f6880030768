"""A real S3-compatible server for tests: `moto_server` (moto[server]) on 127.0.0.1 and a free port,
a bucket made with boto3, and the standard AWS variables pointing at it with a fake secret unique to
the test run (so a test can grep everything it wrote for that secret). Stopped with the fixture."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sockets import free_port, loopback_only


@dataclass
class S3Server:
    root: Path
    port: int = field(default_factory=free_port)
    key_id: str = field(default_factory=lambda: f"AKIADALS{uuid.uuid4().hex[:12].upper()}")
    secret: str = field(default_factory=lambda: f"dals-test-secret-{uuid.uuid4().hex}")
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What every S3 client here (pyarrow, boto3, Ray's nodes) reads: endpoint and credentials."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}

    def start(self, timeout_s: float = 180) -> None:  # generous: a loaded machine starts it slowly
        log = (self.root / "moto.log").open("ab")
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1",
                                      "-p", str(self.port)], stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not self.up():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()  # not left running behind a failed test
                raise AssertionError(f"moto_server on port {self.port} not up after {timeout_s} s: "
                                     + (self.root / "moto.log").read_text()[-2000:])
            time.sleep(0.2)
        assert loopback_only(self.port)

    def up(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.key_id, aws_secret_access_key=self.secret)

    def bucket(self, name: str | None = None) -> str:
        """A new bucket; returns its name."""
        name = name or f"dals-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str) -> dict[str, bytes]:
        """Every object in the bucket: key -> bytes."""
        s3, out = self.client(), {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                out[item["Key"]] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        return out


def running_s3(root: Path) -> Iterator[S3Server]:
    server = S3Server(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(tmp_path_factory, monkeypatch) -> Iterator[S3Server]:
    """A moto S3 server for one test, its AWS variables set for the test (and its subprocesses)."""
    for server in running_s3(tmp_path_factory.mktemp("s3")):
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        yield server


# ----------------------------------------------------------------------------- finding the secret


def text_files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (bytes; sqlite databases and pickles included)."""
    return {str(p): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def leaks(secrets: list[str], blobs: dict[str, bytes]) -> list[str]:
    """The names of the blobs that hold any of `secrets`."""
    needles = [s.encode() for s in secrets]
    return sorted(name for name, data in blobs.items() if any(n in data for n in needles))


def mlflow_values(uri: str) -> dict[str, str]:
    """Every param and tag (keys and values) of every run in the MLflow store at `uri`."""
    from mlflow.tracking import MlflowClient

    client, out = MlflowClient(uri), {}
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], max_results=5000):
            for kind, values in (("param", run.data.params), ("tag", run.data.tags)):
                for k, v in values.items():
                    out[f"{run.info.run_id} {kind} {k}"] = f"{k}={v}"
    return out
