"""Errors a user can act on. Each names the file (or spec key) and the problem."""

from __future__ import annotations

import os
import re


class HarnessError(Exception):
    """Base class: the CLI prints these as one clear line, without a traceback."""


class DataError(HarnessError):
    """A data file is missing, unreadable or malformed."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # travels intact from worker processes
        return (type(self), (self.path, self.problem))


class SpecError(HarnessError):
    """An experiment spec or override is invalid."""


class RegistryError(HarnessError, KeyError):
    """Unknown or duplicate registry name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def os_reason(exc: BaseException) -> str:
    """A short reason for a failed file operation ("No space left on device", "File too large"),
    also from HDF5's long messages, which carry the errno in their text."""
    code = getattr(exc, "errno", None)
    if not isinstance(code, int) or code <= 0:
        found = re.search(r"errno = (\d+)", str(exc))
        code = int(found.group(1)) if found else None
    if code:
        return os.strerror(code)
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
