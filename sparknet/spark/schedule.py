"""tau schedules: how many solver steps each worker runs in each round.

``sync_interval`` is the given tau; a :class:`TauSchedule` decides each
round's tau from it:

* :meth:`TauSchedule.fixed` — tau every round (SparkNet's rule, the default);
* :meth:`TauSchedule.post_local` — post-local SGD (Lin et al., 2020): the
  first ``rounds`` rounds run ``tau`` steps (1: per-step synchronous SGD, the
  phase where averaging often matters most), then the given tau;
* :meth:`TauSchedule.adaptive` — AdaComm (Wang & Joshi, 2019), driven by the
  training loss: tau starts at the given one and every ``interval`` rounds
  becomes ``ceil(sqrt(loss / loss_1) * tau)`` (``loss_1``: the first round's
  mean loss, ``loss``: the mean of the last ``interval`` rounds), never below
  ``min_tau`` nor above the given tau: fewer exchanges while the loss falls
  fast, more as it flattens.

Every tau is a pure function of the round number, the given tau and the
losses of the rounds before (the run's history, which a checkpoint keeps),
so a run is deterministic given its seed and a resumed run takes the same
taus as an uninterrupted one. :meth:`TauSchedule.first_step` is the solver
iteration a round starts at (the sum of the taus before it): the minibatch
sequence and the learning-rate schedule follow it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import attrs

from sparknet.spark._values import parse_value

__all__ = ["TauSchedule"]

_ALIASES = {"fixed": "fixed", "constant": "fixed", "post-local": "post_local",
            "post_local": "post_local", "postlocal": "post_local", "adaptive": "adaptive",
            "adacomm": "adaptive"}


def _positive(owner: TauSchedule, attribute: attrs.Attribute, value: int) -> None:
    if value < 1:
        raise ValueError(f"TauSchedule.{owner.kind}: {attribute.name} must be >= 1, "
                         f"got {value}")


def _not_negative(owner: TauSchedule, attribute: attrs.Attribute, value: int) -> None:
    if value < 0:
        raise ValueError(f"TauSchedule.{owner.kind}: {attribute.name} must be >= 0, "
                         f"got {value}")


def _integer(value: Any) -> int:
    if isinstance(value, bool) or (not isinstance(value, int) and not (
            isinstance(value, float) and value.is_integer())):
        raise TypeError(f"TauSchedule: rounds, tau, interval and min_tau are whole numbers, "
                        f"got {value!r}")
    return int(value)


def _check_kind(_: Any, attribute: attrs.Attribute, value: str) -> None:
    if value not in TauSchedule.KINDS:
        raise ValueError(f"TauSchedule: {attribute.name} must be one of "
                         f"{', '.join(TauSchedule.KINDS)}, got {value!r}")


@attrs.frozen
class TauSchedule:
    """Each round's tau, from the given one (``sync_interval``) and the losses so far."""

    KINDS: ClassVar[tuple[str, ...]] = ("fixed", "post_local", "adaptive")

    kind: str = attrs.field(validator=_check_kind)
    rounds: int = attrs.field(default=0, converter=_integer, validator=_not_negative)
    tau: int = attrs.field(default=1, converter=_integer, validator=_positive)
    interval: int = attrs.field(default=1, converter=_integer, validator=_positive)
    min_tau: int = attrs.field(default=1, converter=_integer, validator=_positive)

    # -- constructors --------------------------------------------------------------------------
    @classmethod
    def fixed(cls) -> TauSchedule:
        """The given tau every round."""
        return cls("fixed")

    @classmethod
    def post_local(cls, rounds: int = 10, tau: int = 1) -> TauSchedule:
        """``tau`` steps (1: per step) for the first ``rounds`` rounds, then the given tau."""
        return cls("post_local", rounds=rounds, tau=tau)

    @classmethod
    def adaptive(cls, interval: int = 5, min_tau: int = 1) -> TauSchedule:
        """AdaComm: every ``interval`` rounds, tau = ceil(sqrt(loss / first loss) * tau)."""
        return cls("adaptive", interval=interval, min_tau=min_tau)

    @classmethod
    def parse(cls, value: Any) -> TauSchedule:
        """A schedule from itself, a name, or a :meth:`describe` dict; ``None``: fixed."""
        return parse_value(cls, value, param="tau_schedule", default="fixed",
                           names="'fixed', 'post-local', 'adaptive'", aliases=_ALIASES,
                           fields={"fixed": set(), "post_local": {"rounds", "tau"},
                                   "adaptive": {"interval", "min_tau"}})

    # -- what it is ----------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """A JSON-able description (what a checkpoint records; :meth:`parse` reads it back)."""
        if self.kind == "post_local":
            return {"name": self.kind, "rounds": self.rounds, "tau": self.tau}
        if self.kind == "adaptive":
            return {"name": self.kind, "interval": self.interval, "min_tau": self.min_tau}
        return {"name": self.kind}

    def __str__(self) -> str:
        d = self.describe()
        args = ", ".join(f"{k}={v}" for k, v in d.items() if k != "name")
        return f"{self.kind}({args})" if args else self.kind

    # -- the rule ------------------------------------------------------------------------------
    def tau_at(self, rnd: int, base: int, losses: Sequence[float]) -> int:
        """tau of 0-based round ``rnd``; ``losses[q]``: round ``q``'s mean training loss
        (only those before ``rnd`` are read; the adaptive rule needs them)."""
        if self.kind == "fixed":
            return base
        if self.kind == "post_local":
            return self.tau if rnd < self.rounds else base
        if rnd < self.interval:
            return base
        at = rnd - rnd % self.interval  # the last re-evaluation, at a multiple of interval
        if len(losses) < at:
            raise ValueError(f"the adaptive tau of round {rnd + 1} needs the losses of rounds "
                             f"1..{at}, got {len(losses)}")
        first = losses[0]
        recent = losses[at - self.interval:at]
        now = sum(recent) / len(recent)
        if not (math.isfinite(first) and first > 0 and math.isfinite(now)):
            return base
        tau = math.ceil(math.sqrt(max(now, 0.0) / first) * base)
        return max(min(self.min_tau, base), min(base, tau))

    def first_step(self, rnd: int, base: int, losses: Sequence[float]) -> int:
        """The solver iteration 0-based round ``rnd`` starts at: the sum of the taus before."""
        if self.kind == "fixed":
            return rnd * base
        if self.kind == "post_local":
            warm = min(rnd, self.rounds)
            return warm * self.tau + (rnd - warm) * base
        return sum(self.tau_at(q, base, losses) for q in range(rnd))
