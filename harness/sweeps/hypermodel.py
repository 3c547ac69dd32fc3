"""The sweep's KerasTuner HyperModel: trial values -> trial spec -> model, fitted by the training core."""

from __future__ import annotations

import json
import math
import shutil
import socket
from typing import Any

from harness.backend import load_keras, set_random_seed
from harness.data import datasets
from harness.errors import HarnessError
from harness.progress import say
from harness.spec import Spec, with_values
from harness.sweeps.leaderboard import leaderboard, leaderboard_cell, publish
from harness.sweeps.spec import SweepSpec
from harness.tracking import query
from harness.training import core
from harness.training.setup import placement

PARENT = "harness/parent_run_id"  # fixed hyperparameters: how the chief tells workers the parent run,
KEY = "harness/sweep_key"  # and which sweep it is (a worker started from another spec must not join)


# ------------------------------------------------------------------------------ the hypermodel

def _kt():
    load_keras()  # first, quietly: importing KerasTuner imports Keras and the backend's start-up noise
    import keras_tuner  # deferred: heavy, and the sweep spec is checked before it is needed
    from keras_tuner.src import config

    # KerasTuner 1.4.8 prints the traceback of every failed trial (DEBUG is on by default); the
    # harness prints one line instead, and the trial's run keeps the traceback (error.txt).
    config.DEBUG = False
    return keras_tuner


