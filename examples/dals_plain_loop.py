"""DALS in a loop that calls ``optimizer.step()`` itself: hand the loss over first.

    .venv/bin/python examples/dals_plain_loop.py
"""
import torch
from torch import nn

import dalsopt

torch.manual_seed(0)
x = torch.randn(512, 20)
y = (x[:, :5].sum(1) > 0).long()
model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 2))
steps = 200
s = dalsopt.make("dals", model, total_steps=steps)
optimizer, scheduler = s.optimizer, s.scheduler  # a real torch Optimizer and LRScheduler

for step in range(steps):
    idx = torch.randint(0, len(x), (64,))
    loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
    optimizer.zero_grad()
    loss.backward()
    dalsopt.observe_loss(optimizer, loss)  # DALS's phase detector reads it in the next step()
    optimizer.step()
    scheduler.step()

phase = optimizer.state_dict()["transforms"]["phase"]
print(f"loss {loss.item():.3f}, phase {int(phase['phase'])}, losses seen {int(phase['count'])}")
