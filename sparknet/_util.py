"""Small helpers every room of sparknet shares; this module imports nothing of sparknet."""
from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = ["UserError", "positional_deprecated", "shape_str"]

F = TypeVar("F", bound=Callable[..., Any])


class UserError(Exception):
    """What marks an error as a mistake in what the user gave sparknet, not a bug in it.

    A file, an option, a net, a data set or a setting that cannot work: every
    documented error class of sparknet derives from this as well as from the
    built-in class it always was (``NetDefinitionError`` is still a
    ``ValueError``, ``CaffeError`` a ``RuntimeError``), so ``except ValueError``
    keeps working. The command line and the apps report these on one line with
    exit status 2; any other exception is a failure (exit status 1) and gets a
    pointer to where it was raised. Catch ``UserError`` to catch every such
    mistake, whichever room raised it.
    """


def shape_str(shape: Sequence[int]) -> str:
    """A shape as Python writes a tuple: ``(2, 3)``, ``(5,)``, ``()``."""
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def positional_deprecated(*names: str) -> Callable[[F], F]:
    """Still take the keyword-only parameters ``names`` by position, for a release.

    For a public function whose parameters became keyword-only: a call written
    before (``digits_rdd(spark, "train", 2)``) keeps working and warns with a
    ``DeprecationWarning`` that names the keyword to write instead. ``names``
    are the keyword-only parameters in the order they used to stand.
    """
    def decorate(fn: F) -> F:
        kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        n = sum(p.kind in kinds for p in inspect.signature(fn).parameters.values())

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if len(args) > n:
                extra = args[n:]
                if len(extra) > len(names):
                    raise TypeError(f"{fn.__name__}() takes at most {n + len(names)} "
                                    f"positional arguments ({len(args)} given)")
                moved = dict(zip(names, extra))
                for name in moved:
                    if name in kwargs:
                        raise TypeError(f"{fn.__name__}() got multiple values for argument "
                                        f"'{name}'")
                keywords = ", ".join(f"{k}={v!r}" for k, v in moved.items())
                warnings.warn(f"{fn.__name__}(): pass {', '.join(moved)} by keyword "
                              f"({keywords}); giving it by position is deprecated",
                              DeprecationWarning, stacklevel=2)
                args, kwargs = args[:n], {**kwargs, **moved}
            return fn(*args, **kwargs)
        return wrapper  # type: ignore[return-value]
    return decorate
