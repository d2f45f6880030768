"""`dals search`: the conditional space, a real small search on synthetic and on a TREC-6 subset
(study trials, PRUNED trials, the re-run on fresh seeds, the preset, MLflow, the report), bad spaces."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

import dalsopt
from sweeps.spec.common import SpecError
from sweeps.spec.search import STRATEGY, parse_search_spec, split_params


def spec_data(**tune) -> dict:
    base = {"strategies": ["sgd", "adam", "dals"], "datasets": ["synthetic"], "trials": 6, "seeds": 2,
            "top_k": 2, "rerun_seeds": [100, 101], "concurrency": 2,
            "sampler": {"type": "random", "seed": 3}, "pruning": {"type": "asha", "grace_period": 1, "reduction_factor": 3}}
    return {"name": "st", "tune": {**base, **tune}, "defaults": {"epochs": 3, "max_train": 256, "max_eval": 200}}


# ----------------------------------------------------------------------------- the space, without Ray


def test_conditional_space_draws_each_strategy_its_own_dimensions():
    """Optuna define-by-run through ConditionalSpace: a trial holds `strategy` and exactly its
    strategy's dimensions, with the distributions dalsopt declares for the regime."""
    import optuna

    from sweeps.runner.search import ConditionalSpace

    spec = parse_search_spec(spec_data(strategies=["all"], trials=40))
    space = ConditionalSpace.of(spec)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    study.optimize(lambda t: (space(t), 0.0)[1], n_trials=40)
    seen = set()
    for t in study.trials:
        strategy, hp = split_params(t.params)
        seen.add(strategy)
        dims = dalsopt.search_space(strategy, "scratch")
        assert set(hp) == set(dims) and set(t.params) == {STRATEGY, *(f"{strategy}.{k}" for k in dims)}
        for k, d in dims.items():
            dist = t.distributions[f"{strategy}.{k}"]
            if d.type == "categorical":
                assert list(dist.choices) == list(d.choices)
            else:
                assert (dist.low, dist.high, dist.log) == (d.low, d.high, d.log)
        dalsopt.resolve(strategy, "scratch", **hp)  # every drawn point builds
    assert len(seen) >= 12  # 40 random draws over 18 strategies
    assert space.drawn({STRATEGY: "adam", "adam.lr": 1e-3}) == [STRATEGY, "adam.lr"]


def test_generations_expand_and_finetune_spaces_follow_the_regime():
    spec = parse_search_spec(spec_data(strategies=["gen3", "dals"]))
    assert spec.tune.strategies == ["adam", "adamw", "adabound", "dals"]
    ft = parse_search_spec(spec_data(strategies=["dals"], datasets=["trec6"]))  # fine-tunes MiniLM
    assert ft.search_regime == "finetune" and "dals.decoupled_decay" in ft.space("dals")


def test_the_first_trials_are_every_strategy_at_its_defaults():
    """defaults_first: a new study starts with each strategy at its regime defaults (the grid's
    points), drawn through the same define-by-run space; then the sampler takes over."""
    import optuna

    from sweeps.runner.search import ATTR_DEFAULTS, ConditionalSpace, enqueue_defaults

    spec = parse_search_spec(spec_data(strategies=["gen3", "dals"], trials=6))
    space = ConditionalSpace.of(spec)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    enqueue_defaults(spec, study)
    study.optimize(lambda t: (space(t), 0.0)[1], n_trials=6)
    first = [split_params(t.params) for t in study.trials[:4]]
    assert [s for s, _ in first] == ["adam", "adamw", "adabound", "dals"]
    for s, hp in first:
        defaults = dalsopt.resolve(s, "scratch")
        assert hp == {k: defaults[k] for k in dalsopt.search_space(s, "scratch")}
    assert [bool(t.user_attrs.get(ATTR_DEFAULTS)) for t in study.trials] == [True] * 4 + [False] * 2
    small = parse_search_spec(spec_data(strategies=["all"], trials=5, top_k=2))
    tiny = optuna.create_study()
    enqueue_defaults(small, tiny)  # a budget under 18: a seeded sample of the strategies
    assert len(tiny.trials) == 5 and len({t.system_attrs["fixed_params"][STRATEGY] for t in tiny.trials}) == 5


