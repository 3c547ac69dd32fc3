"""Ctrl-C that is never lost.

Python turns SIGINT into KeyboardInterrupt wherever the main thread happens to be. Some library code
on the training path catches everything (a bare ``except:``; Keras does so while it traces a step's
loss), and a Ctrl-C that lands there is silently dropped: a sweep would run on. The handler that
``installed()`` puts in place also records the request, and ``StopOnInterrupt`` (a Keras callback
every harness fit uses) raises it again at the next batch or epoch boundary, outside such code, so
one Ctrl-C always stops training.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

_requested = False


def _handler(signum, frame) -> None:
    global _requested
    _requested = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """SIGINT handled by the recording handler while inside (main thread only; elsewhere nothing).

    A process started with SIGINT ignored (a background job of a shell script, say) keeps ignoring it.
    """
    global _requested
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield
        return
    previous = signal.signal(signal.SIGINT, _handler)
    _requested = False
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested = False


def raise_if_requested() -> None:
    """KeyboardInterrupt if a Ctrl-C arrived (and was perhaps swallowed) since ``installed()``."""
    if _requested:
        raise KeyboardInterrupt
