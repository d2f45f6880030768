"""Bad `dals` command lines: each is one `error:` line on stderr and exit 2, with no traceback and
nothing started or written (run in-process, then a few as real subprocesses, as a user sees them)."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from cli_harness import HANG_S, MAX_CONFIGS, fenced, one_line_error, run_cli

# argv (FOLDER, FILE: a folder and a file in the working dir), words the error line must contain
BAD = {
    "no command": ([], ["required", "COMMAND"]),
    "unknown command": (["frob"], ["invalid choice", "'frob'"]),
    "no action": (["sweep"], ["required", "ACTION"]),
    "unknown action": (["tune", "frob"], ["invalid choice", "'frob'"]),
    "no jobs action": (["jobs"], ["required", "ACTION"]),
    "no spec": (["sweep", "run"], ["required", "SPEC"]),
    "no tune spec": (["tune", "run"], ["required", "SPEC"]),
    "unknown flag": (["sweep", "run", "quick", "--bogus"], ["unrecognized arguments", "--bogus"]),
    "unknown flag after a valid one": (["tune", "run", "tune-dals-cpu", "--fresh", "-z"], ["-z"]),
    "missing spec file": (["sweep", "run", "no-such.yaml"], ["no-such.yaml", "no such spec file", "quick"]),
    "missing tune spec file": (["tune", "run", "nope"], ["nope", "no such spec file"]),
    "folder as spec": (["sweep", "run", "FOLDER"], ["FOLDER", "a folder"]),
    "folder as tune spec": (["tune", "run", "FOLDER"], ["FOLDER", "a folder"]),
    "folder to submit": (["sweep", "submit", "FOLDER"], ["FOLDER", "a folder"]),
    "missing spec to submit": (["tune", "submit", "no-such.yaml"], ["no such spec file"]),
    "sweep spec to tune": (["tune", "run", "quick"], ["quick.yaml", "tune", "missing"]),
    "tune spec to sweep": (["sweep", "run", "tune-dals-cpu", "--dry-run"], ["unknown key 'tune'"]),
    "bad address, run": (["sweep", "run", "quick", "--address", "::::"], ["--address", "'::::'"]),
    "bad port, run": (["sweep", "run", "quick", "--address", "head:99999"], ["--address", "99999"]),
    "bad address, tune": (["tune", "run", "tune-dals-cpu", "--address", "a b:1"], ["--address"]),
    "bad address, submit": (["sweep", "submit", "quick", "--address", "http://"], ["--address"]),
    "bad address, tune submit": (["tune", "submit", "tune-dals-cpu", "--address", "h:x"], ["--address"]),
    "bad address, jobs": (["jobs", "status", "J", "--address", "::::"], ["--address"]),
    "bad address, jobs list": (["jobs", "list", "--address", "head:port"], ["--address"]),
    "train: unknown strategy": (["train", "--strategy", "nope"], ["unknown strategy 'nope'", "dals"]),
    "train: unknown dataset": (["train", "--dataset", "nope"], ["unknown dataset 'nope'", "synthetic"]),
    "train: empty file dataset": (["train", "--dataset", "file:"], ["file:"]),
    "train: missing data file": (["train", "--dataset", "file:/no/such.csv"], ["not found"]),
    "train: negative epochs": (["train", "--epochs", "-1"], ["epochs", "-1"]),
    "train: zero epochs": (["train", "--epochs", "0", "--checkpoint", "ck"], ["epochs"]),
    "train: epochs not a number": (["train", "--epochs", "ten"], ["--epochs", "'ten'"]),
    "train: zero batch": (["train", "--batch-size", "0"], ["batch_size"]),
    "train: negative subset": (["train", "--max-train", "-5"], ["max_train"]),
    "train: negative seed": (["train", "--seed", "-1"], ["--seed", "-1"]),
    "train: huge seed": (["train", "--seed", str(10**20)], ["--seed"]),
    "train: negative lr": (["train", "--lr", "-1"], ["'lr'", ">= 0"]),
    "train: nan lr": (["train", "--lr", "nan"], ["'lr'", "finite"]),
    "train: lr not a number": (["train", "--lr", "fast"], ["--lr", "'fast'"]),
    "train: hp without =": (["train", "--hp", "lr"], ["--hp", "key=value"]),
    "train: hp without key": (["train", "--hp", "=3"], ["--hp"]),
    "train: hp not a number": (["train", "--hp", "lr=abc"], ["'lr'", "number"]),
    "train: hp infinite": (["train", "--hp", "lr=Infinity"], ["'lr'"]),
    "train: unknown hp": (["train", "--hp", "nosuch=1"], ["'nosuch'"]),
    "train: hp a mapping": (["train", "--hp", 'lr={"a": 1}'], ["lr"]),
    "train: bad regime": (["train", "--regime", "sideways"], ["--regime", "'sideways'"]),
    "train: bad model": (["train", "--model", "mlp:0"], ["mlp:0"]),
    "train: bad device": (["train", "--device", "tpu"], ["device", "'tpu'"]),
    "train: augment on tabular data": (["train", "--augment"], ["augment"]),
    "train: text column on a shipped dataset": (["train", "--text-column", "t"], ["text_column"]),
    "train: checkpoint is a file": (["train", "--checkpoint", "FILE"], ["--checkpoint", "a file"]),
    "export: no study anywhere": (["tune", "export", "nope"], ["no Optuna storage", "optuna-journal.log"]),
    "export: missing sqlite store": (["tune", "export", "nope", "--storage", "sqlite:///x.db"], ["x.db"]),
    "export: missing journal": (["tune", "export", "nope", "--storage", "j.log"], ["j.log"]),
    "export: spec missing": (["tune", "export", "nope", "--spec", "no-such.yaml"], ["no-such.yaml"]),
    "export: spec a folder": (["tune", "export", "nope", "--spec", "FOLDER"], ["a folder"]),
    "export: preset a path": (["tune", "export", "nope", "--preset", "../../evil"], ["--preset"]),
    "ui: port zero": (["ui", "--port", "0"], ["--port", "0"]),
    "ui: port not a number": (["ui", "--port", "http"], ["--port", "'http'"]),
    "ui: spec missing": (["ui", "--spec", "no-such.yaml"], ["no such spec file"]),
    "report: spec missing": (["report", "no-such"], ["no-such"]),
}


@pytest.fixture(scope="module", autouse=True)
def nothing_starts() -> Iterator[None]:
    with fenced():
        yield


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty working dir but for FOLDER (a folder) and FILE (a file)."""
    (tmp_path / "FOLDER").mkdir()
    (tmp_path / "FILE").write_text("not a checkpoint\n")
    return tmp_path


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_command_line_is_one_line(case: str, workdir: Path) -> None:
    argv, words = BAD[case]
    v = run_cli(argv, workdir)
    one_line_error(v, *words)
    assert v.configs <= MAX_CONFIGS and v.seconds < HANG_S, (v.configs, v.seconds)  # bounded work


