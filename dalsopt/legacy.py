"""Loading ``Chain`` checkpoints written before each transform kept its state under its own name.

Until dalsopt 0.1.0 the per-parameter buffers had bare keys (``momentum_buffer``, ``filter``,
``grokfast_ema``, ``exp_avg``, ``exp_avg_sq``, ``step``) and DALS's phase detector was a "monitor"
(``state_dict()["monitors"]``) holding Python numbers. ``upgrade`` renames them and turns the detector's
numbers into its tensors, so sweeps checkpointed before the change resume.
"""
from __future__ import annotations

import torch

__all__ = ["upgrade"]

# bare key -> the (transform, buffer) pairs it may belong to; the first transform in the chain wins
_OWNERS = {
    "momentum_buffer": (("momentum", "buffer"),),
    "filter": (("depth_filter", "ema"),),
    "grokfast_ema": (("grokfast", "ema"),),
    "exp_avg": (("lion", "exp_avg"), ("adabound", "exp_avg")),
    "exp_avg_sq": (("adabound", "exp_avg_sq"),),
    "step": (("adabound", "step"),),
}


def _rename(state: dict, names: list[str]) -> dict:
    out = {}
    for key, value in state.items():
        owner = next((f"{t}.{b}" for t, b in _OWNERS.get(key, ()) if t in names), key)
        out[owner] = value
    return out


def upgrade(state_dict: dict, names: list[str]) -> dict:
    """``state_dict`` in the current layout, for a chain whose transforms are called ``names``."""
    if "monitors" not in state_dict:
        return state_dict
    monitors = state_dict.pop("monitors")
    state_dict["state"] = {i: _rename(st, names) for i, st in state_dict["state"].items()}
    state_dict["transforms"] = {"phase": _detector(monitors[0])} if monitors else {}
    return state_dict


def _detector(old: dict) -> dict:
    """``{ema: float | None, delta, phase}`` -> the detector's 0-d tensors (moved to the device later);
    an EMA means at least one loss was seen, which is all ``count`` decides."""
    seen = old["ema"] is not None
    f64 = torch.float64
    return {"ema": torch.tensor(old["ema"] if seen else 0.0, dtype=f64), "delta": torch.tensor(old["delta"], dtype=f64),
            "phase": torch.tensor(old["phase"]), "count": torch.tensor(int(seen))}
