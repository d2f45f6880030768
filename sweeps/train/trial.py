"""One trial: strategy x dataset x seed -> per-epoch metrics, with checkpoints that resume bit for bit.

The sweep service drives :class:`Trial` (or :func:`run_trial`); ``dals train`` prints its curve.
The config (:class:`sweeps.train.config.TrialConfig`) is validated where it is made, not here.
Data is loaded and tokenised once in ``__init__``; an epoch is a seeded permutation of the training rows,
so the batch order depends only on (seed, epoch) and a restored trial replays exactly.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
import torch.nn.functional as F

import dalsopt

from sweeps.train import device as devices
from sweeps.train import models
from sweeps.train.config import TrialConfig
from sweeps.train.data import registry as datamod
from sweeps.train.data import text
from sweeps.train.data.split import Split, holdout, subset
from sweeps.train.precision import Precision
from sweeps.train.status import TrialStatus

CHECKPOINT_FILE = "trial.pt"
DIVERGENCE_CHECK_EVERY = 20  # steps between host syncs on the running loss
EVAL_SPLIT_SEED = 0  # eval subsets are the same rows for every trial seed
VALIDATION_SPLIT_SEED = 0  # so is the validation split carved from the train split
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class Trial:
    """One strategy x dataset x seed. ``run_epoch`` until ``done``; ``save``/``restore`` between epochs."""

    def __init__(self, config: TrialConfig | Mapping[str, Any]):
        self.config = config if isinstance(config, TrialConfig) else TrialConfig.create(**config)
        cfg = self.config
        self.device = devices.choose(cfg.device)
        devices.prepare(self.device)
        self.precision = Precision.create(cfg.precision, cfg.regime, self.device)
        self.seed = cfg.seed
        self.epoch = 0
        self.status = TrialStatus.RUNNING
        train, val = training_split(cfg)
        evals = datamod.load(cfg.dataset, "eval", max_n=cfg.max_eval, seed=EVAL_SPLIT_SEED, **_sources(cfg))
        if len(evals) == 0 or len(train) == 0:
            raise ValueError(f"dataset {cfg.dataset!r} has an empty train or eval split")
        self.kind = train.kind
        self.num_classes = train.num_classes
        (self.train_inputs, self.train_y), (self.eval_inputs, self.eval_y), self.val, extra = \
            self._encode(train, evals, val)
        torch.manual_seed(self.seed)  # model init depends on the seed only, not on data loading
        self.model = models.build(cfg.model, kind=self.kind, regime=cfg.regime,
                                  num_classes=train.num_classes, **extra).to(self.device)
        self.forward = devices.compiled(self.model, cfg.compile)
        self.steps_per_epoch = epoch_steps(len(self.train_y), cfg.batch_size)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.strategy = dalsopt.make(cfg.strategy, self.model, total_steps=self.total_steps,
                                     steps_per_epoch=self.steps_per_epoch, regime=cfg.regime, **cfg.hp)
        self._block_groups = _bottom_top(self.strategy.optimizer.param_groups)
        self.history: list[dict[str, Any]] = []

    # --- data ---------------------------------------------------------------------------------------

    def _encode(self, train: Split, evals: Split, val: Split | None):
        """Tokenise once (text) or keep tensors: (inputs, labels) of train, eval and validation (None
        when off), and the model's size arguments. A scratch vocabulary is the train rows' alone."""
        cfg = self.config
        if train.kind != "text":
            extra = {"in_features": int(train.x.shape[1])} if train.kind == "tensor" else {}

            def enc(s: Split) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
                return {"x": s.x}, s.y
        else:
            if cfg.regime == "scratch":
                vocab = text.Vocab.build(list(train.texts) + list(train.texts2 or ()))
                tokens = lambda s: text.encode_words(s, vocab, cfg.max_length)  # noqa: E731
                extra = {"vocab_size": len(vocab)}
            else:
                tok = models.load_tokenizer(cfg.model)
                tokens = lambda s: text.encode_tokenizer(s, tok, cfg.max_length)  # noqa: E731
                extra = {}

            def enc(s: Split) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
                encoded = tokens(s)
                return encoded.inputs, encoded.y
        return enc(train), enc(evals), None if val is None else enc(val), extra

    def _batch(self, inputs: dict[str, torch.Tensor], index: torch.Tensor, train: bool,
               gen: torch.Generator | None) -> dict[str, torch.Tensor]:
        if self.kind == "text":
            batch = text.trim(inputs, index)
        elif self.kind == "image":
            x = inputs["x"][index]
            if train and self.config.augment:
                x = _augment(x, gen)
            batch = {"x": _normalise(x)}
        else:
            batch = {"x": inputs["x"][index]}
        return {k: devices.to_device(v, self.device) for k, v in batch.items()}

    def _logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.kind == "text":
            out = self.forward(**batch)
            return out.logits if hasattr(out, "logits") else out
        return self.forward(batch["x"])

    # --- one epoch ----------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.status != TrialStatus.RUNNING

    def run_epoch(self) -> dict[str, Any]:
        """Train one epoch and evaluate; a non-finite loss ends the trial as ``diverged`` (no exception)."""
        if self.done:
            raise RuntimeError(f"trial is {self.status} after epoch {self.epoch}; nothing left to run")
        cfg = self.config
        start = time.perf_counter()
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.train_y), generator=gen)
        self.model.train()
        devices.start_epoch(self.device)
        loss_sum = torch.zeros((), device=self.device)
        seen, diverged = 0, False
        for step, index in enumerate(order.split(cfg.batch_size)):
            batch = self._batch(self.train_inputs, index, True, gen)
            y = devices.to_device(self.train_y[index], self.device)
            loss = self._train_step(batch, y)
            loss_sum += loss * len(index)
            seen += len(index)
            if (step + 1) % DIVERGENCE_CHECK_EVERY == 0 and not torch.isfinite(loss_sum):
                diverged = True
                break
        train_loss = float(loss_sum) / max(seen, 1)
        train_seconds = time.perf_counter() - start
        eval_acc, eval_loss = self.evaluate()
        val: dict[str, float] = {}  # only with a validation split
        if self.val is not None:
            val["val_accuracy"], val["val_loss"] = self.evaluate(*self.val)
        self.epoch += 1
        losses = (train_loss, eval_loss, val.get("val_loss", 0.0))
        if diverged or not all(math.isfinite(v) for v in losses):
            self.status = TrialStatus.DIVERGED
        elif self.epoch >= cfg.epochs:
            self.status = TrialStatus.FINISHED
        lr_bottom, lr_top = (float(self.strategy.optimizer.param_groups[i]["lr"]) for i in self._block_groups)
        metrics = {
            "epoch": self.epoch, "steps": self.epoch * self.steps_per_epoch, "train_loss": train_loss,
            "eval_accuracy": eval_acc, "eval_loss": eval_loss,
            **val,
            "lr_bottom": lr_bottom, "lr_top": lr_top, "seconds": time.perf_counter() - start,
            "examples_per_second": seen / max(train_seconds, 1e-9), "status": str(self.status),
            **self.precision.metrics(), **devices.epoch_metrics(self.device),
        }
        self.history.append(metrics)
        return metrics

    def _train_step(self, batch: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """Forward, backward, ``s.step(loss=..., closure=...)`` in the trial's precision
        (`sweeps.train.precision`); the closure re-evaluates the loss (SAM's 2nd pass)."""
        return self.precision.step(self.strategy, lambda: F.cross_entropy(self._logits(batch), y))

    @torch.no_grad()
    def evaluate(self, inputs: dict[str, torch.Tensor] | None = None,
                 labels: torch.Tensor | None = None) -> tuple[float, float]:
        """(accuracy, mean cross-entropy) on the eval split, or on the given rows (validation)."""
        if inputs is None or labels is None:
            inputs, labels = self.eval_inputs, self.eval_y
        self.model.eval()
        n = len(labels)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        total = torch.zeros((), device=self.device)
        for index in torch.arange(n).split(2 * self.config.batch_size):
            batch = self._batch(inputs, index, False, None)
            y = devices.to_device(labels[index], self.device)
            with self.precision.autocast():
                logits = self._logits(batch).float()
            total += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(dim=1) == y).sum()
        self.model.train()
        return int(correct) / n, float(total) / n

    # --- checkpoints --------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write ``path/trial.pt`` (tensors and primitives only, atomically): model, strategy, RNG, progress."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        payload = {
            "config": json.dumps(self.config.comparable(), sort_keys=True),
            "epoch": self.epoch,
            "status": str(self.status),
            "history": self.history,
            "model": self.model.state_dict(),
            "strategy": self.strategy.state_dict(),
            "precision": self.precision.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        tmp = folder / (CHECKPOINT_FILE + ".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, folder / CHECKPOINT_FILE)

    def restore(self, path: str | os.PathLike) -> None:
        """Load a checkpoint written by :meth:`save` for the same config (folder or file path)."""
        file = Path(path)
        if file.is_dir():
            file = file / CHECKPOINT_FILE
        if not file.is_file():
            raise FileNotFoundError(f"no trial checkpoint at {file}")
        state = torch.load(file, map_location=self.device, weights_only=True)
        mine = json.dumps(self.config.comparable(), sort_keys=True)
        if state["config"] != mine:
            raise ValueError(f"checkpoint {file} belongs to another trial config")
        self.model.load_state_dict(state["model"])
        self.strategy.load_state_dict(state["strategy"])
        self.precision.load_state_dict(state.get("precision"))
        torch.set_rng_state(state["rng_cpu"].cpu())
        if state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])
        self.epoch, self.history = int(state["epoch"]), list(state["history"])
        self.status = TrialStatus(state["status"])