def test_help_is_not_an_error(workdir: Path) -> None:
    v = run_cli(["sweep", "run", "-h"], workdir)
    assert (v.code, v.err, v.left_behind) == (0, "", []) and "--dry-run" in v.out


def test_spec_error_goes_before_the_address_check(workdir: Path) -> None:
    """The spec is the first thing read: its error is the one reported, whatever the flags."""
    (workdir / "FILE").write_bytes(b"\xff\xfe")
    line = one_line_error(run_cli(["sweep", "submit", "FILE", "--address", "::::"], workdir))
    assert line.startswith("FILE: not UTF-8")


def test_good_address_forms_pass(workdir: Path) -> None:
    """Valid addresses reach the (fenced) cluster call: the check rejects only malformed ones."""
    for address in ("auto", "local", "10.0.0.5:6379", "ray://head:10001", "head"):
        assert run_cli(["sweep", "run", "quick", "--address", address], workdir).code == "started"
    for address in ("http://head:8265", "head:8265", "[::1]:8265"):
        assert run_cli(["jobs", "list", "--address", address], workdir).code == "started"


# ----------------------------------------------------------------------------- as a user sees it

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
SUBPROCESS = {  # argv, file contents (written to FILE)
    "unknown command": (["frob"], None),
    "binary spec": (["sweep", "run", "FILE", "--dry-run"], b"\x00\xff\xfe binary"),
    "alias bomb": (["sweep", "run", "FILE"], BOMB.encode()),
    "huge grid": (["sweep", "run", "FILE"], b"name: h\ngrid: {strategies: all, datasets: synthetic, seeds: 1000000000}\n"),
    "negative epochs": (["train", "--epochs", "-1"], None),
    "unknown study": (["tune", "export", "nope"], None),
}


