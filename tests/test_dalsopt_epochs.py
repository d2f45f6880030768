"""Schedules that step once per epoch, as a trial runs them: `Trial` hands `dalsopt.make` its
steps per epoch, so `stlr-discriminative@authors` holds each block's rate for a whole epoch."""
from __future__ import annotations

import pytest

import reference as ref
from sweeps.train.trial import Trial


def test_a_trial_runs_the_authors_stlr_once_per_epoch(tmp_path):
    epochs, batch = 4, 32
    trial = Trial(dict(strategy="stlr-discriminative@authors", dataset="synthetic", max_train=256, max_eval=64,
                       epochs=epochs, batch_size=batch))
    spe = trial.steps_per_epoch
    assert spe == 256 // batch and trial.strategy.meta["steps_per_epoch"] == spe
    blocks = trial.strategy.meta["blocks"]
    top = trial.strategy.lrs[-1]
    assert top == 0.05  # epoch 0: the groups' own (once-decayed) rates, before the first scheduler call
    tops, bottoms = [], []
    while not trial.done:
        m = trial.run_epoch()  # its lr_* are the rates after the epoch's last step: the next epoch's
        tops.append(m["lr_top"])
        bottoms.append(m["lr_bottom"])
    want = [ref.authors_stlr(e, spe, epochs) for e in range(1, epochs + 1)]
    assert tops == pytest.approx([0.05 * s for s in want], rel=1e-12)
    decay = ref.discriminative_factor(0, blocks, 2.6) ** 2
    assert bottoms == pytest.approx([0.05 * decay * s for s in want], rel=1e-12)
    trial.save(tmp_path)  # a checkpoint of the nested schedule loads with weights_only=True
    again = Trial(trial.config)
    again.restore(tmp_path)
    assert again.strategy.lrs == trial.strategy.lrs