def _sources(cfg: TrialConfig) -> dict[str, Any]:
    """Where a dataset's rows come from (a data folder, a user table's files and columns)."""
    return dict(data_dir=cfg.data_dir, eval_file=cfg.eval_file, text_column=cfg.text_column,
                text_column2=cfg.text_column2, label_column=cfg.label_column)


def training_split(cfg: TrialConfig) -> tuple[Split, Split | None]:
    """(the rows the trial trains on, its validation rows or None), as the trial draws them."""
    full = datamod.load(cfg.dataset, "train", **_sources(cfg))
    return train_and_validation(full, cfg.validation, cfg.max_train, cfg.seed)


def epoch_steps(rows: int, batch_size: int) -> int:
    """Optimizer steps in one epoch over `rows` (the last batch may be short)."""
    return math.ceil(rows / batch_size)


def steps_per_epoch(cfg: TrialConfig) -> int:
    """Optimizer steps in one epoch of the trial, from its config alone (loads the rows, trains nothing)."""
    return epoch_steps(len(training_split(cfg)[0]), cfg.batch_size)


def train_and_validation(full: Split, validation: float | None, max_train: int | None,
                         seed: int) -> tuple[Split, Split | None]:
    """(the rows a trial trains on, its validation rows or None). The validation rows are carved
    first with a fixed seed, so every trial seed checks on the same rows and never trains on them;
    the seeded `max_train` subset is then drawn from the rest."""
    if not validation:
        return subset(full, max_train, seed), None
    rest, val = holdout(full, validation, VALIDATION_SPLIT_SEED)
    return subset(rest, max_train, seed), val


def _bottom_top(groups: list[dict]) -> tuple[int, int]:
    """Indices of the bottom and top block's parameter group (first/last group without block tags)."""
    if all("block" in g for g in groups):
        blocks = [g["block"] for g in groups]
        return blocks.index(min(blocks)), blocks.index(max(blocks))
    return 0, len(groups) - 1


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 32x32 crop of the 4-pixel zero-padded image and a horizontal flip, from the epoch's generator."""
    n = x.shape[0]
    padded = F.pad(x, (4, 4, 4, 4))
    dx, dy = torch.randint(0, 9, (2, n), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    out = torch.empty_like(x)
    for i in range(n):
        img = padded[i, :, dy[i]: dy[i] + 32, dx[i]: dx[i] + 32]
        out[i] = img.flip(2) if flip[i] else img
    return out


def run_trial(config: TrialConfig | Mapping[str, Any], checkpoint: str | os.PathLike | None = None) -> Iterator[dict[str, Any]]:
    """Restore from ``checkpoint`` if given, then yield each epoch's metrics until the trial is done."""
    trial = Trial(config)
    if checkpoint is not None:
        trial.restore(checkpoint)
    while not trial.done:
        yield trial.run_epoch()
