"""Sweep specs: shipped specs load, lists expand, and every broken spec is one line naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

import dalsopt
from sweeps.cli import main as cli
from sweeps.spec.common import SpecError, expand_strategies
from sweeps.spec.loader import SPECS_DIR
from sweeps.spec.sweep import load_spec
from spec_files import write_spec as write

GOOD = """
name: tiny
grid:
  strategies: [sgd, gen6]
  datasets: [synthetic]
  seeds: 2
defaults: {epochs: 2, max_train: 500}
datasets:
  synthetic: {target: 0.9, hp: {lr: 0.05}}
"""


@pytest.mark.parametrize("name", ["quick", "paper", "paper-cpu"])
def test_shipped_specs_load_with_all_18_strategies(name):
    spec, path = load_spec(name)
    assert path == SPECS_DIR / f"{name}.yaml"
    extra = ["stlr-discriminative@double-decay"] if name.startswith("paper") else []
    assert [s for s in spec.grid.strategies if s not in extra] == dalsopt.names()
    assert len(spec.trials()) == (18 + len(extra)) * len(spec.grid.datasets) * len(spec.grid.seeds)


def test_presets_join_the_grid_after_their_strategy_and_all_leaves_them_out():
    presets = [n for n in dalsopt.names(presets=True) if "@" in n]
    assert "stlr-discriminative@double-decay" in presets
    got = expand_strategies(["all", "stlr-discriminative@double-decay"])
    at = got.index("stlr-discriminative")
    assert got[at + 1] == "stlr-discriminative@double-decay" and len(got) == 19
    assert not any("@" in n for n in expand_strategies(["all", "gen6"]))
    with pytest.raises(ValueError, match="unknown strategy 'dals@nope'"):
        expand_strategies(["dals@nope"])


def test_quick_is_one_seed_of_synthetic():
    spec, _ = load_spec("quick")
    assert (spec.grid.datasets, spec.grid.seeds, len(spec.trials())) == (["synthetic"], [0], 18)


def test_strategy_lists_expand_ids_generations_and_all():
    gens = dalsopt.GENERATIONS
    assert expand_strategies(["all"]) == dalsopt.names()
    assert expand_strategies(["gen3"]) == [n for n in dalsopt.names() if gens[n] == 3]
    # registry order, duplicates dropped
    assert expand_strategies(["dals", "sgd", "gen1"]) == ["sgd", "dals"]


def test_trials_carry_labels_settings_and_a_valid_config(tmp_path):
    spec, _ = load_spec(write(tmp_path, GOOD))
    trials = spec.trials()
    assert [t.key for t in trials][:2] == ["sgd/synthetic/0", "sgd/synthetic/1"]
    assert {t.strategy for t in trials} == {"sgd", *[n for n, g in dalsopt.GENERATIONS.items() if g == 6]}
    first = trials[0]
    assert first.labels() == {"strategy": "sgd", "generation": 1, "dataset": "synthetic",
                              "regime": "scratch", "seed": 0}
    config = first.config()
    assert (config.epochs, config.max_train, config.hp["lr"]) == (2, 500, 0.05)
    assert spec.targets() == {"synthetic": 0.9}


def test_digest_ignores_comments_and_key_order(tmp_path):
    a, _ = load_spec(write(tmp_path, GOOD, "a.yaml"))
    reordered = "# a comment\n" + GOOD.replace("defaults: {epochs: 2, max_train: 500}",
                                               "defaults: {max_train: 500, epochs: 2}")
    b, _ = load_spec(write(tmp_path, reordered, "b.yaml"))
    c, _ = load_spec(write(tmp_path, GOOD.replace("epochs: 2", "epochs: 3"), "c.yaml"))
    assert a.digest == b.digest != c.digest


BROKEN = {
    # name: (replace this, with this), words the one-line error must contain
    "typo top-level key": (("grid:", "gird:"), ["gird", "allowed", "grid"]),
    "typo grid key": (("  seeds: 2", "  seed: 2"), ["grid", "'seed'", "allowed", "seeds"]),
    "unknown strategy": (("[sgd, gen6]", "[sgd, dalz]"), ["grid.strategies", "dalz", "allowed", "dals-fast", "gen6", "all"]),
    "unknown generation": (("[sgd, gen6]", "[gen9]"), ["grid.strategies", "gen9", "allowed"]),
    "unknown dataset": (("[synthetic]", "[synthetik]"), ["grid.datasets", "synthetik", "cifar10"]),
    "typo per-dataset key": (("{target: 0.9,", "{targte: 0.9,"), ["datasets.synthetic", "targte", "allowed", "max_train"]),
    "override for a dataset not in the grid": (("  synthetic: {target", "  cifar10: {target"), ["datasets", "cifar10", "grid.datasets"]),
    "bad epochs range": (("epochs: 2", "epochs: 0"), ["defaults", "epochs", "positive"]),
    "bad hyperparameter": (("lr: 0.05", "lrr: 0.05"), ["datasets.synthetic", "lrr"]),
    "zero cpus": (("seeds: 2", "seeds: 2\nresources: {cpu: 0}"), ["resources.cpu", "greater than 0"]),
    "negative seed": (("seeds: 2", "seeds: [0, -1]"), ["grid.seeds", ">= 0"]),
    "bad mode": (("name: tiny", "name: tiny\nmode: maximum"), ["mode", "'max'", "'min'"]),
    "unknown metric": (("name: tiny", "name: tiny\nmetric: accuracy"), ["metric", "eval_accuracy"]),
    "bad scheduler": (("name: tiny", "name: tiny\nscheduler: {type: hyperband}"), ["scheduler.type", "asha"]),
    "bad name": (("name: tiny", "name: 'a b'"), ["name", "pattern"]),
    "missing name": (("name: tiny\n", ""), ["name", "required"]),
    "not yaml": (("name: tiny", "name: [tiny"), ["not valid YAML"]),
    "val metric without validation": (("name: tiny", "name: tiny\nmetric: val_accuracy"),
                                      ["metric: val_accuracy needs a validation split", "synthetic"]),
    "validation off under a val metric": (("{target: 0.9,", "{validation: 0, target: 0.9,"),
                                          ["needs a validation split"]),
    "validation too large": (("{target: 0.9,", "{validation: 0.9, target: 0.9,"),
                             ["datasets.synthetic", "validation must be a fraction in (0, 0.5]"]),
    "validation not a number": (("{target: 0.9,", "{validation: lots, target: 0.9,"),
                                ["datasets.synthetic", "validation must be a fraction", "lots"]),
}


@pytest.mark.parametrize("case", BROKEN, ids=list(BROKEN))
def test_broken_spec_is_one_line_naming_file_and_key(tmp_path, case):
    (old, new), words = BROKEN[case]
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    if case == "validation off under a val metric":
        text = text.replace("name: tiny", "name: tiny\nmetric: val_accuracy")
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    for word in words:
        assert word in message, (word, message)


def test_spec_that_is_not_a_mapping(tmp_path):
    with pytest.raises(SpecError, match="a spec is a mapping"):
        load_spec(write(tmp_path, "- just\n- a list\n"))


def test_missing_spec_names_the_shipped_ones():
    with pytest.raises(SpecError, match="no such spec file.*quick"):
        load_spec("no-such-spec")


def test_cli_prints_one_error_line_and_exits_2(tmp_path, capsys):
    path = write(tmp_path, GOOD.replace("[synthetic]", "[synthetik]"))
    assert cli.main(["sweep", "run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dals: error: ") and "Traceback" not in err
    assert "synthetik" in err and str(path) in err


def test_cli_dry_run_lists_the_trials(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["sweep", "run", str(write(tmp_path, GOOD)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "sgd/synthetic/1" in out and "dals-acc/synthetic/0" in out
    assert "tiny: 10 trials (5 strategies x 1 datasets x 2 seeds)" in out
    assert not (tmp_path / "dals-runs").exists()


def test_exponent_floats_are_numbers_like_yaml_1_2(tmp_path):
    """PyYAML's YAML 1.1 reads `1e-3` as a string; users mean a float."""
    spec, _ = load_spec(write(tmp_path, """
        name: t
        grid: {strategies: [adamw], datasets: [synthetic], seeds: 1}
        defaults: {hp: {lr: 1e-3, weight_decay: 5E-4}}
    """))
    assert spec.defaults.hp == {"lr": 0.001, "weight_decay": 0.0005}


