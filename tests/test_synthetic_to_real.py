"""benchmarks/synthetic_to_real.py: its fine-tuning spec, and the whole measurement at a tiny size on
the genuine SVHN sample, with a real MLflow store in a temporary folder."""

import os
import re
import subprocess
import sys

from conftest import REPO

from harness.spec import load_spec

sys.path.insert(0, str(REPO / "benchmarks"))

import synthetic_to_real  # noqa: E402


def test_the_fine_tuning_spec_drops_a_time_to_accuracy_stop(tmp_path):
    """A run trained to a target (benchmarks/time_to_accuracy.py) stops on validation accuracy; its
    fine-tuning runs its epochs, with or without a validation split."""
    source = load_spec(REPO / "experiments" / "report2016_synthetic.yaml", ["train.target_accuracy=0.95"])
    folders = {"finetune": tmp_path / "finetune", "heldout": tmp_path / "heldout"}
    tuned = synthetic_to_real.finetune_spec(source, "0" * 32, folders, tmp_path, 3, 1e-3,
                                            ["data.val_fraction=0", "data.recombined=100"])
    assert tuned.train.target_accuracy == 0 and tuned.train.init_from == "0" * 32
    assert (tuned.train.epochs, tuned.train.learning_rate, tuned.data.val_fraction) == (3, 1e-3, 0)
    assert tuned.data.name == "folders" and tuned.data.options["test"] == str(folders["heldout"])
    assert tuned.model.name == "report2016" and tuned.data.image_size == 74  # the run's model and preparation


def test_the_measurement_end_to_end(shared_data, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}

    def run(*args):
        result = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=900)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        return result

    trained = run("-m", "harness", "train", str(REPO / "experiments" / "smoke.yaml"))
    run_id = re.search(r"MLflow run ([0-9a-f]{32})", trained.stderr).group(1)
    result = run(str(REPO / "benchmarks" / "synthetic_to_real.py"), "--run", run_id, "--limit", "24", "--epochs", "1",
                 "--set", "train.batch_size=8", "--workdir", str(tmp_path / "work"))
    table = result.stdout
    for row in ("zero-shot, all", "fine-tuned 1 ep.", "read with 5 test crops"):
        assert row in table, table
    assert "[3/3] fine-tuning" in result.stderr
