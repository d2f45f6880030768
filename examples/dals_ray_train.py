"""Sketch: DALS under Ray Train (data-parallel, one DALS per worker).

    .venv/bin/python examples/dals_ray_train.py   # 2 workers on this machine

Every worker must see the same loss, or the replicas' phases (and so their updates) drift apart:
``dalsopt.global_mean`` averages it over the process group before it is handed over.
"""
import ray.train
import torch
from ray.train import ScalingConfig
from ray.train.torch import TorchTrainer, prepare_model
from torch import nn

import dalsopt


def train_loop_per_worker(config: dict) -> None:
    torch.manual_seed(0)
    model = prepare_model(nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 2)))  # DDP
    s = dalsopt.make("dals", model, total_steps=config["steps"])
    gen = torch.Generator().manual_seed(ray.train.get_context().get_world_rank())
    for step in range(config["steps"]):
        x = torch.randn(64, 20, generator=gen)
        loss = nn.functional.cross_entropy(model(x), (x[:, :5].sum(1) > 0).long())
        s.zero_grad()
        loss.backward()
        s.step(loss=dalsopt.global_mean(loss))  # or observe_loss(s.optimizer, ...) before a foreign step()
        if step % 25 == 0:
            ray.train.report({"step": step, "loss": loss.item()})


if __name__ == "__main__":
    trainer = TorchTrainer(train_loop_per_worker, train_loop_config={"steps": 100},
                           scaling_config=ScalingConfig(num_workers=2, use_gpu=torch.cuda.is_available()))
    print(trainer.fit().metrics)
