"""`dals train`: the per-epoch table, --json lines, flags reaching the trial, one-line errors (exit 2)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sweeps.cli import main as cli

EPOCH_KEYS = {"epoch", "train_loss", "eval_accuracy", "eval_loss", "lr_bottom", "lr_top", "seconds"}
FAST = ["train", "--dataset", "synthetic", "--max-train", "512", "--max-eval", "128", "--batch-size", "64"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("DALS_OFFLINE", "1")


def test_json_is_one_object_per_epoch_then_status(capsys):
    assert cli.main(FAST + ["--strategy", "adamw", "--epochs", "3", "--lr", "1e-3", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    epochs = [json.loads(line) for line in lines[:3]]
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and all(EPOCH_KEYS <= set(e) for e in epochs)
    assert epochs[0]["lr_top"] == pytest.approx(1e-3)  # --lr reached adamw (constant rate; default 3e-4)
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    last = json.loads(lines[3])
    assert last["status"] == "finished" and last["epochs"] == 3


def test_lr_flag_and_hp_pairs_reach_the_strategy(tmp_path, capsys):
    """Every --hp value is in the optimizer that trained (the checkpoint's param_groups), not only the
    rate: sgd's defaults (momentum 0.9, weight_decay 5e-4) would show if one were dropped."""
    import torch

    assert cli.main(FAST + ["--strategy", "sgd", "--epochs", "1", "--lr", "0.002", "--hp", "momentum=0.5",
                            "--hp", "weight_decay=0", "--json", "--checkpoint", str(tmp_path)]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[0])
    assert first["lr_bottom"] == first["lr_top"] == pytest.approx(0.002)
    saved = torch.load(tmp_path / "trial.pt", map_location="cpu", weights_only=True)
    groups = saved["strategy"]["optimizer"]["param_groups"]
    assert len(groups) == 4  # the MLP's blocks
    assert {(g["lr"], g["momentum"], g["weight_decay"]) for g in groups} == {(0.002, 0.5, 0.0)}


def test_table_output(capsys):
    assert cli.main(FAST + ["--strategy", "dals", "--epochs", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("dals train: dals on synthetic (scratch, mlp), seed 0, 2 epochs x 8 steps")
    assert out[1].split() == ["epoch", "train_loss", "eval_acc", "eval_loss", "lr_bottom", "lr_top", "sec"]
    assert [row.split()[0] for row in out[2:4]] == ["1", "2"] and out[4].startswith("status: finished")


def test_divergence_is_reported_not_raised(capsys):
    assert cli.main(FAST + ["--strategy", "sgd", "--epochs", "4", "--lr", "1e12", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["train_loss"] is None  # NaN -> null: valid JSON
    assert json.loads(lines[1])["status"] == "diverged"


def test_checkpoint_flag_resumes(tmp_path, capsys):
    args = FAST + ["--strategy", "sgd", "--epochs", "2", "--json", "--checkpoint", str(tmp_path / "c")]
    assert cli.main(args) == 0
    first = capsys.readouterr().out.strip().splitlines()
    assert cli.main(args) == 0  # finished: nothing left to train, the status line again
    again = capsys.readouterr().out.strip().splitlines()
    assert again == first[-1:] and json.loads(again[0])["epochs"] == 2


def _without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "examples_per_second")} for r in rows]


def test_checkpoint_resumed_mid_run_is_bit_identical(tmp_path, capsys, monkeypatch):
    """Ctrl+C right after epoch 1's checkpoint, the same command again: epochs 2-3 and the final
    weights are exactly those of a run never stopped (dals: momentum, phase state and warmup schedule
    in the checkpoint; the data order per epoch)."""
    import torch

    from sweeps.train.trial import Trial

    args = FAST + ["--strategy", "dals", "--epochs", "3", "--json", "--checkpoint"]
    assert cli.main(args + [str(tmp_path / "whole")]) == 0
    whole = [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    save = Trial.save

    def save_then_interrupt(trial: Trial, path) -> None:
        save(trial, path)
        if trial.epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trial, "save", save_then_interrupt)
    assert cli.main(args + [str(tmp_path / "cut")]) == 130
    assert capsys.readouterr().out == ""  # stopped between epoch 1's checkpoint and its line
    monkeypatch.setattr(Trial, "save", save)
    assert cli.main(args + [str(tmp_path / "cut")]) == 0
    resumed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r.get("epoch") for r in resumed[:-1]] == [2, 3]
    assert _without_timing(resumed) == _without_timing(whole[1:])
    a, b = (torch.load(tmp_path / d / "trial.pt", weights_only=True) for d in ("whole", "cut"))
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@pytest.mark.parametrize("argv,match", [
    (["train", "--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["train", "--strategy", "adamx"], "unknown strategy 'adamx'"),
    (["train", "--hp", "momentum"], "--hp expects key=value"),
    (["train", "--hp", "colour=3"], "unknown hyperparameter"),
    (["train", "--epochs", "0"], "epochs must be a positive integer"),
    (["train", "--dataset", "trec6-scratch", "--data-dir", "/nonexistent"], "put train_5500.label in"),
    (["train", "--dataset", "file:/nonexistent/x.csv"], "data file not found"),
    (["train", "--dataset", "trec6", "--text-column", "q"], "only apply to file:PATH"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, match):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dals: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert match in err


def test_bad_columns_in_a_user_file(tmp_path, capsys):
    (tmp_path / "d.csv").write_text("review,label\ngood,1\nbad,0\n" * 10)
    assert cli.main(["train", "--dataset", f"file:{tmp_path / 'd.csv'}", "--text-column", "text"]) == 2
    assert "no column 'text'; columns are review, label" in capsys.readouterr().err


def test_commands_are_registered_by_functions():
    from sweeps.cli import args as cli_args, train

    assert train.register in cli.COMMANDS
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--dataset", "rte", "--hp", "lr=1e-4", "--hp", "momentum=0.8"])
    assert args.func is not None and cli_args.parse_hp(args.hp) == {"lr": 1e-4, "momentum": 0.8}


def test_console_script_runs_outside_the_repo(tmp_path):
    exe = Path(sys.executable).with_name("dals")
    if not exe.exists():
        pytest.skip("console script not installed (pip install -e .)")
    env = dict(os.environ, DALS_OFFLINE="1")
    done = subprocess.run([str(exe), *FAST, "--epochs", "1", "--strategy", "adamw", "--json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["status"] == "finished"
    bad = subprocess.run([str(exe), "train", "--dataset", "nope"], capture_output=True, text=True, timeout=120,
                         env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("dals: error: unknown dataset")


def test_hf_folder_and_model_folder_by_path(tmp_path, capsys):
    """`--dataset hf:PATH` (a save_to_disk folder) with `--model PATH` (the MiniLM folder by its path,
    not the name `minilm`): fine-tunes offline; a model path that is no folder is one line."""
    import datasets

    from sweeps.train.models import minilm_path

    rows = {"text": [f"{'what is' if i % 2 else 'who was'} thing {i} ?" for i in range(40)],
            "label": [i % 2 for i in range(40)]}
    datasets.Dataset.from_dict(rows).save_to_disk(tmp_path / "qs")
    tiny = ["--max-train", "32", "--max-eval", "8", "--max-length", "16", "--batch-size", "16", "--epochs", "1"]
    argv = ["train", "--dataset", f"hf:{tmp_path / 'qs'}", "--strategy", "adamw", *tiny, "--json"]
    assert cli.main(argv + ["--model", str(minilm_path())]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[-1]["status"] == "finished" and lines[0]["train_loss"] > 0
    assert cli.main(argv + ["--model", str(tmp_path / "no-model")]) == 2
    assert f"model folder not found: {tmp_path / 'no-model'}" in capsys.readouterr().err