class SweepHyperModel(_kt().HyperModel):
    """Trial values -> trial spec -> the harness's model, fitted by the training core on the sweep's
    prepared data: a trial is a run like `harness train`'s, nested under the sweep's parent run."""

    def __init__(self, sweep: SweepSpec, data: datasets.PreparedData, *, parent_run_id: str = "",
                 tuner_id: str = "tuner0", command: str | None = None, prefix: str = ""):
        super().__init__(name=sweep.name)
        self.sweep, self.data = sweep, data
        self.parent_run_id = parent_run_id  # "" on workers: the chief's value comes with each trial
        self.tuner_id, self.command, self.prefix = tuner_id, command, prefix
        self.train_batches, _ = core.batches_for(sweep.spec, data)
        self.where = placement(sweep.spec.train.distribute, sweep.spec.train.batch_size)

    def declare_hyperparameters(self, hp) -> None:
        hp.Fixed(PARENT, self.parent_run_id)
        hp.Fixed(KEY, self.sweep.key())
        for param in self.sweep.sweep.space:
            param.declare(hp)

    def trial_spec(self, hp, trial_id: str | None = None) -> Spec:
        values: dict[str, Any] = {p.key: p.declare(hp) for p in self.sweep.sweep.space}
        if "tuner/epochs" in hp.values:  # hyperband sets each trial's epochs
            values["train.epochs"] = hp.values["tuner/epochs"]
        if trial_id is not None:
            values["name"] = f"{self.sweep.name}-trial{trial_id}"
        return with_values(self.sweep.spec, values, source=f"{self.sweep.source}: trial {trial_id or ''}".rstrip())

    def build(self, hp):
        spec = self.trial_spec(hp)
        set_random_seed(spec.train.seed)  # every trial starts from the same initialisation
        steps = math.ceil(self.train_batches.num_examples / spec.train.batch_size)
        return core.make_model(spec, self.data.train, steps, self.where)

    def fit(self, hp, model, *args, callbacks=(), epochs=None, initial_epoch=0, **kwargs):
        trial = _trial_of(callbacks)
        if hp.values.get(KEY, self.sweep.key()) != self.sweep.key():
            raise SweepMismatch(f"{self.sweep.source}: this spec differs from the one the sweep's chief runs "
                                f"(sweep key {self.sweep.key()}, the chief's {hp.values[KEY]}); start every "
                                f"worker from the same file and --set options as the chief")
        spec = self.trial_spec(hp, trial.trial_id)
        parent = hp.values.get(PARENT) or self.parent_run_id
        if not parent:
            raise HarnessError("the sweep's chief sent no parent run id; is it a harness sweep chief?")
        objective = self.sweep.sweep.objective
        previous = _trial_run(parent, trial.trial_id)
        if previous is not None and previous.status == "FINISHED":
            # finished in MLflow but not yet in the oracle (killed in between): report it, never rerun
            score = previous.metrics.get(f"best_{objective}")
            if score is not None:
                return {objective: score}
        try:
            return self._fit(hp, model, spec, trial, parent, previous, callbacks, epochs, initial_epoch)
        except Exception as exc:
            say(f"{self.prefix}trial {trial.trial_id} failed: {exc}")
            raise

    def _fit(self, hp, model, spec, trial, parent, previous, callbacks, epochs, initial_epoch):
        objective, direction = self.sweep.sweep.objective, self.sweep.sweep.direction
        trial_dir = self.sweep.state_dir / "trials" / trial.trial_id
        if previous is None:  # any local state is from an earlier, abandoned sweep of this name
            shutil.rmtree(trial_dir, ignore_errors=True)
        values = {k: v for k, v in hp.values.items() if k not in (PARENT, KEY)}
        host = {"harness.tuner_id": self.tuner_id, "harness.host": socket.gethostname()}
        plan = core.RunPlan(
            run_id=previous.run_id if previous else None, parent_run_id=parent, command=self.command,
            tags={"harness.kind": "trial", "harness.sweep": self.sweep.name, "harness.trial_id": trial.trial_id,
                  **host, "harness.trial_hp": json.dumps(values, sort_keys=True)},
            resumed_tags=host, state_dir=trial_dir, objective=objective, direction=direction, register=False,
            log_model=lambda score: _leads(self.sweep, parent, score))
        result = core.fit(spec, self.data, plan=plan, model=model, where=self.where, callbacks=callbacks,
                          epochs=epochs, initial_epoch=initial_epoch, verbose=0)
        if result.best is None:
            raise HarnessError(f"trial {trial.trial_id} logged no {objective}")
        shutil.rmtree(trial_dir, ignore_errors=True)  # only needed to resume this trial; MLflow has the rest
        board = publish(self.sweep, parent)
        best = board[0] if board and board[0]["status"] == "FINISHED" else None
        shown = " ".join(f"{k}={leaderboard_cell(v)}" for k, v in values.items() if not k.startswith("tuner/"))
        say(f"{self.prefix}trial {trial.trial_id}{self._of()}: {objective} {result.best:.4f} in "
            f"{result.wall_seconds:.0f} s"
            + (f" (best so far {best[objective]:.4f}, trial {best['trial']})" if best else "")
            + f" | {shown}")
        return {objective: result.best}

    def _of(self) -> str:
        return f" of {self.sweep.sweep.max_trials}" if self.sweep.sweep.tuner != "hyperband" else ""


def _leads(sweep: SweepSpec, parent: str, score: float | None) -> bool:
    """Whether a trial scoring ``score`` beats (or ties) every finished trial so far: only such a trial
    logs its model, so the sweep's best trial always has one and the others cost no storage."""
    if score is None:
        return False
    done = [row[sweep.sweep.objective] for row in leaderboard(sweep, parent)
            if row[sweep.sweep.objective] is not None]
    if not done:
        return True
    return score >= max(done) if sweep.sweep.direction == "max" else score <= min(done)


class SweepMismatch(HarnessError, _kt().errors.FatalError):
    """A worker's sweep is not its chief's: fatal to the search (not one failed trial)."""


def _trial_of(callbacks):
    """KerasTuner hands HyperModel.fit its TunerCallback(tuner, trial): that is where the trial id is."""
    for callback in callbacks:
        trial = getattr(callback, "trial", None)
        if trial is not None and hasattr(trial, "trial_id"):
            return trial
    raise HarnessError("HyperModel.fit was called without KerasTuner's trial callback")


def _trial_run(parent: str, trial_id: str):
    """The newest nested run of ``parent`` for ``trial_id``, or None."""
    runs = [r for r in query.child_runs(parent) if r.tags.get("harness.trial_id") == trial_id]
    return max(runs, key=lambda r: r.start_time) if runs else None
