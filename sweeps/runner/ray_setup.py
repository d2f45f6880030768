"""Ray set-up shared by sweeps and tuning: the Ray runtime and the one ASHA factory."""

from __future__ import annotations

import logging
import os
from typing import Any

from sweeps.spec.common import Asha


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Local Ray (no dashboard, worker logs kept off the terminal) or a cluster at `address`."""
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune snapshots its state whenever a trial has saved `num_to_keep` checkpoints: good for
    # resume, cheap at our trial sizes, and not worth a warning each time.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Failed trials get one line from ProgressCallback (error and traceback file), not Tune's
    # traceback on the terminal.
    for name in ("ray.tune.execution.tune_controller", "ray.tune.tune"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    keep_credentials_home()
    snapshot_what_changed()
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.ERROR)
    if address:
        ray.init(address=address, **kwargs)
    else:
        # No worker_process_setup_hook importing torch early: torch would fix its thread count
        # before Ray sets OMP_NUM_THREADS for the trial, and two trials on two cores would each
        # run two threads (measured: 4x slower epochs).
        ray.init(include_dashboard=False, num_cpus=num_cpus, **kwargs)


def keep_credentials_home() -> None:
    """Stop Ray Tune copying the driver's AWS keys into every trial actor's runtime env: Ray's
    runtime-env agent logs that env in full (the session logs) and the state API shows it. Trial
    workers read the keys where the driver does: a local Ray's workers inherit this process's
    environment, a cluster's nodes have their own (instance profile, a secret, their environment)."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE -= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                          "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"}


def snapshot_what_changed() -> None:
    """Ray's experiment snapshots (every trial's files, copied from the driver's staging folder
    to storage) copy only the files that changed (`storage.upload_changed`): Ray copies them all,
    and over a sweep that grows with the square of its trials (measured: 180 tiny trials, the
    driver's system time 14x that of 36). Ray 2.60 takes no syncer of ours (`SyncConfig` has no
    such field), so its storage syncer's upload command is replaced, in this driver only."""
    from ray.train._internal.storage import _FilesystemSyncer

    from sweeps.experiment.storage import upload_changed

    def _sync_up_command(self, local_path: str, uri: str, exclude: list | None = None):
        return upload_changed, dict(local_path=local_path, fs=self.storage_filesystem, fs_path=uri,
                                    exclude=exclude)

    _FilesystemSyncer._sync_up_command = _sync_up_command


def scheduler(asha: Asha, max_t: int):
    """The spec's ASHA scheduler over epochs (None when off): a sweep's `scheduler`, a study's
    `pruning`."""
    if asha.type != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="epoch", max_t=max_t, grace_period=min(asha.grace_period, max_t),
                         reduction_factor=asha.reduction_factor)
