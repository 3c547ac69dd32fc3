"""A sweep trial is a first-class run: the training core fits it as it fits `harness train`'s run.

One small sweep and one `harness train` of its best configuration, in a temporary SQLite store: the
trial's run carries every tag and artifact the train run carries (the logged model aside, which only
a trial that leads the sweep logs), and the sweep ends with its best configuration's test figures
on the parent run and a model that `mlflow.pyfunc.load_model` loads and reads numbers with.
"""

import textwrap

import numpy as np
import pandas as pd
import pytest
from PIL import Image

NAME = "parity_sweep"
MODEL_ONLY_TAGS = {"mlflow.log-model.history", "harness.model"}


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        monkeypatch.delenv(name, raising=False)
    yield uri
    import mlflow

    while mlflow.active_run():
        mlflow.end_run("FAILED")
    mlflow.set_tracking_uri(None)


def _artifacts(client, run_id: str, folder: str | None = None) -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, folder):
        out |= _artifacts(client, run_id, item.path) if item.is_dir and item.path != "model" else {item.path}
    return out


def test_a_trial_carries_what_a_train_run_carries_and_the_best_is_servable(tmp_path, store, shared_data, capsys):
    import mlflow

    from harness.cli import experiments_dir, main
    from harness.spec import load_spec
    from harness.sweeps.search import run_sweep
    from harness.sweeps.spec import load_sweep
    from harness.training.core import train

    path = tmp_path / f"{NAME}.yaml"
    path.write_text(textwrap.dedent(f"""\
        base: {experiments_dir() / 'smoke.yaml'}
        name: {NAME}
        data:
          options: {{train: 160, test: 40}}
        train:
          epochs: 2
          batch_size: 32
        tracking: {{register: parity-reader, alias: champion}}
        sweep:
          tuner: random
          seed: 5
          max_trials: 2
          space:
            train.learning_rate: {{min: 1.0e-3, max: 1.0e-2, log: true}}
        """))
    rows = run_sweep(load_sweep(path))
    client = mlflow.tracking.MlflowClient(store)
    best_row = rows[0]
    trial = client.get_run(best_row["run_id"])
    parent = client.get_run(trial.data.tags["mlflow.parentRunId"])

    # the sweep's best configuration: test figures on its run and on the parent, a servable model
    assert 0.0 <= trial.data.metrics["test/sequence_accuracy"] <= 1.0
    assert parent.data.metrics["test/sequence_accuracy"] == trial.data.metrics["test/sequence_accuracy"]
    assert parent.data.tags["harness.best_model"] == f"runs:/{trial.info.run_id}/model"
    # ... registered as the sweep's tracking.register says, and read a genuine street number by alias
    champion = client.get_model_version_by_alias("parity-reader", "champion")
    assert str(champion.version) == "1" and champion.run_id == trial.info.run_id
    served = mlflow.pyfunc.load_model("models:/parity-reader@champion")
    image = np.asarray(Image.open(shared_data / "svhn-sample" / "train" / "1.png").convert("RGB"))
    read = served.predict(pd.DataFrame({"image": [image]}))
    assert list(read.columns) == ["number", "confidence"] and len(read) == 1
    assert 0.0 <= float(read["confidence"][0]) <= 1.0
    assert best_row["seconds"] == pytest.approx(trial.data.metrics["run/wall_seconds"])

    # `harness train` of the best trial's spec, on the same data
    result = train(load_spec(tmp_path / "runs" / "sweeps" / NAME / "best.yaml"), verbose=0)
    run = client.get_run(result.run_id)
    assert client.get_model_version_by_alias("parity-reader", "champion").run_id == run.info.run_id  # version 2
    # and `harness register` registers any run's logged model by hand
    capsys.readouterr()  # (what the sweep printed)
    assert main(["register", run.info.run_id, "--name", "by-hand", "--alias", "best"]) == 0
    assert capsys.readouterr().out.strip() == "models:/by-hand/1"
    assert client.get_model_version_by_alias("by-hand", "best").run_id == run.info.run_id
    missing_tags = set(run.data.tags) - set(trial.data.tags) - MODEL_ONLY_TAGS
    assert not missing_tags, f"the train run has tags the trial lacks: {sorted(missing_tags)}"
    assert trial.data.tags["harness.dataset_fingerprint"] == run.data.tags["harness.dataset_fingerprint"]
    missing_params = set(run.data.params) - set(trial.data.params)
    assert not missing_params, sorted(missing_params)
    # MLflow samples system/ metrics every few seconds, so a short run may have none: not the harness's
    missing_metrics = {m for m in set(run.data.metrics) - set(trial.data.metrics) if not m.startswith("system/")}
    assert not missing_metrics, sorted(missing_metrics)
    # its data as MLflow dataset inputs: one per split, the split file's fingerprint as digest
    import json

    inputs = {next(t.value for t in i.tags if t.key == "harness.split"): i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "val", "test"}
    contexts = {s: next(t.value for t in i.tags if t.key == "mlflow.data.context") for s, i in inputs.items()}
    assert contexts == {"train": "training", "val": "validation", "test": "evaluation"}
    assert inputs["test"].dataset.name == "synthetic{test=40,train=160}/test"
    assert json.loads(inputs["test"].dataset.profile)["images"] == 40
    assert all(len(i.dataset.digest) == 16 for i in inputs.values())
    assert {i.dataset.digest for i in trial.inputs.dataset_inputs} == {i.dataset.digest for i in inputs.values()}
    train_artifacts, trial_artifacts = _artifacts(client, run.info.run_id), _artifacts(client, trial.info.run_id)
    assert {"data_card.json", "spec.yaml"} <= train_artifacts
    assert any(p.startswith("predictions/") for p in train_artifacts)
    assert train_artifacts - trial_artifacts == set(), sorted(train_artifacts - trial_artifacts)

    # a trial logs its model only when it leads the trials finished before it (storage)
    earlier = []
    for row in sorted(rows, key=lambda r: int(r["trial"])):
        logged = "harness.model" in client.get_run(row["run_id"]).data.tags
        assert logged == (not earlier or row["val_sequence_accuracy"] >= max(earlier)), row
        earlier.append(row["val_sequence_accuracy"])