def test_recover_study_requeues_a_killed_conditional_trial():
    """studies.recover_study with the conditional space's `drawn`: a trial left RUNNING with all its
    strategy's params is marked failed and queued again with them; one killed before them is not."""
    import optuna
    from optuna.trial import TrialState

    from sweeps.runner.search import ConditionalSpace
    from sweeps.runner.studies import recover_study

    space = ConditionalSpace.of(parse_search_spec(spec_data()))
    study = optuna.create_study(direction="maximize")
    whole = study.ask()
    space(whole)
    half = study.ask()
    half.suggest_categorical(STRATEGY, ["sgd", "adam", "dals"])  # killed before its own dimensions
    stale, again = recover_study(study, 5, space.drawn)
    assert stale == [whole.number, half.number] and again == [whole.number]
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].system_attrs["fixed_params"] == whole.params


def best_per_strategy(trials) -> list:
    """The COMPLETE trials, best first, each strategy's best only (ties: the earlier trial)."""
    from optuna.trial import TrialState

    out, seen = [], set()
    for t in sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: (-t.value, t.number)):
        if t.params[STRATEGY] not in seen:
            seen.add(t.params[STRATEGY])
            out.append(t)
    return out


def test_top_k_counts_strategies_or_configurations():
    """`rerun_per: strategy` re-runs each of the k best strategies at its best point; `configuration`
    the k best points, two of one strategy if so they rank; PRUNED trials and repeated points never."""
    import optuna

    from sweeps.runner.rerun import top_k

    study = optuna.create_study(direction="maximize")
    rows = [("adam", 1e-3, 0.90), ("adam", 2e-3, 0.89), ("adam", 1e-3, 0.90), ("sgd", 0.1, 0.85),
            ("dals", 0.1, 0.95), ("sgd", 0.05, 0.80)]
    for strategy, lr, value in rows:
        study.add_trial(optuna.trial.create_trial(
            params={STRATEGY: strategy, f"{strategy}.lr": lr}, value=value, distributions={
                STRATEGY: optuna.distributions.CategoricalDistribution(["adam", "sgd", "dals"]),
                f"{strategy}.lr": optuna.distributions.FloatDistribution(1e-5, 1.0, log=True)}))
    study.add_trial(optuna.trial.create_trial(  # a pruned trial's early value never competes
        params={STRATEGY: "sgd", "sgd.lr": 0.2}, value=None, state=optuna.trial.TrialState.PRUNED,
        intermediate_values={0: 0.99}, distributions={
            STRATEGY: optuna.distributions.CategoricalDistribution(["adam", "sgd", "dals"]),
            "sgd.lr": optuna.distributions.FloatDistribution(1e-5, 1.0, log=True)}))
    per_strategy = top_k(study, 3, "max", "strategy")
    assert [(r.number, r.strategy, r.hp) for r in per_strategy] == [
        (4, "dals", {"lr": 0.1}), (0, "adam", {"lr": 1e-3}), (3, "sgd", {"lr": 0.1})]
    per_point = top_k(study, 3, "max", "configuration")
    assert [(r.number, r.strategy) for r in per_point] == [(4, "dals"), (0, "adam"), (1, "adam")]
    assert top_k(study, 9, "max", "strategy")[-1].strategy == "sgd" and len(top_k(study, 9, "max")) == 3
    single = parse_search_spec(spec_data(strategies=["adam"], trials=4))
    assert single.tune.rerun_unit == "configuration"  # one strategy: nothing to choose between
    assert parse_search_spec(spec_data()).tune.rerun_unit == "strategy"
    assert parse_search_spec(spec_data(rerun_per="configuration")).tune.rerun_unit == "configuration"


def test_verdict_in_closed_form():
    from sweeps.runner.rerun import Rerun, verdict

    w = Rerun(0, "sgd", {}, 0.9, {}, val_mean=0.9, test=[0.90, 0.92])  # 0.91 +- 0.01414
    r = Rerun(1, "adam", {}, 0.8, {}, val_mean=0.8, test=[0.80, 0.82])  # 0.81 +- 0.01414
    assert w.test_std == pytest.approx(math.sqrt(2e-4))
    assert verdict([w, r]).startswith("the winner's test lead over the runner-up (+0.1000) clears")
    close = Rerun(1, "adam", {}, 0.8, {}, val_mean=0.8, test=[0.89, 0.91])
    assert verdict([w, close]).startswith("not separated")


