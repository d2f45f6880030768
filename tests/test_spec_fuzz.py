"""Bad spec files, fuzzed: mutations of the shipped sweep and tuning specs through the real `dals`
entry point (in-process).

A mutation known to break the spec (a wrong type, a typo'd key, a value out of range, an empty or
huge grid, an unknown strategy or dataset, broken YAML, bad bytes, a non-mapping, an alias bomb)
must give exit 2 and exactly one stderr line naming the file and the key where the spec is wrong,
after bounded work (trial configs counted), with nothing started or written: no Ray, no MLflow store,
no Optuna journal, no run folder. A mutation that may leave the spec valid (null or a bool for a scalar) must either validate
(`--dry-run` lists the trials; `run` and `submit` get as far as the fenced start) or fail the same
way. Each family of mutations is its own test, which also checks that its mutants were made and
rejected, so none can pass vacuously. Examples are derandomized: CI runs the same ones every time.
"""

from __future__ import annotations

import copy
import math
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dalsopt
from cli_harness import HANG_S, MAX_CONFIGS, Verdict, fenced, one_line_error, run_cli
from sweeps.train.data import DATASETS
from sweeps.spec.common import TrialSettings, strategy_generations
from sweeps.spec.loader import SPECS_DIR
from sweeps.spec.sweep import Spec
from sweeps.train.config import TrialConfig
from sweeps.spec.common import Asha
from sweeps.spec.tune import Param, Sampler, Tune, TuneSpec

FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

RICH_SWEEP = """
name: rich
description: every section set
metric: eval_loss
mode: min
grid:
  strategies: [sgd, gen6, dals]
  datasets: [synthetic, trec6]
  seeds: [0, 1]
defaults: {epochs: 2, max_train: 200, max_eval: 100, hp: {lr: 0.05}}
datasets:
  synthetic: {target: 0.9, batch_size: 32, hp: {weight_decay: 0.001}}
  trec6: {max_length: 16, regime: finetune, model: minilm}
resources: {cpu: 0.5, gpu: 0, max_concurrent: 2}
failure: {max_retries: 0}
scheduler: {type: asha, grace_period: 1, reduction_factor: 3}
tracking: {enabled: true, experiment: rich-exp}
storage: dals-runs
keep_checkpoints: 2
keep_final_checkpoint: false
"""
RICH_TUNE = """
name: tune-rich
tune:
  strategy: dals
  datasets: [synthetic]
  study_per: dataset
  space:
    lr: {type: float, low: 0.001, high: 0.1, log: true}
    warmup_frac: {type: float, low: 0.0, high: 0.2, step: 0.05}
    trust_coef: {type: categorical, choices: [0.01, 0.02]}
    alpha0: {type: int, low: 1, high: 2}
  trials: 4
  concurrency: 2
  seeds: 1
  sampler: {type: random, seed: 3}
  pruning: {type: asha, grace_period: 1, reduction_factor: 2}
defaults: {epochs: 2, max_train: 200}
datasets:
  synthetic: {max_eval: 100, target: 0.5}
resources: {cpu: 1}
tracking: {enabled: false}
"""


def _base(kind: str, name: str, text: str) -> tuple[str, str, dict]:
    return kind, name, yaml.safe_load(text)


BASES = [
    *(_base("sweep", n, (SPECS_DIR / f"{n}.yaml").read_text()) for n in ("quick", "paper-cpu", "paper")),
    *(_base("tune", n, (SPECS_DIR / f"{n}.yaml").read_text()) for n in ("tune-dals-cpu", "tune-dals")),
    _base("sweep", "rich", RICH_SWEEP),
    _base("tune", "tune-rich", RICH_TUNE),
]
COMMANDS = {"sweep": [["sweep", "run", "{}", "--dry-run"], ["sweep", "run", "{}"], ["sweep", "submit", "{}"]],
            "tune": [["tune", "run", "{}"], ["tune", "submit", "{}"]]}


