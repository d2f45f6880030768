"""`dals tune`: a real small Optuna study on Ray (synthetic subset), resume, MLflow, export; bad spaces."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

import dalsopt
from sweeps.tracking import store as tracking
from sweeps.spec.common import SpecError
from sweeps.spec.tune import load_tune_spec, parse_tune_spec

SPEC = """\
name: tt
metric: eval_accuracy
mode: max
tune:
  strategy: dals
  datasets: [synthetic]
  study_per: regime
  space:
    lr: {type: float, low: 0.003, high: 0.3, log: true}
    warmup_frac: {type: float, low: 0.0, high: 0.2}
  trials: TRIALS
  concurrency: 2
  seeds: 2
  sampler: {type: tpe, seed: 0}
defaults: {epochs: 2, max_train: 500, max_eval: 300}
resources: {cpu: 1}
"""


def base() -> dict:
    import yaml

    return yaml.safe_load(SPEC.replace("TRIALS", "3"))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_tune_study_resume_mlflow_export(tmp_path, monkeypatch):
    import optuna
    import ray
    from optuna.trial import TrialState

    from dalsopt import presets
    from sweeps.runner.optuna import run_tune
    from sweeps.runner.studies import ATTR_SWEEP, export_preset, optuna_storage

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "spec.yaml"
    text = SPEC.replace("metric: eval_accuracy\n", "")  # the default: val_accuracy, validation 0.1
    try:
        path.write_text(text.replace("TRIALS", "3"))
        spec, _ = load_tune_spec(path)
        assert spec.metric == "val_accuracy"
        [out] = run_tune(spec, path, num_cpus=2, say=lambda *a: None)
        assert (out.done_before, out.done, out.ran) == (0, 3, 3)

        url = str(tmp_path / "optuna-journal.log")
        assert spec.optuna_storage_url() == url and Path(url).is_file()
        study = optuna.load_study(study_name="tt-scratch", storage=optuna_storage(url))
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3

        store = tracking.Store(spec.tracking_uri(), "tt")
        parent, children = tracking.sweep_runs(store, study.user_attrs[ATTR_SWEEP])
        assert parent is not None and parent.info.status == "FINISHED" and len(children) == 3
        assert all(c.data.tags[tracking.PARENT] == parent.info.run_id for c in children)
        artifacts = {a.path for a in store.client().list_artifacts(parent.info.run_id, "study")}
        assert {"study/best.json", "study/optimization_history.png"} <= artifacts
        # the objective is the mean over the seeds of the last epoch's validation accuracy
        for c in children:
            m = c.data.metrics
            seeds = [m["val_accuracy/synthetic/seed0"], m["val_accuracy/synthetic/seed1"]]
            assert m["val_accuracy"] == pytest.approx(sum(seeds) / 2)
            assert c.data.tags[tracking.TAG_EPOCH] == "2" and "epoch" not in m  # the step, not a metric
            assert "eval_accuracy" in m  # test accuracy recorded beside it
        assert sorted(t.value for t in study.trials) == pytest.approx(
            sorted(c.data.metrics["val_accuracy"] for c in children))

        # running again adds nothing; raising trials to 4 adds exactly one
        [again] = run_tune(spec, path, num_cpus=2, say=lambda *a: None)
        assert (again.done_before, again.ran) == (3, 0)
        path.write_text(text.replace("TRIALS", "4"))
        spec4, _ = load_tune_spec(path)
        [more] = run_tune(spec4, path, num_cpus=2, say=lambda *a: None)
        assert (more.done_before, more.done, more.ran) == (3, 4, 1)
        study = optuna.load_study(study_name="tt-scratch", storage=optuna_storage(url))
        assert len(study.trials) == 4
        _, children = tracking.sweep_runs(store, study.user_attrs[ATTR_SWEEP])
        assert len(children) == 4
    finally:
        ray.shutdown()

    # export -> a preset dalsopt.make loads
    monkeypatch.setattr(presets, "DIRECTORY", tmp_path / "presets")
    preset = export_preset("tt-scratch", url, "tt")
    assert preset == tmp_path / "presets" / "dals@tt.json"
    data = json.loads(preset.read_text())
    assert data["strategy"] == "dals" and data["preset"] == "tt"
    assert data["hyperparameters"]["lr"] == pytest.approx(study.best_params["lr"])
    assert data["source"]["study"] == "tt-scratch" and data["source"]["trials"] == 4
    s = dalsopt.make("dals@tt", torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)),
                     total_steps=10)
    assert s.meta["hyperparameters"]["warmup_frac"] == pytest.approx(study.best_params["warmup_frac"])
    assert "dals@tt" in dalsopt.names(presets=True)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_asha_stops_poor_trials_and_optuna_records_them_pruned(tmp_path, monkeypatch):
    """A learning-rate range from useless to fine: ASHA (grace 1) stops the poor trials early; Optuna
    must see them PRUNED with their partial curves, and only full-length trials may be best."""
    import optuna
    import ray
    from optuna.trial import TrialState

    from sweeps.runner.optuna import run_tune
    from sweeps.runner.studies import optuna_storage

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "spec.yaml"
    text = (SPEC.replace("TRIALS", "8").replace("seeds: 2", "seeds: 1")
            .replace("low: 0.003, high: 0.3", "low: 0.000001, high: 0.3")
            .replace("sampler: {type: tpe, seed: 0}", "sampler: {type: random, seed: 3}\n  pruning: {type: asha, grace_period: 1}")
            .replace("epochs: 2, max_train: 500", "epochs: 4, max_train: 400"))
    try:
        path.write_text(text)
        spec, _ = load_tune_spec(path)
        [out] = run_tune(spec, path, num_cpus=2, say=lambda *a: None)
    finally:
        ray.shutdown()
    assert out.done == 8
    study = optuna.load_study(study_name="tt-scratch", storage=optuna_storage(spec.optuna_storage_url()))
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert pruned and complete and len(pruned) + len(complete) == 8
    assert all(t.intermediate_values and max(t.intermediate_values) < 4 for t in pruned)
    # Ray hands a finished trial's last epoch to on_trial_complete, not as an intermediate value
    assert all(t.value is not None and max(t.intermediate_values) >= 3 for t in complete)
    assert study.best_trial.state == TrialState.COMPLETE


def test_shipped_tune_specs_load():
    for name in ("tune-dals-cpu", "tune-dals"):
        spec, _ = load_tune_spec(name)
        assert {s.key for s in spec.studies()} == {"scratch", "finetune"}
        assert spec.metric == "val_accuracy"  # the test split stays unseen by the search
        assert all(c.validation for s in spec.studies() for c in s.configs(0, {}))


def test_tuning_holds_out_validation_by_default():
    data = base()
    data.pop("metric")
    spec = parse_tune_spec(data, "x.yaml")
    assert spec.metric == "val_accuracy"
    [study] = spec.studies()
    assert [c.validation for c in study.configs(0, {})] == [0.1]
    data["datasets"] = {"synthetic": {"validation": 0.2}}
    assert parse_tune_spec(data, "x.yaml").studies()[0].configs(0, {})[0].validation == 0.2
    tuned_on_test = parse_tune_spec(base(), "x.yaml")  # metric: eval_accuracy, as the spec says
    assert tuned_on_test.studies()[0].configs(0, {})[0].validation is None
    data["datasets"] = {"synthetic": {"validation": 0}}
    with pytest.raises(SpecError) as e:
        parse_tune_spec(data, "x.yaml")
    assert "metric: val_accuracy needs a validation split" in str(e.value) and "\n" not in str(e.value)
    data["datasets"] = {"synthetic": {"validation": 0.75}}
    with pytest.raises(SpecError) as e:
        parse_tune_spec(data, "x.yaml")
    assert "validation must be a fraction in (0, 0.5]" in str(e.value) and "\n" not in str(e.value)


def test_a_trials_objective_is_the_validation_mean_over_seeds(monkeypatch):
    """What `tune_trial` reports under the study's metric (Optuna's objective) is the mean over seeds
    of each seed's val_accuracy, compared with the same trials run here one by one."""
    from sweeps.runner import optuna as runner
    from sweeps.train.trial import run_trial

    data = base()
    data.pop("metric")
    data["defaults"] = {"epochs": 2, "max_train": 256, "max_eval": 64}
    spec = parse_tune_spec(data, "x.yaml")
    [study] = spec.studies()
    hp = {"lr": 0.05, "warmup_frac": 0.1}
    fn = runner.ConfigsFn(study, (0, 1))
    reports: list[dict] = []
    monkeypatch.setattr(runner.tune, "report", reports.append)  # Ray's session is not what is tested
    runner.tune_trial({"study": {"params": list(hp), "metric": spec.metric, "mode": spec.mode,
                                 "configs_fn": fn}, **hp})
    curves = [list(run_trial(c)) for c in fn(hp)]
    assert [r["epoch"] for r in reports] == [1, 2]
    for epoch, report in enumerate(reports):
        seeds = [c[epoch]["val_accuracy"] for c in curves]
        assert report["val_accuracy"] == pytest.approx(sum(seeds) / 2)
        assert [report["val_accuracy/synthetic/seed0"], report["val_accuracy/synthetic/seed1"]] == seeds
        assert report["eval_accuracy"] == pytest.approx(sum(c[epoch]["eval_accuracy"] for c in curves) / 2)
    assert reports[-1]["status"] == "finished"