def test_rerun_band_in_closed_form():
    """A runner-up is re-run when its search value is within 2 standard errors of the best's, the
    standard error from the best's validation spread on the fresh seeds over sqrt(search seeds)."""
    from sweeps.runner.rerun import SKIPPED, Rerun, overlapping, search_band, verdict

    best = Rerun(0, "sgd", {}, 0.90, {}, val=[0.88, 0.90, 0.92], test=[0.9, 0.9, 0.9])  # std 0.02
    assert search_band(best, 1) == pytest.approx(0.02) and search_band(best, 4) == pytest.approx(0.01)
    near, edge, far = (Rerun(n, "adam", {}, v, {}) for n, v in ((1, 0.87), (2, 0.865), (3, 0.855)))
    assert overlapping(best, [near, edge, far], 0.02) == ([near, edge], [far])  # 2 x 0.02 = 0.04 apart at most
    assert overlapping(best, [near, far], 0.01) == ([], [near, far])
    assert search_band(Rerun(0, "sgd", {}, 0.9, {}, val=[0.9]), 1) == math.inf  # one seed: re-run them all
    far.status = SKIPPED
    assert verdict([best, far]).startswith("the search already sets the winner apart: the runners-up (adam)")


def test_report_regime_and_leaderboard(tmp_path):
    """The paper's own synthetic column, given as the search's values, is the synthetic regime
    (Spearman 1); the leaderboard sums the budget per strategy."""
    from sweeps.report.paper import PAPER_TABLE1
    from sweeps.report.search import leaderboard, regime_like, regime_line, write_search_report

    trials = [{"number": i, "strategy": s.split("@")[0], "generation": dalsopt.GENERATIONS[s.split("@")[0]],
               "state": "COMPLETE", "value": v[0] / 100, "hp": {"lr": 0.01}, "curve": [0.5, v[0] / 100],
               "trial_epochs": 4} for i, (s, v) in enumerate(PAPER_TABLE1.items())]
    trials.append({**trials[0], "number": 99, "state": "PRUNED", "value": None, "trial_epochs": 2})
    board = leaderboard(trials)
    assert regime_like(board)[:3] == ("scratch", "synthetic", pytest.approx(1.0))
    sgd = board.set_index("strategy").loc["sgd"]
    assert (sgd.trials, sgd.complete, sgd.pruned, sgd.trial_epochs) == (2, 1, 1, 6)
    assert board.iloc[0].strategy == "dals"  # 98.0, the column's best
    ran = {"number": 0, "strategy": "sgd", "hp": {"lr": 0.01}, "objective": 0.9, "val_mean": 0.91, "test": [0.9, 0.92],
           "test_mean": 0.91, "test_std": 0.014, "status": "finished"}
    skipped = {**ran, "number": 1, "val_mean": math.nan, "test": [], "test_mean": math.nan, "status": "skipped"}
    md = write_search_report(tmp_path, title="t", trials=trials, reruns=[ran, skipped], verdict="-", preset="sgd@x",
                             trial_epochs={"search": 74, "rerun": 0},
                             budget={"trials": 19, "minutes": None, "seeds": 2, "rerun_seeds": [100, 101], "wall_s": 1})
    text = md.read_text()
    assert "behaves like **scratch**" in text and "## By family" in text and "## By generation" in text
    assert "| 1 | sgd | 0 | 0.9000 | 0.9100 | 0.9100 ± 0.0140 |" in text and "**Winner: `sgd`**" in text
    assert "| 2 | sgd | 1 | 0.9000 | not re-run | not re-run (search value > 2 standard errors below" in text
    assert (tmp_path / "winner.png").is_file() and (tmp_path / "leaderboard.csv").is_file()
    assert regime_line(("finetune", "rte", 0.1, 18)).startswith("Regime: no clear match")
    assert regime_line(None).startswith("Regime: too few strategies")


# ----------------------------------------------------------------------------- bad spaces


