"""``SolverParam`` and ``LrPolicy``: how a net is trained, checked like the net."""
from __future__ import annotations

import math
from typing import Any

import attrs

from sparknet.dsl._fields import (
    BOOL,
    INT64,
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_REAL,
    REAL,
    STR,
    EnumKind,
    Float,
    Repeated,
    dsl_class,
    fail,
    fields_in,
    param,
    proto_name,
    read_fields,
    read_values,
    write_fields,
)
from sparknet.dsl.enums import Regularization, SnapshotFormat, SolverMode, SolverType
from sparknet.dsl.errors import NetDefinitionError
from sparknet.dsl.net import NetParam
from sparknet.proto import caffe_pb2, loader

__all__ = ["LrPolicy", "SolverParam"]

#: Which fields each learning-rate policy uses (all of them are required).
_POLICY_FIELDS = {
    "fixed": (),
    "step": ("gamma", "stepsize"),
    "exp": ("gamma",),
    "inv": ("gamma", "power"),
    "multistep": ("gamma", "stepvalue"),
    "poly": ("power",),
    "sigmoid": ("gamma", "stepsize"),
}


@dsl_class
class LrPolicy:
    """A learning-rate schedule, one of Caffe's seven (``lr_policy``).

    Build one with its constructor, which asks for exactly what the policy
    uses; ``rate(base_lr, iteration)`` gives Caffe's learning rate::

        LrPolicy.fixed()                        # base_lr
        LrPolicy.step(gamma=0.1, stepsize=1e5)  # base_lr * gamma ^ (iter // stepsize)
        LrPolicy.exp(gamma=0.999)               # base_lr * gamma ^ iter
        LrPolicy.inv(gamma=1e-4, power=0.75)    # base_lr * (1 + gamma * iter) ^ -power
        LrPolicy.multistep(gamma=0.1, stepvalue=[1000, 2000])
        LrPolicy.poly(power=0.5)                # base_lr * (1 - iter / max_iter) ^ power
        LrPolicy.sigmoid(gamma=-0.01, stepsize=1000)

    Attributes:
        policy: the policy's Caffe name.
        gamma, power, stepsize, stepvalue: its parameters (see above).
    """

    policy: str = param(STR, proto="lr_policy", kw_only=False, required=True)
    gamma: float | None = param(REAL)
    power: float | None = param(REAL)
    stepsize: int | None = param(POSITIVE)
    stepvalue: tuple[int, ...] = param(Repeated(POSITIVE))

    def __attrs_post_init__(self) -> None:
        if self.policy not in _POLICY_FIELDS:
            fail(self, "policy", f"Caffe has no learning-rate policy '{self.policy}'; "
                 f"it has {', '.join(_POLICY_FIELDS)}")
        uses = _POLICY_FIELDS[self.policy]
        for name in ("gamma", "power", "stepsize", "stepvalue"):
            given = getattr(self, name) not in (None, ())
            if name in uses and not given:
                fail(self, name, f"the '{self.policy}' policy needs {name}")
            if given and name not in uses:
                fail(self, name, f"the '{self.policy}' policy does not use {name}")
        if self.policy in ("step", "exp", "inv", "multistep") and self.gamma <= 0:
            fail(self, "gamma", f"must be positive for the '{self.policy}' policy, "
                 f"got {self.gamma:g}")
        if self.policy == "sigmoid" and self.gamma == 0:
            fail(self, "gamma", "must not be 0 for the 'sigmoid' policy")
        if self.policy in ("inv", "poly") and self.power < 0:
            fail(self, "power", f"must not be negative, got {self.power:g}")
        if list(self.stepvalue) != sorted(set(self.stepvalue)):
            fail(self, "stepvalue", f"must increase strictly, got {self.stepvalue}")

    def _describe(self) -> tuple[str, str | None]:
        return "LrPolicy", None

    @classmethod
    def fixed(cls) -> LrPolicy:
        """A constant learning rate."""
        return cls("fixed")

    @classmethod
    def step(cls, gamma: float, stepsize: int) -> LrPolicy:
        """Multiply by ``gamma`` every ``stepsize`` iterations."""
        return cls("step", gamma=gamma, stepsize=stepsize)

    @classmethod
    def exp(cls, gamma: float) -> LrPolicy:
        """Multiply by ``gamma`` every iteration."""
        return cls("exp", gamma=gamma)

    @classmethod
    def inv(cls, gamma: float, power: float) -> LrPolicy:
        """``(1 + gamma * iter) ^ -power`` (Caffe's LeNet)."""
        return cls("inv", gamma=gamma, power=power)

    @classmethod
    def multistep(cls, gamma: float, stepvalue: tuple[int, ...] | list[int]) -> LrPolicy:
        """Multiply by ``gamma`` at each iteration in ``stepvalue``."""
        return cls("multistep", gamma=gamma, stepvalue=stepvalue)

    @classmethod
    def poly(cls, power: float) -> LrPolicy:
        """Decay polynomially to zero at the solver's ``max_iter``."""
        return cls("poly", power=power)

    @classmethod
    def sigmoid(cls, gamma: float, stepsize: int) -> LrPolicy:
        """A sigmoid centred on ``stepsize`` (decaying for negative ``gamma``)."""
        return cls("sigmoid", gamma=gamma, stepsize=stepsize)

    def rate(self, base_lr: float, iteration: int, max_iter: int | None = None) -> float:
        """The learning rate at ``iteration``, computed as Caffe's SGD solver does."""
        g, p, it = self.gamma, self.power, iteration
        match self.policy:
            case "fixed":
                return base_lr
            case "step":
                return base_lr * g ** (it // self.stepsize)
            case "exp":
                return base_lr * g ** it
            case "inv":
                return base_lr * (1 + g * it) ** -p
            case "multistep":
                return base_lr * g ** sum(1 for v in self.stepvalue if it >= v)
            case "poly":
                if not max_iter:
                    raise ValueError("the 'poly' policy needs max_iter")
                return base_lr * (1 - it / max_iter) ** p
            case _:  # sigmoid
                return base_lr / (1 + math.exp(-g * (it - self.stepsize)))


@dsl_class
class SolverParam:
    """How Caffe trains a net (Caffe's ``SolverParameter``), with the net inline.

    ::

        SolverParam(net, base_lr=0.01, lr_policy=LrPolicy.inv(gamma=1e-4, power=0.75),
                    momentum=0.9, weight_decay=5e-4, solver_type=SolverType.SGD,
                    max_iter=10000)

    Give it to :class:`sparknet.engine.CaffeNet` as it is. As everywhere in
    the DSL, an option left ``None`` is not written and Caffe's default applies.

    Attributes:
        net: the net trained (both phases in one ``NetParam``).
        base_lr: the base learning rate.
        lr_policy: the schedule (an :class:`LrPolicy`).
        momentum: SGD/Nesterov momentum, Adam's beta1, AdaDelta's decay; in [0, 1).
        weight_decay: the regularization strength.
        regularization_type: ``Regularization.L2`` (Caffe's default) or ``L1``.
        solver_type: ``SolverType.SGD`` (Caffe's default), ``NESTEROV``,
            ``ADAGRAD``, ``RMSPROP``, ``ADADELTA`` or ``ADAM``; written as
            Caffe's ``type`` string.
        max_iter: the last iteration.
        iter_size: accumulate gradients over this many batches per step.
        clip_gradients: rescale gradients whose L2 norm exceeds this (-1: off).
        display, average_loss: how often to log, and over how many iterations.
        test_iter, test_interval, test_compute_loss, test_initialization:
            stand-alone Caffe's testing (sparknet tests from Python instead).
        snapshot, snapshot_prefix, snapshot_diff, snapshot_format,
            snapshot_after_train: stand-alone Caffe's snapshots.
        solver_mode, device_id: CPU or GPU for stand-alone Caffe.
        random_seed: seed Caffe's random numbers (fillers, dropout).
        delta: the numerical-stability constant of AdaGrad, RMSProp, AdaDelta, Adam.
        momentum2: Adam's beta2.
        rms_decay: RMSProp's decay.
        debug_info: Caffe prints per-blob statistics.
    """

    net: NetParam = attrs.field(kw_only=False)
    base_lr: float = param(POSITIVE_REAL, required=True)
    lr_policy: LrPolicy = attrs.field(kw_only=True)
    momentum: float | None = param(Float(lo=0.0, hi=1.0, hi_open=True))
    weight_decay: float | None = param(Float(lo=0.0))
    regularization_type: Regularization | None = param(EnumKind(Regularization))
    solver_type: SolverType | None = param(EnumKind(SolverType), scope="type")
    max_iter: int | None = param(NON_NEGATIVE)
    iter_size: int | None = param(POSITIVE)
    clip_gradients: float | None = param(REAL)
    display: int | None = param(NON_NEGATIVE)
    average_loss: int | None = param(POSITIVE)
    test_iter: tuple[int, ...] = param(Repeated(POSITIVE))
    test_interval: int | None = param(NON_NEGATIVE)
    test_compute_loss: bool | None = param(BOOL)
    test_initialization: bool | None = param(BOOL)
    snapshot: int | None = param(NON_NEGATIVE)
    snapshot_prefix: str | None = param(STR)
    snapshot_diff: bool | None = param(BOOL)
    snapshot_format: SnapshotFormat | None = param(EnumKind(SnapshotFormat))
    snapshot_after_train: bool | None = param(BOOL)
    solver_mode: SolverMode | None = param(EnumKind(SolverMode))
    device_id: int | None = param(NON_NEGATIVE)
    random_seed: int | None = param(INT64)
    delta: float | None = param(POSITIVE_REAL)
    momentum2: float | None = param(Float(lo=0.0, hi=1.0, hi_open=True))
    rms_decay: float | None = param(Float(lo=0.0, hi=1.0, hi_open=True))
    debug_info: bool | None = param(BOOL)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.net, NetParam):
            fail(self, "net", f"must be a NetParam, got {type(self.net).__name__} (load a "
                 "prototxt net with NetParam.load or NetParam.from_proto)")
        if not isinstance(self.lr_policy, LrPolicy):
            fail(self, "lr_policy", f"must be an LrPolicy such as LrPolicy.fixed(), "
                 f"got {self.lr_policy!r}")
        kind = self.solver_type or SolverType.SGD
        if kind in (SolverType.ADAGRAD, SolverType.RMSPROP) and self.momentum:
            fail(self, "momentum", f"{kind.value} takes no momentum (Caffe requires 0)")
        if self.lr_policy.policy == "poly" and not self.max_iter:
            fail(self, "max_iter", "the 'poly' policy decays to zero at max_iter; give it")
        if self.test_iter and not self.test_interval:
            fail(self, "test_interval", "test_iter is given, so give test_interval too")

    def _describe(self) -> tuple[str, str | None]:
        return "SolverParam", None

    def rate(self, iteration: int) -> float:
        """The learning rate Caffe uses at ``iteration``."""
        return self.lr_policy.rate(self.base_lr, iteration, self.max_iter)

    def to_proto(self) -> caffe_pb2.SolverParameter:
        """This solver as a ``caffe_pb2.SolverParameter``, the net in ``net_param``."""
        proto = caffe_pb2.SolverParameter()
        proto.net_param.CopyFrom(self.net.to_proto())
        write_fields(self, proto)
        write_fields(self.lr_policy, proto)
        if self.solver_type is not None:
            proto.type = self.solver_type.value  # Caffe's string, not the old enum
        return proto

    def to_prototxt(self) -> str:
        """This solver (with its net inline) as prototxt text."""
        return loader.to_prototxt(self.to_proto())

    @classmethod
    def from_proto(cls, proto: caffe_pb2.SolverParameter) -> SolverParam:
        """The DSL solver for a ``SolverParameter`` whose net is inline.

        A solver that names its net by file must be loaded with
        ``ProtoLoader.load_solver_prototxt_with_net`` first.
        """
        proto = loader.upgrade_solver(proto)
        if not proto.HasField("net_param"):
            raise NetDefinitionError(
                "SolverParam, field 'net': the solver has no inline net_param; load it with "
                "ProtoLoader.load_solver_prototxt_with_net first",
                field="net")
        if not proto.HasField("lr_policy"):
            raise NetDefinitionError("SolverParam, field 'lr_policy': the solver has no "
                                     "lr_policy (Caffe requires one)", field="lr_policy")
        unknown = {f.name for f, _ in proto.ListFields()} - {
            "net_param", "type", *_proto_names(cls), *_proto_names(LrPolicy)}
        if unknown:
            raise NetDefinitionError(f"SolverParam: the DSL does not model the solver "
                                     f"field(s) {', '.join(sorted(unknown))}",
                                     field=sorted(unknown)[0])
        values: dict[str, Any] = read_values(cls, proto)
        if proto.HasField("type"):
            values["solver_type"] = _solver_type(proto.type)
        return cls(NetParam.from_proto(proto.net_param),
                   lr_policy=read_fields(LrPolicy, proto), **values)


def _solver_type(name: str) -> SolverType:
    for member in SolverType:
        if name in (member.value, member.name):
            return member
    raise NetDefinitionError(f"SolverParam, field 'solver_type': Caffe has no solver "
                             f"'{name}'", field="solver_type")


def _proto_names(cls: type) -> list[str]:
    return [proto_name(f) for f in fields_in(cls, "param")]