@pytest.mark.parametrize("param, message", [
    ({"type": "float", "low": 0.3, "high": 0.01}, "tune.space.lr: low (0.3) > high (0.01)"),
    ({"type": "float", "low": 0.0, "high": 0.1, "log": True}, "tune.space.lr: log scale needs low > 0"),
    ({"type": "int", "low": 1.5, "high": 4}, "tune.space.lr: an int parameter needs a whole `low`"),
    ({"type": "categorical"}, "tune.space.lr: a categorical parameter needs"),
    ({"type": "float", "low": 0, "high": 1, "choice": [1]}, "tune.space.lr: unknown key 'choice'"),
])
def test_bad_space_is_one_line(param, message):
    data = base()
    data["tune"]["space"] = {"lr": param}
    with pytest.raises(SpecError) as e:
        parse_tune_spec(data, "x.yaml")
    assert str(e.value).startswith(f"x.yaml: {message}") and "\n" not in str(e.value)


def test_unknown_parameter_for_strategy():
    data = base()
    data["tune"]["space"]["betas2"] = {"type": "float", "low": 0.9, "high": 0.99}
    with pytest.raises(SpecError) as e:
        parse_tune_spec(data, "x.yaml")
    msg = str(e.value)
    assert msg.startswith("x.yaml: tune: space.betas2: unknown hyperparameter(s) 'betas2' for 'dals'")
    assert "\n" not in msg


