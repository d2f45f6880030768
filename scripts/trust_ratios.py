"""DALS's trust ratios on the first batch of a trial, per depth block: why DALS moves a fine-tuned
encoder fast and its fresh head slowly.

DALS scales each tensor's step by r = clamp(coef ||p|| / ||g + wd p||, lo, hi) (dalsopt.trust). A
pretrained encoder has large weights and small gradients (r hits the ceiling); a freshly initialised
head has small weights and large gradients (r hits the floor). This prints the ratios a real trial
sees, so the claim can be checked rather than guessed:

    DALS_OFFLINE=1 python scripts/trust_ratios.py --dataset trec6 --max-train 64
"""
from __future__ import annotations

import argparse
from collections import defaultdict

import torch
import torch.nn.functional as F

from sweeps.train.trial import Trial


def first_step_ratios(trial: Trial, coef: float, lo: float, hi: float, wd: float) -> list[dict]:
    """Per param group (block, bottom to top): tensor count, median ||p||, ||g||, raw and clamped ratio."""
    n = min(trial.config.batch_size, len(trial.train_y))
    index = torch.arange(n)
    batch = trial._batch(trial.train_inputs, index, train=True, gen=None)
    loss = F.cross_entropy(trial._logits(batch), trial.train_y[index].to(trial.device))
    loss.backward()
    by_block: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for group in trial.strategy.optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                u = p.grad + wd * p.detach()
                by_block[group.get("block", 0)].append((p.detach().norm().item(), u.norm().item()))
    rows = []
    for block, norms in sorted(by_block.items()):
        p_norm = torch.tensor([a for a, _ in norms])
        u_norm = torch.tensor([b for _, b in norms])
        raw = coef * p_norm / u_norm.clamp_min(1e-12)
        defined = (p_norm > 0) & (u_norm > 0)  # dalsopt keeps r = 1 where a norm is 0 (zero-initialised biases)
        ratio = torch.where(defined, raw.clamp(lo, hi), torch.ones_like(raw))
        raw = raw[defined] if defined.any() else torch.ones(1)
        rows.append({"block": block, "tensors": len(norms), "p_norm": p_norm.median().item(),
                     "g_norm": u_norm.median().item(), "raw_ratio": raw.median().item(),
                     "ratio": ratio.median().item(),
                     "at_floor": int((raw < lo).sum()), "at_ceiling": int((raw > hi).sum())})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="trec6")
    ap.add_argument("--strategy", default="dals", help="a DALS variant or preset (its trust settings are used)")
    ap.add_argument("--max-train", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=32)
    args = ap.parse_args()
    cfg = dict(strategy=args.strategy, dataset=args.dataset, max_train=args.max_train, max_eval=32, epochs=1)
    if args.dataset not in ("synthetic", "synthetic-gmm", "cifar10"):
        cfg["max_length"] = args.max_length
    trial = Trial(cfg)
    hp = trial.config.hyperparameters()
    rows = first_step_ratios(trial, hp["trust_coef"], hp["trust_min"], hp["trust_max"], hp["weight_decay"])
    print(f"{args.strategy} on {args.dataset} ({trial.config.regime}): lr {hp['lr']:g}, "
          f"r = clamp({hp['trust_coef']:g} ||p||/||g||, {hp['trust_min']:g}, {hp['trust_max']:g}), first batch")
    print("| block | tensors | median ‖p‖ | median ‖g‖ | median raw r | median r | at floor | at ceiling | lr·r |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['block']} | {r['tensors']} | {r['p_norm']:.3g} | {r['g_norm']:.3g} | {r['raw_ratio']:.3g} | "
              f"{r['ratio']:.3g} | {r['at_floor']} | {r['at_ceiling']} | {hp['lr'] * r['ratio']:.3g} |")


if __name__ == "__main__":
    main()