def dals_command() -> list[str]:
    """The console script beside this Python, else the module it runs."""
    script = Path(sys.executable).with_name("dals")
    return [str(script)] if script.exists() else [sys.executable, "-m", "sweeps.cli"]


@pytest.mark.parametrize("case", SUBPROCESS, ids=list(SUBPROCESS))
def test_no_traceback_reaches_the_terminal(case: str, tmp_path: Path) -> None:
    argv, content = SUBPROCESS[case]
    if content is not None:
        (tmp_path / "FILE").write_bytes(content)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    r = subprocess.run([*dals_command(), *argv], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**env, "DALS_OFFLINE": "1"})
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr and ": error: " in r.stderr, r.stderr
    assert r.stdout == ""
    assert sorted(os.listdir(tmp_path)) == (["FILE"] if content is not None else [])


# ----------------------------------------------------------------------------- a CLI that helps

HINTS = {  # argv, words of the one error line
    "misspelled spec": (["sweep", "run", "quik"], ["quik", "(did you mean 'quick'?)"]),
    "misspelled tune spec": (["tune", "run", "tune-dals-cp"], ["(did you mean 'tune-dals-cpu'?)"]),
    "train: misspelled strategy": (["train", "--strategy", "dalls"], ["(did you mean 'dals'?)"]),
    "train: misspelled dataset": (["train", "--dataset", "synthtic"], ["(did you mean 'synthetic'?)"]),
    "train: bad grouping": (["train", "--hp", "grouping=rows"], ["grouping", "'children'", "'rows'"]),
    "dashboard: no storage": (["tune", "dashboard", "nope-scratch"], ["no Optuna storage", "optuna-journal.log"]),
    "dashboard: spec missing": (["tune", "dashboard", "s", "--spec", "no-such.yaml"], ["no such spec file"]),
    "dashboard: sweep spec": (["tune", "dashboard", "quick"], ["tune", "missing"]),
    "dashboard: bad port": (["tune", "dashboard", "s", "--port", "0"], ["--port"]),
}
SPEC_HINTS = {  # spec file text, words of the one error line
    "hyperparameter in defaults": ("defaults: {epochs: 1, lr: 0.1}",
                                   ["defaults: unknown key 'lr'", "goes under `hp:`", "hp: {lr: ...}"]),
    "hyperparameter in a dataset's settings": ("datasets: {synthetic: {momentum: 0.8}}",
                                               ["datasets.synthetic", "'momentum'", "`hp:`"]),
    "misspelled section": ("default: {epochs: 1}", ["unknown key 'default' (did you mean 'defaults'?)"]),
    "misspelled setting": ("defaults: {epoch: 1}", ["unknown key 'epoch' (did you mean 'epochs'?)"]),
}
GRID = "name: hints\ngrid: {strategies: [dals], datasets: [synthetic], seeds: 1}\n"


@pytest.mark.parametrize("case", HINTS, ids=list(HINTS))
def test_a_mistyped_name_gets_a_hint(case: str, workdir: Path) -> None:
    argv, words = HINTS[case]
    one_line_error(run_cli(argv, workdir), *words)


@pytest.mark.parametrize("case", SPEC_HINTS, ids=list(SPEC_HINTS))
def test_a_mistyped_spec_key_gets_a_hint(case: str, workdir: Path) -> None:
    text, words = SPEC_HINTS[case]
    (workdir / "FILE").write_text(GRID + text + "\n")
    one_line_error(run_cli(["sweep", "run", "FILE", "--dry-run"], workdir), *words)


@pytest.mark.parametrize("grid, words", [
    ("{strategies: [dalls], datasets: [synthetic], seeds: 1}", ["grid.strategies", "(did you mean 'dals'?)"]),
    ("{strategies: [dals], datasets: [synthetc], seeds: 1}", ["grid.datasets", "(did you mean 'synthetic'?)"]),
    ("{strategy: [dals], datasets: [synthetic], seeds: 1}", ["(did you mean 'strategies'?)"]),
])
def test_a_mistyped_grid_gets_a_hint(grid: str, words: list[str], workdir: Path) -> None:
    (workdir / "FILE").write_text(f"name: hints\ngrid: {grid}\n")
    one_line_error(run_cli(["sweep", "run", "FILE", "--dry-run"], workdir), *words)