@pytest.mark.parametrize("change, message", [
    (lambda d: d["tune"].pop("concurrency"), "tune.concurrency: Field required"),
    (lambda d: d["tune"].update(concurrency=0), "tune.concurrency: Input should be greater than"),
    (lambda d: d["tune"].update(strategy="nope"), "tune.strategy: unknown strategy 'nope'"),
    (lambda d: d["tune"].update(study_per="seed"), "tune.study_per: Input should be"),
    (lambda d: d.update(datasets={"cifar10": {"epochs": 1}}), "datasets: 'cifar10' is not in tune.datasets"),
    (lambda d: d["defaults"].update(epochs=0), "study tt-scratch: epochs must be a positive integer"),
])
def test_bad_spec_is_one_line(change, message):
    data = base()
    change(data)
    with pytest.raises(SpecError) as e:
        parse_tune_spec(data, "x.yaml")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_cli_registers_tune_before_jobs():
    from sweeps.cli.main import build_parser

    parser = build_parser()
    for action in ("run", "export", "submit"):
        assert parser.parse_args(["tune", action, "x"] if action != "run" else ["tune", "run", "x"]).tune_command == action


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_study_per_dataset_fresh_and_export_through_the_cli(tmp_path, monkeypatch, capsys):
    """`study_per: dataset`: one study per dataset, each trial training only its dataset; `dals tune run`
    again adds nothing, `--fresh` deletes the studies and runs them anew; `dals tune export STUDY --spec
    SPEC` writes the study's best params as a preset."""
    import datetime

    import optuna
    import ray
    from optuna.trial import TrialState

    from dalsopt import presets
    from sweeps.cli import main as cli
    from sweeps.runner.studies import ATTR_SWEEP, optuna_storage

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(presets, "DIRECTORY", tmp_path / "presets")
    path = tmp_path / "per-dataset.yaml"
    path.write_text(textwrap.dedent("""\
        name: td
        metric: eval_accuracy
        tune:
          strategy: sgd
          datasets: [synthetic, synthetic-gmm]
          study_per: dataset
          space: {lr: {type: float, low: 0.01, high: 0.3, log: true}}
          trials: 2
          concurrency: 2
          seeds: 1
          sampler: {type: random, seed: 0}
        defaults: {epochs: 1, max_train: 256, max_eval: 128}
        resources: {cpu: 1}
    """))
    spec, _ = load_tune_spec(path)
    assert [(s.name, s.datasets) for s in spec.studies()] == [("td-synthetic", ("synthetic",)),
                                                              ("td-synthetic-gmm", ("synthetic-gmm",))]
    storage = optuna_storage(spec.optuna_storage_url())
    store = tracking.Store(spec.tracking_uri(), "td")

    def studies() -> dict[str, optuna.Study]:
        return {n: optuna.load_study(study_name=n, storage=storage) for n in ("td-synthetic", "td-synthetic-gmm")}

    try:
        assert cli.main(["tune", "run", str(path)]) == 0
        first = {name: study.user_attrs[ATTR_SWEEP] for name, study in studies().items()}
        for name, study in studies().items():
            assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
            _, children = tracking.sweep_runs(store, study.user_attrs[ATTR_SWEEP])
            assert len(children) == 2
            dataset = name.removeprefix("td-")
            for child in children:  # each trial trained its own study's dataset, and only that one
                assert {k.split("/")[1] for k in child.data.metrics if k.count("/") == 2} == {dataset}
        assert cli.main(["tune", "run", str(path)]) == 0  # complete: adds nothing
        assert all(len(s.trials) == 2 for s in studies().values())
        before = datetime.datetime.now()
        assert cli.main(["tune", "run", str(path), "--fresh"]) == 0
        again = studies()
        for name, study in again.items():
            assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
            assert all(t.datetime_start > before for t in study.trials), name  # run anew, not kept
            assert study.user_attrs[ATTR_SWEEP] != first[name]
    finally:
        ray.shutdown()
    capsys.readouterr()
    assert cli.main(["tune", "export", "td-synthetic-gmm", "--spec", str(path)]) == 0
    preset = tmp_path / "presets" / "sgd@synthetic-gmm.json"
    assert capsys.readouterr().out.strip() == f"preset: {preset}"
    data = json.loads(preset.read_text())
    assert data["hyperparameters"]["lr"] == pytest.approx(again["td-synthetic-gmm"].best_params["lr"])
    assert data["source"]["study"] == "td-synthetic-gmm" and data["source"]["trials"] == 2
