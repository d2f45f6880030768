"""Train a small MLP on the paper's synthetic task with every strategy and print a table.

    .venv/bin/python examples/quickstart.py [--steps 300]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import dalsopt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 20, generator=gen)
    y = (x[:, :5].sum(1) > 0).long()  # the authors' synthetic task
    train_x, train_y, test_x, test_y = x[:3200], y[:3200], x[3200:], y[3200:]
    lossf = nn.CrossEntropyLoss()
    print(f"| strategy | generation | final train loss | test accuracy | seconds |")
    print("|---|---|---|---|---|")
    for name in dalsopt.names():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(20, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
        s = dalsopt.make(name, model, total_steps=args.steps)
        start = time.perf_counter()
        for step in range(args.steps):
            idx = torch.randint(0, len(train_x), (128,), generator=gen)

            def closure():
                loss = lossf(model(train_x[idx]), train_y[idx])
                loss.backward()
                return loss

            s.zero_grad()
            loss = closure()
            s.step(loss=loss.detach(), closure=closure)
        with torch.no_grad():
            acc = (model(test_x).argmax(1) == test_y).float().mean().item()
        print(f"| {name} | {s.generation} | {loss.item():.4f} | {acc:.3f} | {time.perf_counter() - start:.1f} |")


if __name__ == "__main__":
    main()