def test_a_sweep_may_rank_on_validation_and_its_trials_hold_it_out(tmp_path):
    """`validation` is a trial setting like any TrialConfig field (no list of its own in the spec)."""
    text = GOOD.replace("name: tiny", "name: tiny\nmetric: val_accuracy").replace(
        "defaults: {epochs: 2, max_train: 500}", "defaults: {epochs: 2, max_train: 500, validation: 0.1}")
    spec, _ = load_spec(write(tmp_path, text))
    assert spec.metric == "val_accuracy"
    assert {t.config().validation for t in spec.trials()} == {0.1}
    plain, _ = load_spec(write(tmp_path, GOOD, "plain.yaml"))
    assert plain.metric == "eval_accuracy" and plain.trials()[0].config().validation is None


def test_a_dataset_may_run_fewer_strategies(tmp_path):
    text = GOOD.replace("  datasets: [synthetic]\n", "  datasets: [synthetic, synthetic-gmm]\n"
                        "  dataset_strategies: {synthetic-gmm: [dals, sgd]}\n").replace(
        "datasets:\n  synthetic:", "datasets:\n  synthetic-gmm: {epochs: 1}\n  synthetic:")
    spec, _ = load_spec(write(tmp_path, text))
    gmm = [t.key for t in spec.trials() if t.dataset == "synthetic-gmm"]
    assert gmm == ["sgd/synthetic-gmm/0", "sgd/synthetic-gmm/1", "dals/synthetic-gmm/0", "dals/synthetic-gmm/1"]
    assert len(spec.trials()) == 10 + 4
    for bad, words in ((text.replace("{synthetic-gmm: [dals, sgd]}", "{cifar10: [sgd]}"),
                        ["grid", "dataset_strategies: 'cifar10' is not in grid.datasets"]),
                       (text.replace("[dals, sgd]", "[dalz]"), [
                           "grid.dataset_strategies: synthetic-gmm: unknown strategy 'dalz'"]),
                       (text.replace("[dals, sgd]", "[]"), ["dataset_strategies.synthetic-gmm: an empty list"])):
        with pytest.raises(SpecError) as err:
            load_spec(write(tmp_path, bad, "bad.yaml"))
        assert "\n" not in str(err.value) and all(w in str(err.value) for w in words), str(err.value)


