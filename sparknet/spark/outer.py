"""The outer optimizer: what a round does with the workers' mean.

SparkNet replaces the weights by the workers' mean after every round
(:meth:`Outer.average`, the default). Research on this algorithm (local SGD)
since treats the round's change ``delta = w - mean(w_i)`` as a
pseudo-gradient and gives it an optimizer of its own:

* :meth:`Outer.nesterov` — DiLoCo (Douillard et al., 2023): Nesterov
  momentum, ``m = mu * m + delta``, ``w -= lr * (delta + mu * m)``; the
  paper's lr 0.7 and momentum 0.9 are the defaults;
* :meth:`Outer.slowmo` — SlowMo (Wang et al., 2020): heavy-ball "slow"
  momentum, ``m = mu * m + delta``, ``w -= lr * m`` (the paper's buffer is
  divided by the inner learning rate; here it is not, which is the same
  while that rate is constant and a small difference under a slowly
  decaying one). With ``momentum=0, lr=1`` it is plain averaging.

:meth:`Outer.step` is a pure, deterministic function of the round's start
weights, the workers' mean and the momentum buffer, in place on flat
float32 vectors: every node that holds the same three computes the same
bits (IEEE operations, each rounded once, no fused multiply-add), so an
exchange in which the mean never reaches the driver can run it on every
node. The buffer (:meth:`Outer.init_state`) is the optimizer's whole state;
a checkpoint keeps it, so a resumed run continues bit for bit.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import attrs
import numpy as np

from sparknet.spark._values import parse_value

__all__ = ["Outer"]

#: Elements per slice of the fused update: a few small temporaries, never model-sized ones.
_BLOCK = 1 << 16

_ALIASES = {"average": "average", "averaging": "average", "mean": "average",
            "nesterov": "nesterov", "diloco": "nesterov", "slowmo": "slowmo"}


def _check_lr(owner: Outer, attribute: attrs.Attribute, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"Outer.{owner.name}: {attribute.name} must be finite and > 0, "
                         f"got {value!r}")


def _check_momentum(owner: Outer, attribute: attrs.Attribute, value: float) -> None:
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise ValueError(f"Outer.{owner.name}: {attribute.name} must be in [0, 1), "
                         f"got {value!r}")


def _check_name(_: Any, attribute: attrs.Attribute, value: str) -> None:
    if value not in Outer.NAMES:
        raise ValueError(f"Outer: {attribute.name} must be one of {', '.join(Outer.NAMES)}, "
                         f"got {value!r}")


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"Outer: lr and momentum must be numbers, got {value!r}")
    return float(value)


@attrs.frozen
class Outer:
    """The update a round applies to the weights, given the workers' mean.

    Build one with :meth:`average`, :meth:`nesterov` or :meth:`slowmo`;
    :meth:`parse` also takes a name (``"average"``, ``"nesterov"``/``"diloco"``,
    ``"slowmo"``) or the dict :meth:`describe` gives.
    """

    NAMES: ClassVar[tuple[str, ...]] = ("average", "nesterov", "slowmo")

    name: str = attrs.field(validator=_check_name)
    lr: float = attrs.field(default=1.0, converter=_number, validator=_check_lr)
    momentum: float = attrs.field(default=0.0, converter=_number, validator=_check_momentum)

    def __attrs_post_init__(self) -> None:
        if self.name == "average" and (self.lr != 1.0 or self.momentum != 0.0):
            raise ValueError("Outer.average takes no lr or momentum (it is the workers' mean); "
                             "use Outer.slowmo(lr=..., momentum=...) for a scaled or "
                             "momentum update")

    # -- constructors --------------------------------------------------------------------------
    @classmethod
    def average(cls) -> Outer:
        """SparkNet's update: the new weights are the workers' mean (no state)."""
        return cls("average")

    @classmethod
    def nesterov(cls, lr: float = 0.7, momentum: float = 0.9) -> Outer:
        """DiLoCo's outer Nesterov momentum on ``delta = w - mean``."""
        return cls("nesterov", lr, momentum)

    @classmethod
    def slowmo(cls, lr: float = 1.0, momentum: float = 0.5) -> Outer:
        """SlowMo's slow (heavy-ball) momentum on ``delta = w - mean``.

        The paper's best momentum grows with the number of workers: 0 below 4,
        about 0.5 at 8, 0.6 at 16.
        """
        return cls("slowmo", lr, momentum)

    @classmethod
    def parse(cls, value: Any) -> Outer:
        """An :class:`Outer` from itself, a name, or a :meth:`describe` dict; ``None``: average."""
        return parse_value(cls, value, param="outer", default="average",
                           names="'average', 'nesterov' (or 'diloco'), 'slowmo'",
                           aliases=_ALIASES, fields={"average": set(),
                                                     "nesterov": {"lr", "momentum"},
                                                     "slowmo": {"lr", "momentum"}})

    # -- what it is ----------------------------------------------------------------------------
    @property
    def is_average(self) -> bool:
        return self.name == "average"

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (what a checkpoint records; :meth:`parse` reads it back)."""
        if self.is_average:
            return {"name": "average"}
        return {"name": self.name, "lr": self.lr, "momentum": self.momentum}

    def __str__(self) -> str:
        if self.is_average:
            return "average"
        return f"{self.name}(lr={self.lr:g}, momentum={self.momentum:g})"

    # -- the update ----------------------------------------------------------------------------
    def init_state(self, size: int) -> np.ndarray | None:
        """A fresh state for ``size`` parameters: the zeroed momentum buffer (``None``: none)."""
        return None if self.is_average else np.zeros(int(size), np.float32)

    def step(self, weights: np.ndarray, mean: np.ndarray, state: np.ndarray | None) -> None:
        """Replace ``weights`` (the round's start) by the outer update, in place.

        ``mean`` is the workers' mean (float32 or float64; it is only read);
        ``state`` the buffer from :meth:`init_state`, updated in place.
        Deterministic: the same inputs give the same bits on any node.
        """
        if weights.dtype != np.float32 or weights.ndim != 1:
            raise TypeError(f"weights must be a flat float32 vector, got {weights.dtype} "
                            f"{weights.shape}")
        if mean.shape != weights.shape:
            raise ValueError(f"mean has {mean.size} values, the weights {weights.size}")
        if self.is_average:
            np.copyto(weights, mean, casting="same_kind")
            return
        if state is None or state.shape != weights.shape or state.dtype != np.float32:
            raise ValueError(f"Outer.{self.name} needs its float32 momentum buffer of "
                             f"{weights.size} values (Outer.init_state)")
        lr, mu = self.lr, self.momentum
        nesterov = self.name == "nesterov"
        # slice by slice, so that the temporaries stay small and in cache
        for s in range(0, weights.size, _BLOCK):
            w, m = weights[s:s + _BLOCK], state[s:s + _BLOCK]
            delta = np.subtract(w, mean[s:s + _BLOCK], dtype=mean.dtype)  # w - mean
            np.multiply(m, mu, out=m)
            np.add(m, delta, out=m, casting="same_kind")  # m = mu m + delta
            if nesterov:  # look ahead: update = delta + mu m
                delta += np.multiply(m, mu, dtype=delta.dtype)
                update = delta
            else:
                update = m
            np.subtract(w, np.multiply(update, lr, dtype=update.dtype), out=w,
                        casting="same_kind")

    def step_from_sum(self, weights: np.ndarray, total: np.ndarray, count: int,
                      state: np.ndarray | None) -> None:
        """:meth:`step` with the mean given as the sum of ``count`` results (``total`` is
        divided in place, the scratch it is on the driver)."""
        if self.is_average:  # straight into the weights: one pass, as it always was
            np.divide(total, count, out=weights, casting="same_kind")
            return
        np.divide(total, count, out=total)
        self.step(weights, total, state)
