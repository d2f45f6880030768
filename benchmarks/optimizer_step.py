"""Optimizer step time and state memory of DALS & co. relative to torch's AdamW, measured in one process.

    .venv/bin/python benchmarks/optimizer_step.py [--repeats 30] [--device cpu|cuda] [--threads N]
                                                  [--stat median|min] [--models a,b,c]

For each model, every optimizer gets the same fixed gradients; steps are interleaved (one step of each
per round) so that drift of the machine hits all alike; the table gives the median (or, on a machine
shared with other work, the minimum: the least disturbed round) step time divided by that of
``AdamW(foreach=True)`` and of ``AdamW(fused=True)`` measured in the same rounds. ``dals (fused)`` is
``dalsopt.make("dals", ..., fused=True)``; its compilation happens in the warm-up rounds.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torchvision
from torch import nn

import dalsopt

# (row label, strategy, make() options)
STRATEGIES = (("dals", "dals", {}), ("dals (fused)", "dals", {"fused": True}), ("dals-fast", "dals-fast", {}),
              ("lars", "lars", {}), ("grokfast", "grokfast", {}))


def wide(blocks: int = 24, width: int = 768) -> nn.Module:
    """(a) ~14M parameters: 24 blocks of a 768x768 weight, its bias and a LayerNorm."""
    return nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width)) for _ in range(blocks)])


def small() -> nn.Module:
    """(c) ~100k parameters."""
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 64))


MODELS: dict[str, Callable[[], nn.Module]] = {
    "a: 24 x 768x768 blocks": wide,
    "b: ResNet-18": lambda: torchvision.models.resnet18(num_classes=10),
    "c: 100k MLP": small,
}


def state_bytes(opt: torch.optim.Optimizer) -> int:
    seen, total = set(), 0

    def walk(obj):
        nonlocal total
        if isinstance(obj, torch.Tensor):
            if obj.data_ptr() not in seen and obj.numel() > 1:
                seen.add(obj.data_ptr())
                total += obj.numel() * obj.element_size()
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)

    for st in opt.state.values():
        walk(st)
    return total


def contenders(build: Callable[[], nn.Module], device: str, steps: int) -> dict[str, tuple[nn.Module, Callable]]:
    out = {}
    for label, kwargs in (("AdamW(foreach)", dict(foreach=True)), ("AdamW(fused)", dict(fused=True))):
        model = build().to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, **kwargs)
        out[label] = (model, opt, opt.step)
    for label, name, options in STRATEGIES:
        model = build().to(device)
        s = dalsopt.make(name, model, total_steps=steps, **options)
        losses = iter([torch.tensor(2.0 * 0.99**i, device=device) for i in range(10 * steps)])
        out[label] = (model, s.optimizer, lambda s=s, losses=losses: s.step(loss=next(losses)))
    return out


def measure(build: Callable[[], nn.Module], device: str, repeats: int,
            stat: Callable[[list[float]], float] = statistics.median) -> dict[str, tuple[float, int]]:
    runners = contenders(build, device, steps=repeats + 5)
    gen = torch.Generator(device="cpu").manual_seed(0)
    for model, _, _ in runners.values():
        for p in model.parameters():
            p.grad = (torch.randn(p.shape, generator=gen) * 1e-2).to(device)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for r in range(repeats + 3):  # round 0 also compiles the fused step (cached on disk after the first run)
        for label, (_, _, step) in runners.items():
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step()
            if device == "cuda":
                torch.cuda.synchronize()
            if r >= 3:  # warm-up rounds allocate the lazy state
                times[label].append(time.perf_counter() - t0)
    return {k: (stat(v), state_bytes(runners[k][1])) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--stat", choices=("median", "min"), default="median")
    parser.add_argument("--models", default="a,b,c", help="which of the models a, b, c (comma-separated)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    stat = statistics.median if args.stat == "median" else min
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.stat} of {args.repeats} interleaved steps\n")
    print("| model | optimizer | step ms | / AdamW(foreach) | / AdamW(fused) | state / AdamW |")
    print("|---|---|---|---|---|---|")
    chosen = set(args.models.split(","))
    for label, build in MODELS.items():
        if label.split(":")[0] not in chosen:
            continue
        res = measure(build, args.device, args.repeats, stat)
        base_foreach, base_fused = res["AdamW(foreach)"][0], res["AdamW(fused)"][0]
        base_mem = res["AdamW(foreach)"][1]
        for name, (t, mem) in res.items():
            print(f"| {label} | {name} | {t * 1e3:.2f} | {t / base_foreach:.2f} | {t / base_fused:.2f} | "
                  f"{mem / base_mem:.2f} |")


if __name__ == "__main__":
    main()
