"""Metric names: written to MLflow in one section per split, read back under the harness's names,
from stores written before the sections existed as from new ones (tracking.names)."""

import pytest

from harness.tracking.names import from_mlflow, stored_names, to_mlflow

CASES = [("loss", "train/loss"), ("images_per_sec", "train/images_per_sec"), ("val_loss", "val/loss"),
         ("val_digit3_accuracy", "val/digit3_accuracy"), ("test_sequence_accuracy", "test/sequence_accuracy"),
         ("test_resized_sequence_accuracy", "test_resized/sequence_accuracy"),
         ("best_val_sequence_accuracy", "best/val_sequence_accuracy"), ("best_epoch", "best/epoch"),
         ("wall_seconds", "run/wall_seconds"), ("trials_finished", "sweep/trials_finished"),
         ("system/cpu_utilization_percentage", "system/cpu_utilization_percentage")]


@pytest.mark.parametrize("inside, stored", CASES)
def test_names_go_to_their_section_and_come_back(inside, stored):
    assert to_mlflow(inside) == stored and from_mlflow(stored) == inside
    assert from_mlflow(inside) == inside  # an older store's name reads as itself
    assert stored_names(inside)[0] == stored


def test_an_old_store_reads_like_a_new_one(tmp_path, monkeypatch):
    import mlflow

    from harness.tracking import log, query

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")  # as tracking.store does for a harness run
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("names")
    old = client.create_run(experiment).info.run_id  # as written before the sections
    for step, value in ((1, 0.5), (2, 0.7)):
        client.log_metric(old, "val_sequence_accuracy", value, step=step)
    client.log_metric(old, "test_sequence_accuracy", 0.6)
    with mlflow.start_run(experiment_id=experiment) as active:
        log.log_metrics({"val_sequence_accuracy": 0.5}, step=1)
        log.log_metrics({"val_sequence_accuracy": 0.7}, step=2)
        log.log_metrics({"test_sequence_accuracy": 0.6})
    new = active.info.run_id
    assert set(client.get_run(new).data.metrics) == {"val/sequence_accuracy", "test/sequence_accuracy"}
    for run_id in (old, new):
        record = query.get_run(run_id)
        assert record.metrics == {"val_sequence_accuracy": 0.7, "test_sequence_accuracy": 0.6}
        assert record.history["val_sequence_accuracy"] == [(1, 0.5), (2, 0.7)]
        assert query.metric_history(run_id, "val_sequence_accuracy") == [(1, 0.5), (2, 0.7)]
    mlflow.set_tracking_uri(None)
