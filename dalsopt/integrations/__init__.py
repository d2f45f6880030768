"""DALS in training loops that call ``optimizer.step()`` themselves.

``dalsopt.observe_loss(optimizer, loss)`` is the general way in. For Hugging Face ``transformers``:

    from dalsopt.integrations import DALSCallback           # any Trainer, one line
    Trainer(..., optimizers=(s.optimizer, s.scheduler), callbacks=[DALSCallback()])

    from dalsopt.integrations import DALSTrainer, DALSTrainerMixin   # the exact loss Trainer computes
    DALSTrainer(..., optimizers=(s.optimizer, s.scheduler))

``transformers`` is imported only when one of these names is used: dalsopt itself needs torch alone.
"""
from __future__ import annotations

from typing import Any

__all__ = ["DALSCallback", "DALSTrainer", "DALSTrainerMixin"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import huggingface

        return getattr(huggingface, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
