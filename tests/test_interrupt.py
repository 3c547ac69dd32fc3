"""A Ctrl-C is never lost: not even when library code on the training path swallows KeyboardInterrupt."""

import os
import signal
import time

import numpy as np
import pytest

from harness import interrupt
from harness.backend import load_keras
from harness.training.callbacks import StopOnInterrupt

keras = load_keras()


class SwallowsCtrlC(keras.callbacks.Callback):
    """Library code that catches everything (as Keras' loss building does while tracing a step); the
    Ctrl-C arrives while it runs, at batch 2."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def on_train_batch_begin(self, batch, logs=None):
        self.batches.append(batch)
        if batch == 2:
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)  # the handler raises KeyboardInterrupt in here
            except:  # noqa: E722  (the point of the test)
                pass


def _fit(callbacks):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.zeros((8, 3), np.float32), np.zeros((8, 1), np.float32)
    model.fit(x, y, batch_size=1, epochs=1, verbose=0, callbacks=callbacks)


def test_a_swallowed_ctrl_c_stops_training_at_the_batch_end():
    swallow = SwallowsCtrlC()
    with interrupt.installed():
        with pytest.raises(KeyboardInterrupt):
            _fit([swallow, StopOnInterrupt()])
    assert swallow.batches == [0, 1, 2]  # stopped at the end of the batch the Ctrl-C came in


def test_without_the_harness_handler_the_same_ctrl_c_is_lost():
    swallow = SwallowsCtrlC()  # Python's own handler: the KeyboardInterrupt is swallowed and forgotten
    _fit([swallow, StopOnInterrupt()])
    assert swallow.batches == list(range(8))


def test_the_handler_is_restored_and_the_request_forgotten_on_leaving():
    before = signal.getsignal(signal.SIGINT)
    with interrupt.installed():
        assert signal.getsignal(signal.SIGINT) is not before
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    assert signal.getsignal(signal.SIGINT) is before
    interrupt.raise_if_requested()  # nothing pending after the block


def test_a_process_started_with_ctrl_c_ignored_keeps_ignoring_it():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupt.installed():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