def _known_names() -> set[str]:
    """Every name a typo must not land on: keys of every section, trial settings, strategies,
    generations, datasets and hyperparameters."""
    models = (Spec, TuneSpec, Tune, Param, Sampler, Asha, TrialSettings,
              *(Spec.model_fields[k].annotation for k in ("grid", "resources", "failure", "scheduler", "tracking")))
    names = {k for m in models for k in m.model_fields} | set(TrialConfig.keys()) | {"target", "all"}
    names |= set(strategy_generations(presets=True)) | {f"gen{g}" for g in dalsopt.GENERATIONS.values()}
    names |= set(DATASETS) | {k for n in dalsopt.names() for k in dalsopt.resolve(n)}
    return names


KNOWN = _known_names()


# ----------------------------------------------------------------------------- mutations


@dataclass
class Mutant:
    """A mutated spec file: its bytes, what was done, and what the error must name."""

    kind: str  # sweep | tune
    how: str  # the mutation kind (coverage is checked)
    content: bytes
    where: tuple = ()  # the key path the message must start with (() for text-level mutations)
    words: tuple[str, ...] = ()  # words the message must contain
    must_fail: bool = True


def nodes(data: Any, prefix: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """Every (path, value) below the root."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for k, v in items:
        yield (*prefix, k), v
        yield from nodes(v, (*prefix, k))


def free(path: tuple) -> bool:
    """Inside `choices`, a number or a string are both fine: only nested garbage is wrong there."""
    return "choices" in path


def set_in(data: dict, path: tuple, value: Any) -> None:
    """Set data[path] = value, making missing mappings on the way."""
    for k in path[:-1]:
        data = data.setdefault(k, {}) if isinstance(data, dict) else data[k]
    data[path[-1]] = value


def get_in(data: Any, path: tuple) -> Any:
    for k in path:
        data = data[k]
    return data


def dump(data: Any) -> bytes:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode()


GARBAGE = {"zz": [1, {"q": None}]}
NESTED = [[{"zz": 1}]]
# replacement values by the original's type: (always wrong there, maybe fine there)
WRONG = {
    dict: ([[1, 2], "n0t-a-value", 7, None, True, NESTED, GARBAGE], []),
    list: ([{"zz": 1}, "n0t-a-value", None, True, 2.5, NESTED], []),
    str: ([7, 2.5, NESTED, GARBAGE, True], [None]),
    bool: (["n0t-a-value", 7, [1], GARBAGE, None], []),
    "number": (["n0t-a-value", ["n0t-a-value"], GARBAGE, NESTED], [None, True, False]),
}


def _type_key(v: Any) -> Any:
    return "number" if isinstance(v, (int, float)) and not isinstance(v, bool) else type(v)


@st.composite
def wrong_type(draw: st.DrawFn, kind: str, data: dict) -> Mutant:
    path, value = draw(st.sampled_from(list(nodes(data))))
    wrong, maybe = WRONG[_type_key(value)]
    if free(path):
        wrong, maybe = [NESTED, GARBAGE], []
    new, must_fail = draw(st.sampled_from([(w, True) for w in wrong] + [(m, False) for m in maybe]))
    set_in(data, path, copy.deepcopy(new))
    leaf = [k for k in path if isinstance(k, str)][-1]
    return Mutant(kind, "wrong type" if must_fail else "maybe", dump(data), path, (leaf,), must_fail)


def _typo(draw: st.DrawFn, key: str) -> str:
    i = draw(st.integers(0, len(key) - 1))
    letter = draw(st.sampled_from("abcdefghijklmnopqrstuvwxyz_"))
    edits: list[Callable[[], str]] = [
        lambda: key[:i] + key[i + 1:],  # dropped
        lambda: key[:i] + key[i] + key[i:],  # doubled
        lambda: key[:i] + letter + key[i + 1:],  # replaced
        lambda: key[:i] + letter + key[i:],  # inserted
        lambda: key[:i] + key[i + 1:i + 2] + key[i] + key[i + 2:],  # swapped
        lambda: key.capitalize(),
    ]
    return draw(st.sampled_from(edits))()


@st.composite
def typo_key(draw: st.DrawFn, kind: str, data: dict) -> Mutant:
    mappings = [((), data)] + [(p, v) for p, v in nodes(data) if isinstance(v, dict) and v]
    path, mapping = draw(st.sampled_from(mappings))
    key = draw(st.sampled_from(sorted(mapping, key=str)))
    typo = _typo(draw, key)
    if not typo or typo in KNOWN or typo in mapping:
        typo = f"{key}_x"  # still a typo, of a kind no real key has
    renamed = {typo if k == key else k: v for k, v in mapping.items()}
    if path:
        set_in(data, path, renamed)
    else:
        data = renamed
    return Mutant(kind, "unknown key", dump(data), path, (repr(typo),))


def _section(kind: str, data: dict) -> tuple:
    """A per-dataset settings section that is allowed: the first dataset of the grid or study."""
    datasets = data["grid"]["datasets"] if kind == "sweep" else data["tune"]["datasets"]
    return ("datasets", datasets[0] if isinstance(datasets, list) else datasets)


def _hp_key(kind: str, data: dict) -> str:
    """A hyperparameter a tuning study does not sample (a sampled one would override it)."""
    space = data["tune"]["space"] if kind == "tune" else {}
    return next(k for k in ("lr", "weight_decay", "phase_slow", "trust_min") if k not in space)


def out_of_range(kind: str, data: dict) -> list[tuple[tuple, Any, str]]:
    """(path, bad value, word the message names) for this spec; empty and huge grids included."""
    nan, inf = math.nan, math.inf
    trial = [("epochs", 0), ("epochs", -1), ("max_train", 0), ("batch_size", -4), ("max_length", 0),
             ("target", nan), ("target", inf)]
    hp = _hp_key(kind, data)
    cases = [((*sec, *key), v) for sec in (("defaults",), _section(kind, data))
             for key, v in [*(((k,), v) for k, v in trial), (("hp", hp), -1.0), (("hp", hp), nan),
                            (("hp", hp), -inf)]]
    cases += [(("resources", "cpu"), v) for v in (0, -1, nan, inf)]
    cases += [(("resources", "gpu"), v) for v in (-0.5, nan, inf)]
    cases += [(("resources", "max_concurrent"), 0), (("name",), ""), (("name",), "a b"),
              (("name",), "x" * 101), (("name",), "-lead"), (("mode",), "maximize"), (("metric",), "accuracy")]
    if kind == "sweep":
        cases += [(("grid", "seeds"), v) for v in (0, -3, 10**9, 10**12, [-1], [0, 2**32], [], 10_000,
                                                    list(range(20_001)))]
        cases += [(("grid", "strategies"), []), (("grid", "datasets"), []), (("keep_checkpoints",), 0),
                  (("failure", "max_retries"), -2), (("scheduler", "grace_period"), 0),
                  (("scheduler", "reduction_factor"), 1), (("scheduler", "reduction_factor"), inf)]
    else:
        param = next(iter(data["tune"]["space"]))
        cases += [(("tune", "trials"), v) for v in (0, -1, 10**9)]
        cases += [(("tune", "seeds"), v) for v in (0, 10**6)]
        cases += [(("tune", "concurrency"), 0), (("tune", "sampler", "seed"), -1),
                  (("tune", "sampler", "seed"), 2**40), (("tune", "pruning", "grace_period"), 0),
                  (("tune", "pruning", "reduction_factor"), 0.5), (("tune", "datasets"), []),
                  (("tune", "space"), {})]
        cases += [(("tune", "space", param), p) for p in (
            {"type": "float", "low": 0.5, "high": 0.1},
            {"type": "float", "low": 0.0, "high": 0.1, "log": True},
            {"type": "float", "low": -1.0, "high": 0.1, "log": True},
            {"type": "float", "low": 0.01, "high": 0.1, "step": 0},
            {"type": "float", "low": nan, "high": 0.1},
            {"type": "float", "low": 0.01, "high": inf},
            {"type": "int", "low": 1.5, "high": 4},
            {"type": "categorical", "choices": []},
            {"type": "categorical", "choices": [0.1], "low": 0.0},
        )]
    return [(path, v, [k for k in path if isinstance(k, str)][-1]) for path, v in cases]


@st.composite
def bad_value(draw: st.DrawFn, kind: str, data: dict) -> Mutant:
    path, value, word = draw(st.sampled_from(out_of_range(kind, data)))
    set_in(data, path, value)
    return Mutant(kind, "out of range", dump(data), path, (word,))


NAME = st.from_regex(r"[a-z][a-z0-9-]{0,10}(@[a-z]{1,6})?", fullmatch=True).filter(lambda n: n not in KNOWN)


@st.composite
def unknown_name(draw: st.DrawFn, kind: str, data: dict) -> Mutant:
    name = draw(NAME)
    paths = ([("grid", "strategies"), ("grid", "datasets")] if kind == "sweep"
             else [("tune", "strategy"), ("tune", "datasets")])
    path = draw(st.sampled_from(paths))
    old = get_in(data, path)
    new = name if path == ("tune", "strategy") else [*(old if isinstance(old, list) else [old]), name]
    set_in(data, path, new)
    return Mutant(kind, "unknown name", dump(data), path, (repr(name),))


def _top_key_lines(text: str) -> list[int]:
    return [i for i, line in enumerate(text.splitlines()) if line[:1].isalpha()]


TEXT_DAMAGE = ["yaml syntax", "duplicate key", "not a mapping", "utf-16", "latin-1", "binary", "nul byte",
               "alias bomb", "deep nesting", "oversize"]


@st.composite
def broken_text(draw: st.DrawFn, kind: str, data: dict, how: str) -> Mutant:
    """Text-level damage: bad YAML, a duplicate key, bad bytes, a non-mapping, size bombs."""
    text = dump(data).decode()
    lines = text.splitlines(keepends=True)
    words: tuple[str, ...]
    where: tuple = ()
    if how == "yaml syntax":
        at = draw(st.sampled_from(_top_key_lines(text)))
        bad = draw(st.sampled_from(["'unterminated\n", "{a: 1\n", "[1, 2\n", "key: value: other\n",
                                    "- item\n", "\tname: tab\n", "&\n", "*undefined\n"]))
        content, words = "".join(lines[:at] + [bad] + lines[at:]).encode(), ("not valid YAML",)
    elif how == "duplicate key":
        key = draw(st.sampled_from(list(data)))
        content, words = (text + f"{key}: again\n").encode(), ("duplicate key", repr(key))
    elif how == "not a mapping":
        value = draw(st.one_of(st.lists(st.integers(), max_size=3), st.text(max_size=10), st.integers(),
                               st.none(), st.just("")))
        content, words = ("" if value == "" else yaml.safe_dump(value)).encode(), ("a spec is a mapping",)
    elif how == "utf-16":
        content, words = text.encode("utf-16"), ("not UTF-8",)
    elif how == "latin-1":
        content, words = (text + "# café\n").encode("latin-1", errors="replace"), ("not UTF-8",)
    elif how == "binary":
        content, words = b"\xff" + draw(st.binary(max_size=64)), ("not UTF-8",)
    elif how == "nul byte":
        at = draw(st.integers(0, len(text)))
        content, words = (text[:at] + "\x00" + text[at:]).encode(), ("not valid YAML",)
    elif how == "alias bomb":
        where = draw(st.sampled_from([("description",), ("defaults", "model"), ("resources",)]))
        level: Any = ["lol"] * 10
        for _ in range(draw(st.integers(5, 9))):
            level = [level] * 10  # safe_dump writes each repeat as an alias: a small file
        set_in(data, where, level)
        content, words = dump(data), ("values",)
    elif how == "deep nesting":
        n = draw(st.integers(40, 3000))
        content, words = (text + "deep: " + "[" * n + "]" * n + "\n").encode(), ("nest",)
    else:
        content, words = (text + "#" * (300 * 1024) + "\n").encode(), ("KiB",)
    return Mutant(kind, how, content, where, words)


@st.composite
def mutants(draw: st.DrawFn, mutation: Callable[..., st.SearchStrategy[Mutant]], *args: Any) -> Mutant:
    kind, _, data = draw(st.sampled_from(BASES))
    return draw(mutation(kind, copy.deepcopy(data), *args))


# ----------------------------------------------------------------------------- running it


@pytest.fixture(scope="module", autouse=True)
def nothing_starts() -> Iterator[None]:
    with fenced():
        yield


def check_error(v: Verdict, spec: Path, mutant: Mutant) -> None:
    """One line naming the file, the mutation's words, and starting at the mutated key's path."""
    line = one_line_error(v, str(spec), *mutant.words)
    if mutant.where:
        rest = line.split(str(spec), 1)[1].removeprefix(": ")
        keys = [str(k) for k in mutant.where]
        prefixes = [".".join(keys[:i]) for i in range(1, len(keys) + 1)]
        assert any(rest.startswith(p) and rest[len(p):][:1] in (":", " ", ".") for p in prefixes), \
            (mutant.where, line)


def fuzz(mutations: st.SearchStrategy[Mutant], examples: int) -> Counter[str]:
    """Run each mutant through a command that takes its kind of spec; count kinds and verdicts."""
    seen: Counter[str] = Counter()

    @settings(FUZZ, max_examples=examples)
    @given(mutant=mutations, pick=st.integers(0, 2))
    def check(mutant: Mutant, pick: int) -> None:
        commands = COMMANDS[mutant.kind]
        with tempfile.TemporaryDirectory() as tmp:
            spec = Path(tmp, f"mutant-{mutant.kind}.yaml")
            spec.write_bytes(mutant.content)
            argv = [a.format(spec) for a in commands[pick % len(commands)]]
            v = run_cli(argv, spec.parent)
            assert v.seconds < HANG_S, (argv, v.seconds, v.err)
            assert v.code != 2 or v.configs <= MAX_CONFIGS, (argv, v.configs, v.err)
            if mutant.must_fail or v.code == 2:
                check_error(v, spec, mutant if mutant.must_fail else Mutant(mutant.kind, "maybe", b""))
            else:  # still valid: validated, and stopped where it would have started something
                assert v.code in (0, "started") and v.err == "" and v.left_behind == [], v
        seen[mutant.how] += 1
        seen["error" if v.code == 2 else "valid"] += 1

    check()
    return seen


def test_wrong_types() -> None:
    seen = fuzz(mutants(wrong_type), 120)
    assert seen["wrong type"] >= 0.7 * (seen["error"] + seen["valid"]), seen  # mostly known-invalid


def test_typos_of_keys_at_every_level() -> None:
    seen = fuzz(mutants(typo_key), 80)
    assert seen["error"] == seen["unknown key"] > 0, seen


def test_values_out_of_range_and_empty_or_huge_grids() -> None:
    seen = fuzz(mutants(bad_value), 120)
    assert seen["error"] == seen["out of range"] > 0, seen


def test_unknown_strategies_and_datasets() -> None:
    seen = fuzz(mutants(unknown_name), 30)
    assert seen["error"] == seen["unknown name"] > 0, seen


@pytest.mark.parametrize("how", TEXT_DAMAGE)
def test_damaged_files(how: str) -> None:
    seen = fuzz(mutants(broken_text, how), 8)
    assert seen["error"] == seen[how] > 0, seen


@pytest.mark.parametrize("kind, name", [(k, n) for k, n, _ in BASES])
def test_unmutated_bases_validate(kind: str, name: str, tmp_path: Path) -> None:
    """The mutations start from valid specs, so each failure above is the mutation's doing."""
    data = next(d for k, n, d in BASES if n == name)
    spec = tmp_path / "base.yaml"
    spec.write_bytes(dump(data))
    for argv in COMMANDS[kind]:
        v = run_cli([a.format(spec) for a in argv], tmp_path)
        assert v.code in (0, "started") and v.err == "" and v.left_behind == [], (argv, v)
