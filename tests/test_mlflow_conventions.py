"""What MLflow 3.17 users expect of a run, on a real SQLite store with the real tracking code (no
Ray: stand-in Tune trials drive the callback): the experiment's kind, source and git tags (and none
outside a git checkout), dataset inputs whose split sizes match what a trial really loads, no
`None` params, the epoch as step (never a metric), the trial worker's system metrics, and the
parent run's summary. (`tests/test_sweep.py` checks the same on a real Ray sweep.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sweeps.tracking import conventions, store as tracking
from sweeps.tracking.summary import sweep_summary
from sweeps.tracking.system import SystemSampler, gpu_metrics
from sweeps.train.config import TrialConfig
from sweeps.train.data import registry
from sweeps.train.trial import Trial
from tracked_runs import git, git_checkout, tracked


def runs(store: tracking.Store):
    client = store.client()
    exp = client.get_experiment_by_name(store.experiment)
    found = client.search_runs([exp.experiment_id])
    return client, exp, [r for r in found if r.data.tags[tracking.TAG_ROLE] == "sweep"][0], \
        [r for r in found if r.data.tags[tracking.TAG_ROLE] == "trial"]


def test_runs_follow_mlflows_conventions_in_a_git_checkout(tmp_path, monkeypatch):
    commit = git_checkout(tmp_path)
    git(tmp_path, "remote", "add", "origin", "https://user:s3cret@git.example.org/team/repo.git")
    monkeypatch.chdir(tmp_path)
    store, trials = tracked(tmp_path)
    client, exp, parent, children = runs(store)
    # the model-training view, not GenAI's (the value MLflow's UI writes for "Machine learning")
    assert exp.tags[conventions.EXPERIMENT_KIND_TAG] == "custom_model_development"
    for run in [parent, *children]:
        tags = run.data.tags
        assert tags["mlflow.source.git.commit"] == commit and tags["mlflow.source.git.branch"] == "main"
        assert tags["mlflow.source.git.repoURL"] == "https://git.example.org/team/repo.git"  # no password
        assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
        assert "None" not in run.data.params.values()
    assert "unset" not in parent.data.params and parent.data.params["trials"] == "4"
    assert len(children) == 4
    for child in children:
        # the epoch is each metric's step and the run's tag, never a metric MLflow would chart
        assert "epoch" not in child.data.metrics and child.data.tags[tracking.TAG_EPOCH] == "2"
        assert [m.step for m in client.get_metric_history(child.info.run_id, "eval_accuracy")] == [1, 2]
        cpu = client.get_metric_history(child.info.run_id, "system/cpu_utilization_percentage")
        assert [m.step for m in cpu] == [1, 2] and all(0 <= m.value <= 100 for m in cpu)
        memory = child.data.metrics["system/system_memory_usage_percentage"]
        assert 0 < memory <= 100


def test_dataset_inputs_give_the_rows_a_trial_trains_and_is_tested_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store, trials = tracked(tmp_path)
    client, _, _, children = runs(store)
    inputs = {}
    for child in children:
        seed = child.data.params["seed"]
        for d in client.get_run(child.info.run_id).inputs.dataset_inputs:
            context = {t.key: t.value for t in d.tags}[conventions.DATA_CONTEXT]
            inputs[(child.data.params["strategy"], seed, context)] = d.dataset
    trial = Trial(trials[0].config())  # what a trial really loads
    assert {k[2]: json.loads(d.profile) for k, d in inputs.items()} == {
        "train": {"num_rows": len(trial.train_y)}, "eval": {"num_rows": len(trial.eval_y)}}
    assert {d.name for d in inputs.values()} == {"synthetic"}
    assert {d.source_type for d in inputs.values()} == {"code"}
    # a train subset is drawn per seed: its own digest; the eval rows are the same for every trial
    assert inputs[("sgd", "0", "train")].digest == inputs[("dals", "0", "train")].digest
    assert inputs[("sgd", "0", "train")].digest != inputs[("sgd", "1", "train")].digest
    assert len({d.digest for k, d in inputs.items() if k[2] == "eval"}) == 1


@pytest.mark.parametrize("settings", [
    {"dataset": "synthetic", "validation": 0.1, "max_train": 100, "max_eval": 50},
    {"dataset": "synthetic-gmm", "validation": 0.2},
    {"dataset": "trec6", "model": "textcnn", "max_eval": 40, "max_length": 16},
    {"dataset": "rte", "model": "textcnn", "max_train": 64, "max_length": 16},
])
def test_split_rows_from_the_config_match_what_the_trial_loads(settings, monkeypatch):
    monkeypatch.setenv("DALS_OFFLINE", "1")
    config = TrialConfig.create(strategy="sgd", epochs=1, **settings)
    trial = Trial(config)
    loaded = {"train": len(trial.train_y), "eval": len(trial.eval_y)}
    if trial.val is not None:
        loaded["validation"] = len(trial.val[1])
    assert conventions.split_rows(config.to_dict()) == loaded


def test_shipped_row_counts_are_the_loaders(monkeypatch):
    monkeypatch.setenv("DALS_OFFLINE", "1")
    for name, (train, test) in conventions.SHIPPED_ROWS.items():
        if name == "cifar10":  # not shipped (170 MB); its sizes are the published ones
            continue
        root = registry.data_root(None)
        split = registry.DATASETS[name].loader
        assert (len(split("train", root)), len(split("eval", root))) == (train, test), name


def test_user_data_inputs_name_their_source_and_leave_unknown_sizes_out(tmp_path):
    table = tmp_path / "rows.csv"
    table.write_text("text,label\na,0\nb,1\n")
    [train, test] = conventions.dataset_inputs({"dataset": f"file:{table}", "max_train": 10, "seed": 0})
    assert train.dataset.source_type == "local" and json.loads(train.dataset.source) == {"uri": str(table)}
    assert json.loads(train.dataset.profile) == {"max_rows": 10} and json.loads(test.dataset.profile) == {}
    [hf, _] = conventions.dataset_inputs({"dataset": "hf:org/name:sub", "seed": 0})
    assert json.loads(hf.dataset.source) == {"path": "org/name", "config_name": "sub"}
    assert conventions.dataset_inputs({"hp": {"lr": 0.1}}) == []  # a tuning trial: no single dataset


def test_outside_a_git_checkout_runs_carry_no_git_tags(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store, _ = tracked(tmp_path)
    _, _, parent, children = runs(store)
    for run in [parent, *children]:
        assert run.data.tags["mlflow.source.type"] == "LOCAL"
        assert not [k for k in run.data.tags if k.startswith("mlflow.source.git")]


def test_a_reopened_run_continues_after_its_last_epoch(tmp_path, monkeypatch):
    """A resumed trial's run goes on after the epoch its tag holds; a run logged before the tag
    existed (the epoch as a metric) is read the old way; a tag one epoch behind its metrics (the
    driver was killed between the two commits of one log_batch) logs no epoch twice."""
    monkeypatch.chdir(tmp_path)
    store, _ = tracked(tmp_path, epochs=(1, 2))
    client, _, _, children = runs(store)
    assert all(tracking.logged_epoch(client, c) == 2 for c in children)
    old = children[0]
    client.delete_tag(old.info.run_id, tracking.TAG_EPOCH)
    for step in (1, 2, 3):
        client.log_metric(old.info.run_id, "epoch", float(step), step=step)
    assert tracking.logged_epoch(client, client.get_run(old.info.run_id)) == 3
    behind = children[1]
    client.set_tag(behind.info.run_id, tracking.TAG_EPOCH, "1")
    assert tracking.logged_epoch(client, client.get_run(behind.info.run_id), "eval_accuracy") == 2
    tracked(tmp_path, epochs=(1, 2, 3, 4))  # the same trials again, now 4 epochs
    for child in runs(store)[3]:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "eval_accuracy")]
        assert steps == ([1, 2, 4] if child.info.run_id == old.info.run_id else [1, 2, 3, 4])


def test_an_experiment_keeps_a_kind_someone_chose(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store, _ = tracked(tmp_path)
    client, exp, _, _ = runs(store)
    client.set_experiment_tag(exp.experiment_id, conventions.EXPERIMENT_KIND_TAG, "finetuning")
    store.experiment_id()
    assert client.get_experiment(exp.experiment_id).tags[conventions.EXPERIMENT_KIND_TAG] == "finetuning"


def write_trial(folder: Path, key: str, strategy: str, dataset: str, seed: int, curve: list[float],
                status: str = "finished", error: bool = False) -> None:
    """A trial folder as Ray leaves it (params.json, result.json, error.txt when it failed)."""
    trial_dir = folder / key.replace("/", "-")
    trial_dir.mkdir(parents=True)
    labels = {"strategy": strategy, "generation": 1, "dataset": dataset, "regime": "scratch", "seed": seed}
    (trial_dir / "params.json").write_text(json.dumps({"trial": {"key": key, "labels": labels}}))
    rows = [{"epoch": e, "training_iteration": e, "eval_accuracy": a,
             "status": status if e == len(curve) else "running"} for e, a in enumerate(curve, 1)]
    (trial_dir / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if error:
        (trial_dir / "error.txt").write_text("Traceback: boom\n")


def test_parent_summary_counts_trials_and_names_each_datasets_best(tmp_path):
    folder = tmp_path / "sweep"
    write_trial(folder, "sgd/a/0", "sgd", "a", 0, [0.5, 0.7])
    write_trial(folder, "sgd/a/1", "sgd", "a", 1, [0.5, 0.9])
    write_trial(folder, "adam/a/0", "adam", "a", 0, [0.6, 0.75])
    write_trial(folder, "adam/a/1", "adam", "a", 1, [0.6, float("nan")], status="diverged")
    write_trial(folder, "sgd/b/0", "sgd", "b", 0, [0.2, 0.3])
    write_trial(folder, "adam/b/0", "adam", "b", 0, [0.1], error=True)
    metrics, tags = sweep_summary(str(folder), "eval_accuracy", "max")
    assert metrics == {"trials_finished": 4.0, "trials_diverged": 1.0, "trials_failed": 1.0,
                       "best_final_eval_accuracy/a": pytest.approx(0.8),  # sgd: (0.7 + 0.9) / 2
                       "best_final_eval_accuracy/b": pytest.approx(0.3)}
    assert tags == {"dals.best.a": "sgd", "dals.best.b": "sgd"}
    assert sweep_summary(str(folder), "eval_accuracy", "min")[1]["dals.best.a"] == "adam"  # 0.75


def test_system_sample_is_named_as_mlflows_system_metrics():
    sample = SystemSampler().sample()
    assert set(sample) >= {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
                           "system/system_memory_usage_percentage"}
    assert all(k.startswith("system/") for k in sample)
    import psutil

    used = psutil.virtual_memory().used / 1e6
    assert sample["system/system_memory_usage_megabytes"] == pytest.approx(used, rel=0.2)
    if not torch.cuda.is_initialized():
        assert gpu_metrics() == {}  # a CPU trial never starts CUDA to measure it


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_system_sample_reports_the_gpu_a_trial_used():
    block = torch.empty(256, 1024, 1024, dtype=torch.uint8, device="cuda")  # 256 MiB
    sample = SystemSampler().sample()
    index = torch.cuda.current_device()
    used = sample[f"system/gpu_{index}_memory_usage_megabytes"]
    free, total = torch.cuda.mem_get_info(index)
    assert used == pytest.approx((total - free) / 1e6, rel=0.05) and used >= 256 * 1.048
    assert 0 < sample[f"system/gpu_{index}_memory_usage_percentage"] <= 100
    del block
