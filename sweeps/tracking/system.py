"""The trial worker's system metrics, sampled by the trainable once per epoch and reported with the
epoch's own metrics, under MLflow's system-metric names (`system/cpu_utilization_percentage`,
`system/gpu_0_memory_usage_megabytes`, ...), so the driver's MLflow callback logs them like any
metric and the run page's "System metrics" tab charts them (it shows every `system/` key).

Why not MLflow's own system-metrics monitor: it logs from a thread in the process that owns the
run, and here only the driver writes to MLflow (a SQLite store has one writer; workers may sit on
other machines). This module never imports MLflow.
"""

from __future__ import annotations

PREFIX = "system/"


class SystemSampler:
    """CPU (the machine's mean over the epoch), memory, and each GPU this process has used
    (memory; utilization and power when NVML's bindings, `nvidia-ml-py`, are installed)."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        psutil.cpu_percent(None)  # starts the window the first sample's CPU mean covers

    def sample(self) -> dict[str, float]:
        memory = self._psutil.virtual_memory()
        out = {"cpu_utilization_percentage": self._psutil.cpu_percent(None),
               "system_memory_usage_megabytes": memory.used / 1e6,
               "system_memory_usage_percentage": memory.used / memory.total * 100}
        out.update(gpu_metrics())
        return {PREFIX + k: round(float(v), 1) for k, v in out.items()}


def gpu_metrics() -> dict[str, float]:
    """Per GPU this process has opened (a CPU trial opens none: CUDA is never started here)."""
    import torch

    if not torch.cuda.is_initialized():
        return {}
    out: dict[str, float] = {}
    for i in range(torch.cuda.device_count()):
        if torch.cuda.memory_reserved(i) == 0:  # not used by this trial
            continue
        free, total = torch.cuda.mem_get_info(i)
        out[f"gpu_{i}_memory_usage_megabytes"] = (total - free) / 1e6
        out[f"gpu_{i}_memory_usage_percentage"] = (total - free) / total * 100
        for name, read in (("utilization_percentage", torch.cuda.utilization),
                           ("power_usage_watts", lambda d: torch.cuda.power_draw(d) / 1000)):
            try:
                out[f"gpu_{i}_{name}"] = float(read(i))
            except Exception:  # noqa: BLE001 - no NVML bindings, or a GPU without the counter
                pass
    return out
