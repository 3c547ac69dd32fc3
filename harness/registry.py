"""A small generic registry: name -> factory function.

Contract:
- ``@REG.register`` (or ``@REG.register("name")``) adds a factory under its function name; a duplicate
  name raises :class:`~harness.errors.RegistryError`.
- ``REG.get(name)`` returns the factory; an unknown name raises ``RegistryError`` naming the registry
  and listing close matches.
- ``REG.list(pattern)`` returns sorted names matching a shell-style pattern (``"goodfellow*"``).
- ``REG.create(name, **kwargs)`` calls the factory; keyword arguments it does not accept are an error
  that names them and lists the ones it does accept.
- ``REG.describe(name)`` is the first line of the factory's docstring.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from typing import Any, Callable

from harness.errors import RegistryError


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name_or_fn: str | Callable | None = None):
        def add(fn: Callable, name: str) -> Callable:
            if name in self._entries:
                raise RegistryError(f"{self.kind} registry: '{name}' is already registered")
            self._entries[name] = fn
            return fn

        if callable(name_or_fn):
            return add(name_or_fn, name_or_fn.__name__)
        return lambda fn: add(fn, name_or_fn or fn.__name__)

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise RegistryError(
                f"unknown {self.kind} '{name}'{hint} (known: {', '.join(sorted(self._entries))})"
            ) from None

    def list(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def options(self, name: str) -> dict[str, Any]:
        """Keyword arguments of ``name``'s factory and their defaults."""
        sig = inspect.signature(self.get(name))
        return {
            p.name: p.default
            for p in sig.parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.default is not p.empty
        }

    def check_options(self, name: str, kwargs: dict[str, Any]) -> None:
        known = self.options(name)
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise RegistryError(
                f"{self.kind} '{name}' has no option {', '.join(repr(u) for u in unknown)} "
                f"(its options: {', '.join(sorted(known)) or 'none'})"
            )

    def check_option_types(self, name: str, kwargs: dict[str, Any]) -> None:
        """Each option must have its default's type (an int is accepted for a float)."""
        for key, value in kwargs.items():
            default = self.options(name)[key]
            if default is None:
                continue
            want = type(default)
            ok = isinstance(value, want) and not (isinstance(value, bool) and want is not bool)
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            if not ok:
                raise RegistryError(
                    f"{self.kind} '{name}' option '{key}' must be {want.__name__}, got {value!r}"
                )

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self.check_options(name, kwargs)
        return self.get(name)(*args, **kwargs)

    def describe(self, name: str) -> str:
        doc = inspect.getdoc(self.get(name)) or ""
        return doc.splitlines()[0] if doc else ""