def test_paper_finetune_cpu_runs_the_fine_tuning_questions():
    """TREC-6 on its full train split (10% held out for validation) with every strategy and the STLR
    variants; IMDb and RTE with the strategies the paper's fine-tuning claims name; 2 trials at once."""
    spec, _ = load_spec("paper-finetune-cpu")
    named = {"adamw", "radam", "sgd", "lookahead-adamw", "stlr-discriminative",
             "stlr-discriminative@double-decay", "stlr-discriminative@authors", "dals", "dals@finetune"}
    trec = spec.grid.strategies_for("trec6")
    assert set(dalsopt.names()) | {n for n in named if n.startswith("stlr")} <= set(trec)
    assert all(named <= set(spec.grid.strategies_for(d)) for d in ("imdb", "rte"))
    assert len(spec.grid.seeds) >= 2 and spec.resources.cpu == 1 and spec.resources.max_concurrent == 2
    cfg = next(t for t in spec.trials() if t.dataset == "trec6").config()
    assert (cfg.max_train, cfg.max_length, cfg.validation) == (None, 32, 0.1)
    assert cfg.hp["lr"] == pytest.approx(0.6 * dalsopt.resolve(cfg.strategy, "finetune")["lr"])


# ----------------------------------------------------------------------------- user data, checked up front

USER_SWEEP = """
name: user-data
grid: {{strategies: [sgd], datasets: ["file:{table}"], seeds: [0]}}
defaults: {{epochs: 1, text_column: {text}, label_column: {label}}}
"""
USER_TUNE = """
name: user-tune
tune:
  strategy: sgd
  datasets: ["file:{table}"]
  space: {{lr: {{type: float, low: 0.001, high: 0.1, log: true}}}}
  trials: 2
  concurrency: 1
defaults: {{epochs: 1, text_column: {text}, label_column: {label}}}
"""


@pytest.mark.parametrize("template,command", [(USER_SWEEP, ["sweep", "run"]), (USER_TUNE, ["tune", "run"])],
                         ids=["sweep", "tune"])
@pytest.mark.parametrize("case,text,label,words", [
    ("missing file", "review", "y", ["datasets: file:", "data file not found", "missing.csv"]),
    ("no text column", "text", "y", ["datasets: file:", "no column 'text'; columns are review, y"]),
    ("no label column", "review", "label", ["datasets: file:", "no column 'label'; columns are review, y"]),
])
def test_dry_run_reads_the_user_data_before_anything_starts(tmp_path, template, command, case, text, label, words):
    """README: a spec is validated before anything starts, its user data included (was exit 0 here,
    the trial failing once Ray ran)."""
    from cli_harness import fenced, one_line_error, run_cli

    data = tmp_path / "data"
    data.mkdir()
    (data / "reviews.csv").write_text("review,y\ngood,1\nbad,0\n" * 10)
    table = data / ("missing.csv" if case == "missing file" else "reviews.csv")
    spec = write(tmp_path, template.format(table=table, text=text, label=label))
    with fenced():
        line = one_line_error(run_cli([*command, str(spec), "--dry-run"], tmp_path), str(spec), *words)
        assert line.startswith(f"{spec}: {'grid' if command[0] == 'sweep' else 'tune'}.datasets: file:{table}: ")
        good = write(tmp_path, template.format(table=data / "reviews.csv", text="review", label="y"), "good.yaml")
        v = run_cli([*command, str(good), "--dry-run"], tmp_path)
    assert (v.code, v.err) == (0, ""), v.err
