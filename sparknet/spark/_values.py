"""Parsing the small frozen option values of a run (``Outer``, ``TauSchedule``): one home."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def parse_value(cls: Any, value: Any, *, param: str, default: str, names: str,
                aliases: Mapping[str, str], fields: Mapping[str, set[str]]) -> Any:
    """``value`` as a ``cls``: itself, ``None`` (the ``default`` constructor), a name (a key
    of ``aliases``, which maps it to a constructor) or the dict ``describe()`` gives
    (``name`` and that constructor's ``fields``). Errors name ``param`` and ``names``."""
    kind = ("an " if cls.__name__[0] in "AEIOU" else "a ") + cls.__name__
    if value is None:
        return getattr(cls, default)()
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        name = aliases.get(value.strip().lower())
        if name is None:
            raise ValueError(f"{param} must be {names} or {kind} value, got {value!r}")
        return getattr(cls, name)()
    if isinstance(value, Mapping):
        name = aliases.get(str(value.get("name", "")).strip().lower())
        allowed = fields.get(name or "")
        if allowed is None or set(value) - {"name"} - allowed:
            raise ValueError(f"{param}: a dict needs 'name' ({names}) and may have that one's "
                             f"fields only; got {dict(value)!r}")
        return getattr(cls, name)(**{k: value[k] for k in allowed if k in value})
    raise TypeError(f"{param} must be {names}, {kind} value or a dict, got "
                    f"{type(value).__name__}")
