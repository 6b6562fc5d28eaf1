"""Caffe's include/exclude rules: which layers a net of a given state keeps.

This is the one implementation of Caffe's ``Net::FilterNet`` and
``Net::StateMeetsRule`` in sparknet. A net's state is a phase (``TRAIN`` or
``TEST``), a level (an integer, default 0) and a set of stages; a layer with
``include`` rules is kept if any of them is met, a layer with only
``exclude`` rules is kept unless one of them is met. The DSL keeps a typed
form of the same rules (``NetStateRule.met_by``), tested equal to this one.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sparknet.proto import caffe_pb2

__all__ = ["PHASES", "active_phases", "layer_active", "net_state", "phase_value", "rule_met",
           "solver_net_state"]

#: The two phases, by name, in Caffe's order.
PHASES = ("TRAIN", "TEST")


def phase_value(phase: Any) -> int:
    """``caffe_pb2.TRAIN`` or ``caffe_pb2.TEST`` from a name (any case), a DSL ``Phase`` or an int."""
    if isinstance(phase, str):  # also the DSL's Phase, a StrEnum
        name = phase.upper()
        if name in PHASES:
            return caffe_pb2.Phase.Value(name)
    elif isinstance(phase, int) and not isinstance(phase, bool) \
            and phase in (caffe_pb2.TRAIN, caffe_pb2.TEST):
        return int(phase)
    raise ValueError(f"phase must be 'TRAIN' or 'TEST', got {phase!r}")


def rule_met(rule: caffe_pb2.NetStateRule, phase: Any, level: int = 0,
             stages: Iterable[str] = ()) -> bool:
    """Whether a net in ``phase`` at ``level`` with ``stages`` meets ``rule`` (Caffe's
    ``StateMeetsRule``)."""
    stages = set(stages)
    return ((not rule.HasField("phase") or rule.phase == phase_value(phase))
            and (not rule.HasField("min_level") or level >= rule.min_level)
            and (not rule.HasField("max_level") or level <= rule.max_level)
            and all(s in stages for s in rule.stage)
            and not any(s in stages for s in rule.not_stage))


def layer_active(layer: caffe_pb2.LayerParameter, phase: Any, level: int = 0,
                 stages: Iterable[str] = ()) -> bool:
    """Whether Caffe keeps ``layer`` in a net of ``phase``, ``level`` and ``stages``
    (its ``FilterNet``: any ``include`` rule met, else no ``exclude`` rule met)."""
    stages = tuple(stages)
    if len(layer.include):
        return any(rule_met(r, phase, level, stages) for r in layer.include)
    return not any(rule_met(r, phase, level, stages) for r in layer.exclude)


def net_state(net: caffe_pb2.NetParameter) -> tuple[int, tuple[str, ...]]:
    """The level and stages a net's own ``state`` sets (``(0, ())`` when it sets none)."""
    return int(net.state.level), tuple(net.state.stage)


def solver_net_state(solver: caffe_pb2.SolverParameter, phase: Any
                     ) -> tuple[int, tuple[str, ...]]:
    """The level and stages of the net a solver builds for ``phase``.

    As Caffe's ``Solver`` does: the net's own ``state``, then the solver's
    ``train_state`` (TRAIN) or first ``test_state`` (TEST) merged over it.
    """
    net = solver.net_param if solver.HasField("net_param") else solver.train_net_param
    level, stages = net_state(net)
    if phase_value(phase) == caffe_pb2.TRAIN:
        extra = solver.train_state if solver.HasField("train_state") else None
    else:
        extra = solver.test_state[0] if len(solver.test_state) else None
    if extra is not None:
        if extra.HasField("level"):
            level = int(extra.level)
        stages = (*stages, *extra.stage)
    return level, stages


def active_phases(layer: caffe_pb2.LayerParameter,
                  states: Sequence[tuple[int, Sequence[str]]] | None = None
                  ) -> tuple[str, ...]:
    """The phases (of :data:`PHASES`) whose net keeps ``layer``.

    ``states`` gives each phase's ``(level, stages)`` in :data:`PHASES` order
    (default: level 0 and no stages in both).
    """
    states = states or [(0, ())] * len(PHASES)
    return tuple(p for p, (level, stages) in zip(PHASES, states)
                 if layer_active(layer, p, level, stages))
