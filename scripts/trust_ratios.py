"""DALS's trust ratios during a real trial, per depth block: why DALS moves a fine-tuned encoder and its
fresh head at the rates it does.

DALS scales each tensor's step by r = clamp(coef ||p|| / ||g + wd p||, lo, hi) (dalsopt.trust). In a
pretrained encoder ||g|| is far below wd ||p||, so the decay term sets the denominator and r = coef / wd
whatever the gradient; a freshly initialised head has small weights and large gradients, so r sits at the
floor. This prints what a real trial sees at a few of its first steps, so the claim can be checked:

    DALS_OFFLINE=1 python scripts/trust_ratios.py --dataset trec6 --max-train 1000 --steps 96 --hp lr=0.03
    DALS_OFFLINE=1 python scripts/trust_ratios.py --dataset trec6 --max-train 1000 --steps 96 \
        --strategy dals@finetune-decoupled

Columns: median ||p||, ||g|| (raw) and ||u|| per block, u = g + wd p (u = g for a strategy with
decoupled_decay, e.g. dals@finetune-decoupled); r as DALS computes it; coef ||p|| / ||g|| for comparison;
"r = 1" counts tensors a zero norm or exclude_norm_bias keeps at 1; lr·r at that step. The depth
filter's blend is left out (it mixes g with its running average: the same scale).
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch
import torch.nn.functional as F

from sweeps.train.trial import Trial


def block_ratios(trial: Trial, coef: float, lo: float, hi: float, decoupled: bool = False) -> list[dict]:
    """Per block (bottom to top), from the gradients now in ``.grad``: tensor count, median norms, the
    median r as DALS measures it (on g + wd p, or on g alone with ``decoupled_decay``), the median ratio
    with the decay left out, and the clamp counts."""
    by_block: dict[int, list[tuple[float, float, float, bool]]] = defaultdict(list)
    lr_of: dict[int, float] = {}
    for group in trial.strategy.optimizer.param_groups:
        wd, measured = 0.0 if decoupled else group["weight_decay"], group.get("trust", True)
        lr_of.setdefault(group.get("block", 0), float(group["lr"]))
        for p in group["params"]:
            if p.grad is not None:
                g = p.grad.detach()
                by_block[group.get("block", 0)].append(
                    (p.detach().norm().item(), g.norm().item(), (g + wd * p.detach()).norm().item(), measured))
    rows = []
    for block, norms in sorted(by_block.items()):
        p_n, g_n, u_n = (torch.tensor([row[i] for row in norms]) for i in range(3))
        measured = torch.tensor([row[3] for row in norms])
        defined = (p_n > 0) & (u_n > 0) & measured  # dalsopt keeps r = 1 elsewhere
        raw = coef * p_n / u_n.clamp_min(1e-30)
        ratio = torch.where(defined, raw.clamp(lo, hi), torch.ones_like(raw))
        no_decay = coef * p_n / g_n.clamp_min(1e-30)
        pick = defined if defined.any() else torch.ones_like(defined)
        rows.append({"block": block, "tensors": len(norms), "p_norm": p_n.median().item(),
                     "g_norm": g_n.median().item(), "u_norm": u_n.median().item(),
                     "ratio": ratio[pick].median().item(), "no_decay": no_decay[pick].median().item(),
                     "at_floor": int((defined & (raw < lo)).sum()), "at_ceiling": int((defined & (raw > hi)).sum()),
                     "unit": int((~defined).sum())})
        rows[-1]["lr_r"] = lr_of[block] * rows[-1]["ratio"]
    return rows


def follow(trial: Trial, steps: int, report: set[int]) -> dict[int, list[dict]]:
    """Train ``steps`` optimizer steps on the trial's first epoch order; the ratios at the ``report`` steps."""
    hp = trial.config.hyperparameters()
    gen = torch.Generator().manual_seed(trial.seed * 1_000_003)
    order = torch.randperm(len(trial.train_y), generator=gen).split(trial.config.batch_size)
    seen: dict[int, list[dict]] = {}
    for step in range(steps):
        index = order[step % len(order)]
        batch = trial._batch(trial.train_inputs, index, train=True, gen=gen)
        y = trial.train_y[index].to(trial.device)
        trial.strategy.zero_grad()
        loss = F.cross_entropy(trial._logits(batch), y)
        loss.backward()
        if step in report:
            seen[step] = block_ratios(trial, hp["trust_coef"], hp["trust_min"], hp["trust_max"],
                                      hp.get("decoupled_decay", False))
        trial.strategy.step(loss=loss.detach())
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="trec6")
    ap.add_argument("--strategy", default="dals", help="a DALS variant or preset (its trust settings are used)")
    ap.add_argument("--max-train", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=32)
    ap.add_argument("--steps", type=int, default=1, help="optimizer steps to follow (ratios at 4 of them)")
    ap.add_argument("--epochs", type=int, default=3, help="the schedule's length, as in the trial")
    ap.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE",
                    help="a strategy hyperparameter (the value parses as JSON), repeatable")
    args = ap.parse_args()
    hp_given = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.hp)}
    cfg = dict(strategy=args.strategy, dataset=args.dataset, max_train=args.max_train, max_eval=32,
               epochs=args.epochs, hp=hp_given)
    if args.dataset not in ("synthetic", "synthetic-gmm", "cifar10"):
        cfg["max_length"] = args.max_length
    trial = Trial(cfg)
    hp = trial.config.hyperparameters()
    report = {0} | {round(args.steps * k / 4) for k in (1, 2, 3)} | {args.steps - 1}
    seen = follow(trial, args.steps, {s for s in report if 0 <= s < args.steps})
    measured_on = "g (decay decoupled)" if hp.get("decoupled_decay") else "g + wd p"
    print(f"{args.strategy} on {args.dataset} ({trial.config.regime}): lr {hp['lr']:g}, wd {hp['weight_decay']:g}, "
          f"r = clamp({hp['trust_coef']:g} ||p||/||{measured_on}||, {hp['trust_min']:g}, {hp['trust_max']:g}), "
          f"{trial.total_steps} steps in the schedule")
    for step, rows in sorted(seen.items()):
        print(f"\nstep {step}")
        print("| block | tensors | median ‖p‖ | median ‖g‖ | median ‖u‖ (r = coef ‖p‖/‖u‖) | median r | coef ‖p‖/‖g‖ "
              "| at floor | at ceiling | r = 1 | lr·r |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['block']} | {r['tensors']} | {r['p_norm']:.3g} | {r['g_norm']:.3g} | {r['u_norm']:.3g} | "
                  f"{r['ratio']:.3g} | {r['no_decay']:.3g} | {r['at_floor']} | {r['at_ceiling']} | {r['unit']} | "
                  f"{r['lr_r']:.3g} |")


if __name__ == "__main__":
    main()
