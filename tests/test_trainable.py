"""sweeps.trainable with the real dalsopt: config validation, every regime on small real data, closures and
losses handed to the strategy, determinism, checkpoint/restore equality, divergence."""
from __future__ import annotations

import pickle

import dalsopt
import numpy as np
import pytest
import torch

from sweeps.train.config import TrialConfig
from sweeps.train.trial import Trial, run_trial

TIMING = ("seconds", "examples_per_second")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("DALS_OFFLINE", "1")
    torch.set_num_threads(2)


def _curve(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in TIMING} for m in metrics]


def _scored(trial: Trial, inputs: dict[str, torch.Tensor], y: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the trial's model on these rows, straight from its forward
    pass in eval mode: what the trial's reported metrics must equal."""
    trial.model.eval()
    with torch.no_grad():
        out = trial.model(inputs["x"]) if set(inputs) == {"x"} else trial.model(**inputs)
    logits = getattr(out, "logits", out).float()
    return float((logits.argmax(1) == y).float().mean()), float(torch.nn.functional.cross_entropy(logits, y))


def write_cifar(root, per_batch: int) -> None:
    """CIFAR-10 python batches whose class shows in one channel's brightness (learnable in an epoch)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 4, per_batch)
        imgs = rng.integers(0, 60, (per_batch, 3, 32, 32))
        for i, k in enumerate(labels):
            imgs[i, k % 3] += 60 * (1 + k // 3) + 40 * k
        with open(folder / name, "wb") as fh:
            pickle.dump({b"labels": labels.tolist(), b"data": imgs.astype(np.uint8).reshape(per_batch, -1)}, fh)


# --- config ----------------------------------------------------------------------------------------------

def test_trial_config_fills_the_dataset_defaults():
    cfg = TrialConfig.create(dataset="synthetic", strategy="adamw")
    assert set(cfg.to_dict()) == set(TrialConfig.keys())
    assert (cfg.epochs, cfg.batch_size, cfg.model, cfg.regime) == (80, 128, "mlp", "scratch")
    trec = TrialConfig.create(dataset="trec6", strategy="sgd")
    assert (trec.regime, trec.model, trec.max_length) == ("finetune", "minilm", 128)
    assert trec.hp["lr"] == pytest.approx(3e-4)  # the paper's TREC fine-tuning rate
    assert TrialConfig.create(dataset="trec6", regime="scratch").model == "textcnn"
    assert TrialConfig.create(dataset="trec6", model="bilstm").regime == "scratch"
    assert TrialConfig.create(dataset="rte", strategy="adamw").hp == {}
    # idempotent: a filled config passes through unchanged, and survives Ray's round trip
    assert TrialConfig.create(**trec.to_dict()) == trec
    assert TrialConfig.restore(trec.to_dict()) == trec


def test_hyperparameters_are_the_regimes():
    """What a trial trains with and MLflow records: the fine-tuning column when fine-tuning."""
    tuned = TrialConfig.create(dataset="trec6", strategy="dals")
    assert tuned.hyperparameters() == dalsopt.resolve("dals", "finetune", **tuned.hp)
    assert (tuned.hyperparameters()["weight_decay"], tuned.hyperparameters()["warmup_frac"]) == (0.01, 0.1)
    scratch = TrialConfig.create(dataset="synthetic", strategy="dals")
    assert (scratch.hyperparameters()["weight_decay"], scratch.hyperparameters()["warmup_frac"]) == (1e-4, 0.05)


@pytest.mark.parametrize("overrides,match", [
    ({"epochz": 3}, "unknown trial config key.*epochz"),
    ({"epochs": 0}, "epochs must be a positive integer"),
    ({"batch_size": 2.5}, "batch_size must be a positive integer"),
    ({"strategy": "adamx"}, "unknown strategy 'adamx'"),
    ({"dataset": "mnist"}, "unknown dataset 'mnist'"),
    ({"dataset": "synthetic", "regime": "finetune"}, "only trains from scratch"),
    ({"dataset": "trec6", "regime": "pretrain"}, "regime must be one of"),
    ({"dataset": "synthetic", "model": "cnn"}, "does not fit tensor data"),
    ({"dataset": "trec6", "text_column": "q"}, "only apply to file:PATH or hf:ID"),
    ({"dataset": "synthetic", "augment": True}, "augment applies to image datasets only"),
    ({"hp": {"lrr": 0.1}}, "bad hyperparameters for dals: unknown hyperparameter"),
    ({"hp": {"lr": -1.0}}, "bad hyperparameters"),
    ({"seed": -1}, "seed must be"),
    ({"validation": 0.6}, r"validation must be a fraction in \(0, 0.5\]"),
    ({"validation": -0.1}, "validation must be a fraction"),
    ({"validation": 1}, "validation must be a fraction"),
    ({"validation": True}, "validation must be a fraction"),
    ({"validation": "0.1"}, "validation must be a fraction"),
    ({"validation": float("nan")}, "validation must be a fraction"),
])
def test_bad_config_is_a_one_line_value_error(overrides, match):
    with pytest.raises(ValueError, match=match) as err:
        TrialConfig.create(**overrides)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", dalsopt.names())
def test_every_strategy_is_accepted_in_both_regimes(name):
    for dataset, regime in (("synthetic", "scratch"), ("trec6", "finetune"), ("rte", "finetune")):
        cfg = TrialConfig.create(dataset=dataset, strategy=name)
        assert (cfg.strategy, cfg.dataset, cfg.regime) == (name, dataset, regime)


def test_validation_zero_is_off_and_the_flag_is_a_float():
    from sweeps.cli.main import build_parser

    assert TrialConfig.create(validation=0).validation is None
    assert TrialConfig.create(validation=0) == TrialConfig.create()
    assert TrialConfig.create(validation=0.5).validation == 0.5
    args = build_parser().parse_args(["train", "--validation", "0.1"])
    assert args.validation == 0.1


# --- the validation split ---------------------------------------------------------------------------------

def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x}


def test_validation_split_is_stratified_seeded_and_apart_from_train_and_eval():
    """synthetic-gmm: 6,400 train rows of 10 classes; validation 0.1 holds out 640 rows with each class's
    share (within a row), the same rows for every trial seed, and max_train is drawn (by seed) from the
    other 5,760."""
    from sweeps.train.data import registry

    full = registry.load("synthetic-gmm", "train")
    evals = _rows(registry.load("synthetic-gmm", "eval").x)
    common = dict(dataset="synthetic-gmm", strategy="adamw", epochs=1, max_train=256, max_eval=64,
                  validation=0.1)
    a, b = Trial(dict(common, seed=0)), Trial(dict(common, seed=1))
    val_x, val_y = a.val
    assert torch.equal(val_x["x"], b.val[0]["x"]) and torch.equal(val_y, b.val[1])  # same rows per seed
    share = torch.bincount(full.y, minlength=10).double() / len(full)
    assert len(val_y) == 640 and (torch.bincount(val_y, minlength=10) - 640 * share).abs().max() < 1
    val = _rows(val_x["x"])
    assert len(val) == 640 and val <= _rows(full.x) and not val & evals
    for trial in (a, b):
        train = _rows(trial.train_inputs["x"])
        assert len(train) == 256 and not train & val and not train & evals
        rest = torch.bincount(full.y, minlength=10) - torch.bincount(val_y, minlength=10)
        assert (torch.bincount(trial.train_y, minlength=10) - 256 * rest / rest.sum()).abs().max() < 1
    assert _rows(a.train_inputs["x"]) != _rows(b.train_inputs["x"])  # the train subset follows the seed
    # without validation the train subset is what it always was: the seeded subset of the whole split
    off = Trial(dict(common, validation=None, seed=0))
    assert off.val is None and torch.equal(off.train_inputs["x"], registry.load(
        "synthetic-gmm", "train", max_n=256, seed=0).x)


def test_val_metrics_are_the_models_accuracy_and_loss_on_the_validation_rows():
    trial = Trial(dict(dataset="synthetic-gmm", strategy="adamw", epochs=2, max_train=512, max_eval=64,
                       validation=0.05))
    m = trial.run_epoch()
    (x,), y = trial.val[0].values(), trial.val[1]
    with torch.no_grad():
        logits = trial.model(x)
    assert m["val_accuracy"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    assert m["val_loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-5)
    assert m["val_accuracy"] != m["eval_accuracy"]  # another split: 320 rows against 64
    assert "val_accuracy" not in Trial(dict(dataset="synthetic", strategy="sgd", epochs=1,
                                            max_train=128, max_eval=64)).run_epoch()


def test_minilm_trial_holds_out_text_rows():
    trial = Trial(dict(dataset="trec6", strategy="adamw", epochs=1, max_train=32, max_eval=16, max_length=16,
                       batch_size=16, validation=0.02))
    assert len(trial.val[1]) == round(0.02 * 5452) and len(trial.train_y) == 32
    m = trial.run_epoch()
    accuracy, loss = _scored(trial, *trial.val)
    assert m["val_accuracy"] == pytest.approx(accuracy) and m["val_loss"] == pytest.approx(loss, rel=1e-4)


def test_a_validation_split_too_small_to_hold_a_row_is_one_line():
    from sweeps.train.data.split import Split, holdout

    tiny = Split(y=torch.tensor([0, 1, 0, 1]), num_classes=2, label_names=("a", "b"), kind="tensor",
                 x=torch.zeros(4, 2))
    with pytest.raises(ValueError, match="validation 0.1 of 4 train rows leaves 0 validation") as err:
        holdout(tiny, 0.1, 0)
    assert "\n" not in str(err.value)
    rest, val = holdout(tiny, 0.5, 0)
    assert sorted(val.y.tolist()) == [0, 1] and sorted(rest.y.tolist()) == [0, 1]


# --- the loop talks to the strategy as dalsopt expects ---------------------------------------------------

def test_loss_and_closure_are_handed_to_the_strategy():
    trial = Trial(dict(dataset="synthetic", strategy="sam", epochs=1, max_train=256, max_eval=64,
                       batch_size=64))
    assert trial.strategy.needs_closure
    calls = []
    step = trial.strategy.step

    def spy(loss=None, closure=None):
        calls.append((loss, closure))
        before = [p.grad.clone() for p in trial.model.parameters()]
        trial.model.zero_grad()
        again = closure()  # recomputes the loss and backpropagates
        assert torch.isfinite(again) and all(p.grad is not None for p in trial.model.parameters())
        for p, g in zip(trial.model.parameters(), before):
            p.grad = g
        return step(loss=loss, closure=closure)

    trial.strategy.step = spy
    trial.run_epoch()
    assert len(calls) == 4 and all(torch.is_tensor(loss) and loss.ndim == 0 for loss, _ in calls)
    assert all(callable(closure) for _, closure in calls)


def test_dals_gets_every_batch_loss():
    trial = Trial(dict(dataset="synthetic", strategy="dals", epochs=2, max_train=4096, max_eval=256))
    seen, step = [], trial.strategy.step

    def spy(loss=None, closure=None):
        seen.append(float(loss))
        return step(loss=loss, closure=closure)

    trial.strategy.step = spy
    first = trial.run_epoch()
    assert len(seen) == trial.steps_per_epoch and all(np.isfinite(seen))
    assert first["train_loss"] == pytest.approx(np.mean(seen), rel=1e-5)  # equal batches: the mean of losses
    m = trial.run_epoch()
    assert m["status"] == "finished" and m["eval_accuracy"] > 0.7


def test_lr_bottom_and_top_follow_the_blocks():
    m = Trial(dict(dataset="synthetic", strategy="discriminative", epochs=1, max_train=256)).run_epoch()
    assert m["lr_bottom"] == pytest.approx(m["lr_top"] / 2.6 ** 3)  # 4 blocks: fc0 .. head


# --- every regime, one short epoch on small real data ----------------------------------------------------

@pytest.mark.parametrize("dataset,overrides,chance", [
    ("synthetic", dict(strategy="dals"), 0.5),
    ("synthetic-gmm", dict(strategy="adamw", max_train=3000, epochs=2), 0.1),
    ("trec6-scratch", dict(strategy="adamw", max_train=2000, max_eval=300, epochs=2, hp={"lr": 1e-3}), 0.3),
    ("trec6", dict(regime="scratch", model="bilstm", strategy="adamw", max_train=600, max_eval=200,
                   hp={"lr": 3e-3}, epochs=2), 0.3),
])
def test_scratch_regimes_learn(dataset, overrides, chance):
    metrics = list(run_trial(dict(dataset=dataset, max_eval=overrides.pop("max_eval", 500),
                                  epochs=overrides.pop("epochs", 1), **overrides)))
    assert metrics[-1]["status"] == "finished"
    assert metrics[-1]["eval_accuracy"] > chance + 0.15
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"] or len(metrics) == 1


def test_cifar10_trains_on_files_in_the_real_format(tmp_path):
    write_cifar(tmp_path, per_batch=64)
    trial = Trial(dict(dataset="cifar10", data_dir=str(tmp_path), strategy="adamw", epochs=2,
                       batch_size=32, augment=True, hp={"lr": 1e-3}))
    assert len(trial.train_y) == 320 and trial.config.model == "cnn"
    metrics = [trial.run_epoch() for _ in range(2)]
    assert metrics[-1]["eval_accuracy"] > 0.5  # 4 classes present, so chance is about 0.25


@pytest.mark.parametrize("dataset,regime", [("rte", "finetune"), ("imdb", "finetune"), ("rte", "scratch"),
                                            ("imdb", "scratch")])
def test_text_datasets_run_an_epoch(dataset, regime):
    trial = Trial(dict(dataset=dataset, regime=regime, strategy="adamw", epochs=1, max_train=32, max_eval=16,
                       max_length=32, batch_size=16))
    before = [p.detach().clone() for p in trial.model.parameters()]
    m = trial.run_epoch()
    assert m["status"] == "finished" and trial.epoch == 1 and np.isfinite(m["train_loss"])
    assert all(not torch.equal(a, b) for a, b in zip(before, trial.model.parameters()) if b.grad is not None)
    accuracy, loss = _scored(trial, trial.eval_inputs, trial.eval_y)  # the reported metrics are the model's
    assert m["eval_accuracy"] == pytest.approx(accuracy) and m["eval_loss"] == pytest.approx(loss, rel=1e-4)


@pytest.mark.slow
def test_minilm_fine_tunes_on_trec6_well_above_chance():
    trial = Trial(dict(dataset="trec6", strategy="adamw", epochs=2, max_train=240, max_eval=120, batch_size=16,
                       hp={"lr": 3e-4}))
    metrics = [trial.run_epoch() for _ in range(2)]
    assert metrics[-1]["eval_accuracy"] > 0.6  # 6 classes; the largest is 28% of the eval set


def test_user_csv_trains_in_both_regimes(tmp_path):
    import pandas as pd

    rng = np.random.default_rng(0)
    good, bad = ["great", "fine", "lovely", "superb"], ["awful", "poor", "dull", "bad"]
    rows = [{"review": f"the film was {rng.choice(good if i % 2 else bad)} and long", "y": "pos" if i % 2 else "neg"}
            for i in range(200)]
    pd.DataFrame(rows).to_csv(tmp_path / "r.csv", index=False)
    common = dict(dataset=f"file:{tmp_path / 'r.csv'}", text_column="review", label_column="y", epochs=3,
                  strategy="adamw")
    scratch = list(run_trial(dict(common, regime="scratch", hp={"lr": 3e-3})))
    assert scratch[-1]["eval_accuracy"] > 0.8
    # fine-tuning MiniLM on the same file, tiny (64 rows, 16 tokens): it trains, and learns the words
    tuned = Trial(dict(common, regime="finetune", epochs=3, max_train=64, max_length=16, batch_size=16,
                       hp={"lr": 1e-4}))
    assert tuned.config.model == "minilm" and tuned.num_classes == 2
    curve = [tuned.run_epoch() for _ in range(3)]
    assert [m["status"] for m in curve] == ["running", "running", "finished"]
    assert curve[-1]["train_loss"] < curve[0]["train_loss"]
    assert curve[-1]["eval_accuracy"] > 0.8, curve


# --- determinism, checkpoints, divergence ----------------------------------------------------------------

SMALL_TEXT = dict(dataset="trec6-scratch", strategy="dals", epochs=3, max_train=400, max_eval=100, seed=3)


def test_same_config_same_metrics():
    a = list(run_trial(SMALL_TEXT))
    b = list(run_trial(SMALL_TEXT))
    assert _curve(a) == _curve(b)
    c = list(run_trial(dict(SMALL_TEXT, seed=4)))
    assert _curve(a) != _curve(c)


@pytest.mark.parametrize("config", [SMALL_TEXT, dict(dataset="synthetic", strategy="sam-discriminative",
                                                     epochs=3, max_train=512, max_eval=128)])
def test_restore_ends_exactly_like_an_uninterrupted_run(tmp_path, config):
    full = list(run_trial(config))
    first = Trial(config)
    head = [first.run_epoch()]
    first.save(tmp_path / "ckpt")
    torch.manual_seed(12345)  # a restored process starts from another RNG state
    tail = list(run_trial(config, checkpoint=tmp_path / "ckpt"))
    assert _curve(head + tail) == _curve(full)
    resumed = Trial(config)
    resumed.restore(tmp_path / "ckpt")
    assert resumed.epoch == 1 and _curve(resumed.history) == _curve(head)


def test_restore_rejects_another_config_and_missing_files(tmp_path):
    trial = Trial(dict(dataset="synthetic", strategy="sgd", epochs=2, max_train=128))
    trial.run_epoch()
    trial.save(tmp_path)
    other = Trial(dict(dataset="synthetic", strategy="sgd", epochs=2, max_train=128, seed=1))
    with pytest.raises(ValueError, match="another trial config"):
        other.restore(tmp_path)
    with pytest.raises(FileNotFoundError, match="no trial checkpoint"):
        other.restore(tmp_path / "nothing")


def test_huge_learning_rate_diverges_without_raising():
    trial = Trial(dict(dataset="synthetic", strategy="sgd", epochs=5, max_train=2048, hp={"lr": 1e12}))
    m = trial.run_epoch()
    assert m["status"] == "diverged" == trial.status and trial.done and trial.epoch == 1
    assert not np.isfinite(m["train_loss"]) and m["eval_accuracy"] == pytest.approx(
        _scored(trial, trial.eval_inputs, trial.eval_y)[0])  # what the broken model scores, not an error
    assert set(m) >= {"epoch", "train_loss", "eval_accuracy", "eval_loss", "lr_bottom", "lr_top", "seconds",
                      "examples_per_second", "status"}
    with pytest.raises(RuntimeError, match="diverged"):
        trial.run_epoch()
    assert [x["status"] for x in run_trial(dict(dataset="synthetic", strategy="sgd", epochs=5, max_train=256,
                                                hp={"lr": 1e12}))] == ["diverged"]


def test_missing_files_and_bad_ids_fail_before_training(tmp_path):
    with pytest.raises(FileNotFoundError, match="put train_5500.label in"):
        Trial(dict(dataset="trec6-scratch", data_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="unknown dataset"):
        Trial(dict(dataset="cifar100"))


@pytest.mark.parametrize("name", dalsopt.names())
def test_every_strategy_checkpoints_through_weights_only_load(tmp_path, name):
    config = dict(dataset="synthetic", strategy=name, epochs=2, max_train=128, max_eval=64, batch_size=64)
    full = list(run_trial(config))
    first = Trial(config)
    head = first.run_epoch()
    first.save(tmp_path)
    assert _curve([head] + list(run_trial(config, checkpoint=tmp_path))) == _curve(full)