@pytest.mark.parametrize("tune, message", [
    ({"strategies": ["sgd", "nosuch"]}, "tune.strategies: unknown strategy 'nosuch'"),
    ({"strategies": ["gen9"]}, "tune.strategies: unknown strategy 'gen9' (did you mean 'gen6'?)"),
    ({"strategies": []}, "tune.strategies: List should have at least 1 item"),
    ({"strategies": ["dals@finetune"]}, "tune.strategies: 'dals@finetune' is a preset"),
    ({"trials": 0}, "tune.trials: Input should be greater than or equal to 1"),
    ({"minutes": -1}, "tune.minutes: Input should be greater than 0"),
    ({"top_k": 9}, "top_k: 9 is more than the 6 trials"),
    ({"rerun_seeds": [1, 100]}, "rerun_seeds: [1] are seeds the search trains on"),
    ({"datasets": ["nosuch"]}, "tune.datasets: unknown dataset 'nosuch'"),
])
def test_bad_space_is_one_line(tune, message):
    with pytest.raises(SpecError) as e:
        parse_search_spec(spec_data(**tune), "s.yaml")
    assert str(e.value).startswith("s.yaml: ") and message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("argv, message", [
    (["--strategies", "gen0"], "--strategies (tune.strategies): unknown strategy 'gen0'"),
    (["--budget-trials", "0"], "--budget-trials (tune.trials): Input should be greater than or equal to 1"),
    (["--budget-minutes", "0"], "--budget-minutes (tune.minutes): Input should be greater than 0"),
    (["--rerun-seeds", "0,5"], "--rerun-seeds (tune.rerun_seeds): [0] are seeds the search trains on"),
])
def test_cli_bad_input_is_one_line_before_anything_starts(tmp_path, monkeypatch, capsys, argv, message):
    from sweeps.cli.main import main

    monkeypatch.chdir(tmp_path)
    assert main(["search", "synthetic", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # no storage, journal, MLflow db or report


# ----------------------------------------------------------------------------- real searches


def _trains(preset: str, regime: str) -> None:
    """The preset builds with dalsopt.make and lowers the loss of a small model on a fixed batch."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    x, y = torch.randn(64, 8), (torch.randn(64) > 0).long()
    s = dalsopt.make(preset, model, total_steps=60, regime=regime)
    losses = []
    for _ in range(60):
        s.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        s.step(loss=loss.detach(), closure=lambda: torch.nn.functional.cross_entropy(model(x), y))
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def _search(tmp_path, monkeypatch, data: dict):
    import ray

    from dalsopt import presets
    from sweeps.runner.rerun import run_search

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(presets, "DIRECTORY", tmp_path / "presets")
    spec = parse_search_spec(data)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(data))
    try:
        out = run_search(spec, path, num_cpus=2, out_dir=tmp_path / "report", say=lambda *a: None)
    finally:
        ray.shutdown()
    return spec, out


def _check(spec, out, tmp_path) -> None:
    import optuna
    from optuna.trial import TrialState

    from sweeps.runner.studies import ATTR_SWEEP, optuna_storage
    from sweeps.tracking import store as tracking

    t = spec.tune
    study = optuna.load_study(study_name=out.study, storage=optuna_storage(spec.optuna_storage_url()))
    states = [tr.state for tr in study.trials]
    assert len(study.trials) == t.trials and out.done == t.trials
    assert set(states) <= {TrialState.COMPLETE, TrialState.PRUNED} and TrialState.COMPLETE in states
    epochs = spec.settings(spec.dataset).model_dump()["epochs"]
    for tr in study.trials:
        strategy, hp = split_params(tr.params)
        assert strategy in t.strategies and set(hp) == set(dalsopt.search_space(strategy, spec.search_regime))
        if tr.state == TrialState.PRUNED:  # stopped by ASHA before the last epoch, its curve kept
            assert tr.intermediate_values and max(tr.intermediate_values) < epochs
    assert study.best_trial.state == TrialState.COMPLETE  # a pruned trial's early value never wins
    # the re-run: the top-k complete trials, each on the fresh seeds (disjoint from the search's)
    complete = best_per_strategy(study.trials)  # the top-k are strategies, each at its best point
    assert {r.number for r in out.reruns} == {tr.number for tr in complete[:t.top_k]}
    assert not set(t.rerun_seeds) & set(range(t.seeds))
    ran = [r for r in out.reruns if r.status != "skipped"]  # the best, and runners-up within its bands
    assert complete[0].number in {r.number for r in ran}
    assert all(len(r.test) == len(r.val) == len(t.rerun_seeds) and r.status == "finished" for r in ran)
    best = next(r for r in ran if r.number == complete[0].number)
    band = statistics.stdev(best.val) / math.sqrt(t.seeds)
    assert {r.number for r in ran} == {tr.number for tr in complete[:t.top_k] if best.objective - tr.value <= 2 * band}
    assert out.trial_epochs["rerun"] == len(ran) * len(t.rerun_seeds) * epochs
    # MLflow: one parent, a child per search trial and per re-run trial; seeds per phase
    store = tracking.Store(spec.tracking_uri(), spec.experiment())
    parent, children = tracking.sweep_runs(store, study.user_attrs[ATTR_SWEEP])
    assert parent.info.status == "FINISHED" and len(children) == t.trials + len(ran)
    reruns = [c for c in children if c.data.params.get("phase") == "rerun"]
    assert sorted(int(c.data.params["rerun_of"]) for c in reruns) == sorted(r.number for r in ran)
    for c in children:
        seeds = {k.rsplit("seed", 1)[1] for k in c.data.metrics if "/seed" in k}
        want = t.rerun_seeds if c in reruns else range(t.seeds)
        assert seeds == {str(s) for s in want}, c.data.metrics
    artifacts = {a.path for a in store.client().list_artifacts(parent.info.run_id, "search")}
    assert {"search/search.md", "search/leaderboard.csv"} <= artifacts
    # the winner: the re-run's best by validation, exported as <strategy>@<dataset>
    w = out.winner
    assert w is out.reruns[0] and out.preset.name == f"{w.strategy}@{spec.dataset}.json"
    data = json.loads(out.preset.read_text())
    assert data["source"]["rerun_seeds"] == t.rerun_seeds and data["source"]["rerun_test_mean"] == pytest.approx(w.test_mean)
    assert all(data["hyperparameters"][k] == pytest.approx(v) for k, v in w.hp.items())
    assert out.preset.stem in dalsopt.names(presets=True)
    _trains(out.preset.stem, spec.search_regime)
    assert "Leaderboard" in out.report.read_text() and (out.report.parent / "winner.png").is_file()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_search_on_synthetic(tmp_path, monkeypatch):
    # lr from useless to fine through sgd's and adam's ranges: ASHA has poor trials to stop
    spec, out = _search(tmp_path, monkeypatch, spec_data(trials=8))
    _check(spec, out, tmp_path)
    import optuna

    from sweeps.runner.studies import optuna_storage

    study = optuna.load_study(study_name=out.study, storage=optuna_storage(spec.optuna_storage_url()))
    assert any(tr.state.name == "PRUNED" for tr in study.trials)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_search_on_a_trec6_subset(tmp_path, monkeypatch):
    data = spec_data(strategies=["sgd", "adamw"], datasets=["trec6-scratch"], trials=4, seeds=1, top_k=2,
                     rerun_seeds=[100, 101])
    data["defaults"] = {"epochs": 2, "max_train": 64, "max_eval": 64, "max_length": 16}
    spec, out = _search(tmp_path, monkeypatch, data)
    _check(spec, out, tmp_path)


def test_tune_run_and_search_take_a_search_spec(tmp_path, monkeypatch, capsys):
    """`dals tune run SPEC` hands a spec with `tune.strategies` to the search; --dry-run starts nothing."""
    import yaml

    from sweeps.cli.main import main

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec_data()))
    for argv in (["tune", "run", str(path), "--dry-run"], ["search", str(path), "--dry-run"]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "st: search 3 strategies on synthetic (regime scratch); 6 trials" in out
        assert "    adam: lr float [3e-05, 0.003] log" in out and "top 2 strategies (each at its best settings) on fresh seeds [100, 101]" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_the_shipped_search_spec_loads_and_dry_runs(tmp_path, monkeypatch, capsys):
    """sweeps/specs/search-trec6.yaml, the spec users copy: every strategy on trec6-scratch, fresh
    re-run seeds; `dals search search-trec6` and `dals tune run search-trec6` take its bare name and
    a dry run creates nothing."""
    from sweeps.cli.main import main
    from sweeps.spec.loader import SPECS_DIR
    from sweeps.spec.search import load_search_spec

    spec, path = load_search_spec("search-trec6")
    assert path == SPECS_DIR / "search-trec6.yaml"
    assert spec.tune.strategies == dalsopt.names() and spec.dataset == "trec6-scratch"
    assert spec.search_regime == "scratch" and spec.metric == "val_accuracy"
    monkeypatch.chdir(tmp_path)
    for argv in (["search", "search-trec6", "--dry-run"], ["tune", "run", "search-trec6", "--dry-run"]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "search-trec6: search 18 strategies on trec6-scratch (regime scratch); 22 trials" in out
        assert "each trial: epochs 6, max_train 2000" in out and "winner preset <strategy>@trec6-scratch" in out
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- the driver killed


KILLED_SPEC = """\
name: sk
metric: val_accuracy
tune:
  strategies: [sgd, adam, dals]
  datasets: [synthetic]
  trials: 5
  seeds: 1
  top_k: 2
  rerun_seeds: [100, 101]
  concurrency: 2
  sampler: {type: random, seed: 3}
  pruning: {type: asha, grace_period: 1, reduction_factor: 3}
defaults: {epochs: 3, max_train: 3000, max_eval: 300, model: "mlp:1024,1024,1024"}
resources: {cpu: 1}
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_search_killed_mid_study_continues_it_and_reruns_once(tmp_path):
    """SIGKILL of the `dals search` driver's process group with a trial finished and another
    running; the same command again continues the same study to its budget, then re-runs the
    top-k on the fresh seeds once and exports the winner (wide MLPs: trials last seconds)."""
    import optuna
    import yaml
    from optuna.trial import TrialState

    from sweeps.runner.studies import ATTR_SWEEP, optuna_storage
    from sweeps.tracking import store as tracking
    from test_crash_resume import Driver

    spec_file = tmp_path / "search.yaml"
    spec_file.write_text(KILLED_SPEC)
    spec = parse_search_spec(yaml.safe_load(KILLED_SPEC))
    storage = optuna_storage(str(tmp_path / "optuna-journal.log"))
    env = {"DALSOPT_PRESETS": str(tmp_path / "presets")}  # the export stays out of the package

    def trials() -> list:
        try:
            return optuna.load_study(study_name="sk-synthetic", storage=storage).get_trials(deepcopy=False)
        except (KeyError, OSError, ValueError):  # not created yet
            return []

    def mid_study() -> bool:
        states = [t.state for t in trials()]
        return bool({TrialState.COMPLETE, TrialState.PRUNED} & set(states)) and TrialState.RUNNING in states

    Driver(tmp_path, ["search", str(spec_file)], tmp_path / "killed.log", env=env).kill_when(mid_study)
    killed = trials()
    stale = [t.number for t in killed if t.state == TrialState.RUNNING]
    before = [t.number for t in killed if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert stale and 1 <= len(before) < spec.tune.trials
    assert not (tmp_path / "dals-runs" / "sk-synthetic-rerun").exists()  # killed before the re-run

    again = Driver(tmp_path, ["search", str(spec_file)], tmp_path / "again.log", env=env)
    assert again.wait(timeout=600) == 0, again.output()[-3000:]
    out = again.output()
    assert f"{len(before)}/5 trials done, running {5 - len(before)}" in out
    [line] = [ln for ln in out.splitlines() if "left running by a run that did not end: marked failed" in ln]
    assert f" {', '.join(map(str, stale))} w" in line  # `trial 1 was` / `trials 1, 2 were`
    study = optuna.load_study(study_name="sk-synthetic", storage=storage)
    every = study.get_trials(deepcopy=False)
    done = [t for t in every if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == spec.tune.trials and set(before) <= {t.number for t in done}
    assert {t.number for t in every if t.state == TrialState.FAIL} == set(stale)
    assert not [t for t in every if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert {split_params(t.params)[0] for t in every if t.number < 3} == {"sgd", "adam", "dals"}  # defaults first
    # the re-run, once: the top-k complete trials, each a finished MLflow child on the fresh seeds
    complete = best_per_strategy(done)
    top = {t.number for t in complete[:spec.tune.top_k]}  # the best re-run, the runner-up if within its bands
    store = tracking.Store(f"sqlite:///{tmp_path / 'mlflow.db'}", "sk")
    parent, children = tracking.sweep_runs(store, study.user_attrs[ATTR_SWEEP])
    assert parent.info.status == "FINISHED"
    reruns = [c for c in children if c.data.params.get("phase") == "rerun"]
    ran = sorted(int(c.data.params["rerun_of"]) for c in reruns)
    assert complete[0].number in ran and set(ran) <= top and len(set(ran)) == len(ran)
    assert all(c.info.status == "FINISHED" for c in reruns)
    for c in reruns:
        assert {k.rsplit("seed", 1)[1] for k in c.data.metrics if "/seed" in k} == {"100", "101"}
    search_runs = [c for c in children if c not in reruns]
    assert len([c for c in search_runs if c.info.status == "FINISHED"]) == spec.tune.trials
    assert all(c.data.tags[tracking.TAG_STATUS] == "interrupted" for c in search_runs if c.info.status != "FINISHED")
    assert len(list((tmp_path / "dals-runs").glob("sk-synthetic-rerun*/rerun-*/result.json"))) == len(ran)
    # the winner: a preset in DALSOPT_PRESETS, from one of the re-run trials
    [preset] = (tmp_path / "presets").glob("*@synthetic.json")
    data = json.loads(preset.read_text())
    assert data["source"]["search_trial"] in ran and data["source"]["rerun_seeds"] == [100, 101]
    assert f"preset: {preset}" in out
