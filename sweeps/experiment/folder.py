"""The experiment folder of a sweep: its meta, the spec copy, the trials' result rows.

`<storage>/<spec name>` is the sweep's identity: running the same spec again restores it, `fresh`
deletes it first. Beside Ray's files it holds `dals-sweep.json` (sweep id, spec hash, MLflow store)
and a copy of the spec, so a report can be regenerated from the folder alone and a changed spec is
refused, not mixed in.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ray.tune.result import AUTO_RESULT_KEYS

from sweeps.experiment.storage import delete_dir, filesystem, join, read_text, write_text
from sweeps.redact import redact
from sweeps.spec.loader import parse_yaml
from sweeps.spec.sweep import Spec, SpecError, load_spec, parse_spec

META_FILE = "dals-sweep.json"
SPEC_COPY = "dals-spec.yaml"
RESULT_FILE = "result.json"  # Ray's, per trial
PARAMS_FILE = "params.json"  # Ray's, per trial: the trial's config
FINAL_FILE = "dals-final.json"  # per trial, written as Tune ends it (`resume.record_final`)
REPORTED_FILE = "dals-reported.json"  # per trial: epochs reported since its last checkpoint


@dataclass(frozen=True)
class SweepMeta:
    sweep_id: str
    name: str
    spec_hash: str
    tracking_uri: str | None
    experiment: str
    metric: str
    mode: str
    created: float


def experiment_dir(spec: Spec) -> str:
    """`<storage>/<spec name>`: a local path or a URI (its `?query` kept at the end)."""
    return join(spec.storage_path(), spec.name)


def read_meta(folder: str) -> SweepMeta | None:
    text = read_text(folder, META_FILE)
    return SweepMeta(**json.loads(text)) if text else None


def start_or_resume(spec: Spec, spec_file: Path, fresh: bool) -> tuple[SweepMeta, bool]:
    """The sweep's meta (new or the one on disk) and whether an earlier run is being resumed."""
    folder = experiment_dir(spec)
    if fresh:
        delete_dir(folder)
    meta = read_meta(folder)
    if meta is not None:
        if meta.spec_hash != spec.digest:
            raise SpecError(
                f"{spec_file}: the spec changed since sweep {spec.name!r} started in {folder}; "
                "run it with --fresh to start over, or give the spec another name"
            )
        return meta, True
    meta = SweepMeta(
        sweep_id=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}",
        name=spec.name, spec_hash=spec.digest,
        tracking_uri=spec.tracking_uri() if spec.tracking.enabled else None,
        experiment=spec.experiment(), metric=spec.metric, mode=spec.mode, created=time.time(),
    )
    # URI fields hold no credentials (spec validation refuses them); free text (a description)
    # might: the copy, kept in the storage, is masked like every other copy meant for people
    write_text(folder, SPEC_COPY, redact(spec_file.read_text()))
    write_text(folder, META_FILE, json.dumps(asdict(meta), indent=2))
    return meta, False


# ----------------------------------------------------------------------------- result rows


def parse_rows(text: str) -> list[dict[str, Any]]:
    """JSON lines; unreadable ones skipped."""
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def final_record(text: str | None) -> dict[str, Any] | None:
    """A trial's final record (`FINAL_FILE`) parsed, or None when missing or not whole."""
    try:
        record = json.loads(text) if text else None
    except ValueError:
        return None
    return record if isinstance(record, dict) and record.get("history") else None


def own_metrics(row: dict[str, Any]) -> dict[str, Any]:
    """A result row without what Ray adds to it: what the trainable reported."""
    ray_keys = set(AUTO_RESULT_KEYS) | {"done", "should_checkpoint", "trial_id", "experiment_tag"}
    return {k: v for k, v in row.items() if k not in ray_keys}




def sweep_folder(ref: str | Path) -> str:
    """An experiment folder, or a spec (path or shipped name) whose folder it is."""
    if read_meta(str(ref)) is not None:
        return str(ref)
    spec, _ = load_spec(ref, check_trials=False)
    folder = experiment_dir(spec)
    if read_meta(folder) is None:
        raise SpecError(f"{ref}: no sweep has run yet in {folder}")
    return folder


def spec_copy(folder: str) -> Spec:
    """The spec a sweep folder was run with (its copy there), read with YAML's safe loader: a
    tampered copy (a `!!python/...` tag, bad YAML) is one SpecError line, never code run."""
    source = f"{folder}/{SPEC_COPY}"
    return parse_spec(parse_yaml(read_text(folder, SPEC_COPY) or "", source), source, check_trials=False)


def saved_trials(folder: str) -> list:
    """Trials as Tune last saved them in `folder` (what a resume starts from), read from the sweep's
    storage through its filesystem. After Ctrl+C, Tune's in-memory trials show the interrupted ones
    as terminated; the saved state does not."""
    from ray.tune import ExperimentAnalysis

    fs, path = filesystem(folder)
    return ExperimentAnalysis(path, storage_filesystem=fs).trials