def test_grouping_children_reaches_dalsopt_from_the_flag_and_the_spec(workdir: Path) -> None:
    """`--hp grouping=children` (and a spec's hp) builds the paper's blocks: one per top-level child
    of the model that holds parameters, not the automatic grouping's."""
    from sweeps.spec.sweep import load_spec
    from sweeps.train.config import TrialConfig
    from sweeps.train.trial import Trial

    v = run_cli(["train", "--strategy", "discriminative", "--hp", "grouping=children", "--epochs", "1",
                 "--max-train", "64", "--max-eval", "32", "--json"], workdir)
    assert v.code == 0 and json.loads(v.out.splitlines()[-1])["status"] == "finished", v.err
    small = "epochs: 1, max_train: 64, max_eval: 32, max_length: 16"  # a text CNN: its convs are one child
    (workdir / "FILE").write_text(GRID.replace("[dals]", "[discriminative]").replace("synthetic", "trec6-scratch")
                                  + f"defaults: {{{small}, hp: {{grouping: children}}}}\n")
    spec, _ = load_spec(workdir / "FILE")
    [trial] = spec.trials()
    assert trial.config().hp["grouping"] == "children"
    built = Trial(trial.config())
    children = [c for c in built.model.children() if any(True for _ in c.parameters())]
    auto = Trial(TrialConfig.create(strategy="discriminative", dataset="trec6-scratch", epochs=1,
                                    max_train=64, max_eval=32, max_length=16))
    assert built.strategy.meta["blocks"] == len(children) == 3 < auto.strategy.meta["blocks"]


def test_version_names_the_package_and_its_libraries(workdir: Path) -> None:
    from importlib import metadata

    v = run_cli(["--version"], workdir)
    assert v.code == 0 and v.out.startswith(f"dals {metadata.version('dalsopt')} (")
    for lib in ("torch", "ray", "optuna", "mlflow"):
        assert f"{lib} {metadata.version(lib)}" in v.out


def _actions(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("dals",)):
    """(command path, action) for every argument of every command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, (*path, name))
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_flag_and_argument_has_help() -> None:
    from sweeps.cli.main import build_parser

    bare = [(" ".join(p), a.option_strings or a.dest) for p, a in _actions(build_parser()) if not a.help]
    assert bare == []


def test_help_lists_every_shipped_spec(workdir: Path) -> None:
    import yaml

    from sweeps.spec.loader import SPECS_DIR

    kinds: dict[str, list[str]] = {"sweep": [], "tune": []}
    for path in SPECS_DIR.glob("*.yaml"):
        kinds["tune" if "tune" in yaml.safe_load(path.read_text()) else "sweep"].append(path.stem)
    for kind, names in kinds.items():
        text = " ".join(run_cli([kind, "run", "-h"], workdir).out.split())
        assert names and all(name in text.replace("- ", "-") for name in names), (kind, names, text)


def test_submit_help_says_what_a_resubmit_does(workdir: Path) -> None:
    sweep = " ".join(run_cli(["sweep", "submit", "-h"], workdir).out.split())
    tune = " ".join(run_cli(["tune", "submit", "-h"], workdir).out.split())
    assert "resumes the sweep" in sweep and "finished trials are not trained again" in sweep
    assert "continues the spec's Optuna studies" in tune and "still lacks" in tune
    assert "refused" in sweep and "refused" in tune


def test_tune_dry_run_shows_the_studies_and_starts_nothing(workdir: Path) -> None:
    from sweeps.spec.tune import load_tune_spec

    v = run_cli(["tune", "run", "tune-dals-cpu", "--dry-run"], workdir)
    assert (v.code, v.err, v.left_behind) == (0, "", [])
    spec, _ = load_tune_spec("tune-dals-cpu")
    for study in spec.studies():
        assert f"study {study.name}:" in v.out
    for name in spec.tune.space:
        assert f"    {name} " in v.out
    assert f"{spec.tune.trials} trials each, {spec.tune.concurrency} at a time" in v.out
    assert f"Optuna storage {workdir / 'optuna-journal.log'} (new)" in v.out


def test_readme_lists_every_command() -> None:
    from sweeps.cli.main import build_parser

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    commands = {" ".join(p[:3]) for p, _ in _actions(build_parser()) if len(p) > 1}
    missing = []
    for command in sorted(commands):
        words = command.split()
        if words[1] == "jobs" and len(words) == 3:  # `dals jobs status|logs|stop JOB` lists them together
            if not re.search(rf"dals jobs [a-z|]*\b{words[2]}\b", readme):
                missing.append(command)
        elif command not in readme:
            missing.append(command)
    assert missing == []
