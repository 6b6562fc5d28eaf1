"""Small value objects layers are made of: fillers, parameter specs, phase rules,
data transformations and loss options."""
from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from sparknet.dsl._fields import (
    ANY_STR,
    BOOL,
    INT32,
    NON_NEGATIVE,
    POSITIVE_REAL,
    REAL,
    STR,
    EnumKind,
    Int,
    Repeated,
    dsl_class,
    fail,
    param,
)
from sparknet.dsl.enums import LossNormalization, Phase, ShareMode, VarianceNorm

__all__ = ["Filler", "LossParam", "NetState", "NetStateRule", "ParamSpec", "TransformParam"]

#: The filler types Caffe knows (``GetFiller``).
FILLER_TYPES = ("constant", "uniform", "gaussian", "positive_unitball", "xavier", "msra",
                "bilinear")


@dsl_class
class Filler:
    """How a parameter blob is initialized (Caffe's ``FillerParameter``).

    Prefer the named constructors, which take only what their type uses::

        Filler.xavier()
        Filler.gaussian(std=0.01)
        Filler.constant(0.2)

    Attributes:
        type: one of ``constant``, ``uniform``, ``gaussian``, ``positive_unitball``,
            ``xavier``, ``msra``, ``bilinear`` (``None``: Caffe's default, constant).
        value: the constant of a ``constant`` filler.
        min, max: the range of a ``uniform`` filler.
        mean, std: of a ``gaussian`` filler (``std`` > 0).
        sparse: a gaussian filler's expected non-zeros per output (-1: dense).
        variance_norm: the fan ``xavier`` and ``msra`` scale by.
    """

    type: str | None = param(STR, kw_only=False)
    value: float | None = param(REAL)
    min: float | None = param(REAL)
    max: float | None = param(REAL)
    mean: float | None = param(REAL)
    std: float | None = param(POSITIVE_REAL)
    sparse: int | None = param(Int(-1, 2**31 - 1, "-1 or a non-negative integer"))
    variance_norm: VarianceNorm | None = param(EnumKind(VarianceNorm))

    def __attrs_post_init__(self) -> None:
        if self.type is not None and self.type not in FILLER_TYPES:
            close = difflib.get_close_matches(self.type, FILLER_TYPES, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            fail(self, "type", f"Caffe has no '{self.type}' filler{hint}; "
                 f"it has {', '.join(FILLER_TYPES)}")
        low = 0.0 if self.min is None else self.min
        high = 1.0 if self.max is None else self.max
        if low > high:
            fail(self, "max", f"max ({high:g}) is below min ({low:g})")

    @classmethod
    def constant(cls, value: float | None = None) -> Filler:
        """Every element ``value`` (Caffe's default: 0)."""
        return cls("constant", value=value)

    @classmethod
    def uniform(cls, min: float | None = None, max: float | None = None) -> Filler:
        """Uniform in ``[min, max]`` (Caffe's default: [0, 1])."""
        return cls("uniform", min=min, max=max)

    @classmethod
    def gaussian(cls, std: float | None = None, mean: float | None = None,
                 sparse: int | None = None) -> Filler:
        """Normal with ``mean`` and ``std`` (Caffe's defaults: 0 and 1)."""
        return cls("gaussian", std=std, mean=mean, sparse=sparse)

    @classmethod
    def xavier(cls, variance_norm: VarianceNorm | str | None = None) -> Filler:
        """Glorot's uniform initialization, scaled by the fan in (by default)."""
        return cls("xavier", variance_norm=variance_norm)

    @classmethod
    def msra(cls, variance_norm: VarianceNorm | str | None = None) -> Filler:
        """He's gaussian initialization for ReLU nets, scaled by the fan in (by default)."""
        return cls("msra", variance_norm=variance_norm)

    @classmethod
    def bilinear(cls) -> Filler:
        """Bilinear upsampling kernels, for ``DeconvolutionLayer`` weights."""
        return cls("bilinear")

    @classmethod
    def positive_unitball(cls) -> Filler:
        """Positive values that sum to one per output."""
        return cls("positive_unitball")


def as_filler(value: Any) -> Any:
    """``"xavier"`` is shorthand for ``Filler("xavier")``."""
    return Filler(value) if isinstance(value, str) else value


@dsl_class
class ParamSpec:
    """Learning-rate and weight-decay multipliers of one parameter blob, and sharing.

    A layer's ``params`` hold one ``ParamSpec`` per blob, weights first:
    ``params=[ParamSpec(lr_mult=1), ParamSpec(lr_mult=2)]``. Layers whose
    ``ParamSpec`` carries the same ``name`` share that blob (a Siamese net).

    Attributes:
        lr_mult: multiplies the solver's learning rate for this blob.
        decay_mult: multiplies the solver's weight decay for this blob.
        name: a name to share this blob under.
        share_mode: whether shared blobs must match in shape exactly.
    """

    lr_mult: float | None = param(REAL, kw_only=False)
    decay_mult: float | None = param(REAL, kw_only=False)
    name: str | None = param(STR)
    share_mode: ShareMode | None = param(EnumKind(ShareMode))


def _phase_rule(value: Any) -> Any:
    """``Phase.TRAIN`` (or ``"TRAIN"``) is shorthand for ``NetStateRule(Phase.TRAIN)``."""
    if isinstance(value, Phase) or value in ("TRAIN", "TEST"):
        return NetStateRule(Phase(value))
    return value


@dsl_class
class NetStateRule:
    """When a layer is part of the net (Caffe's ``NetStateRule``).

    Layers take these in ``include`` / ``exclude``; a bare ``Phase`` is accepted
    there too: ``include=Phase.TEST``.

    Attributes:
        phase: the phase the rule requires.
        min_level, max_level: bounds on the net state's level.
        stage: stages the net state must have.
        not_stage: stages it must not have.
    """

    phase: Phase | None = param(EnumKind(Phase), kw_only=False)
    min_level: int | None = param(INT32)
    max_level: int | None = param(INT32)
    stage: tuple[str, ...] = param(Repeated(STR))
    not_stage: tuple[str, ...] = param(Repeated(STR))

    def met_by(self, phase: Phase, level: int = 0, stages: tuple[str, ...] = ()) -> bool:
        """Whether a net in ``phase`` at ``level`` with ``stages`` meets this rule."""
        return ((self.phase is None or self.phase == phase)
                and (self.min_level is None or level >= self.min_level)
                and (self.max_level is None or level <= self.max_level)
                and all(s in stages for s in self.stage)
                and not any(s in stages for s in self.not_stage))


def rules_keep(include: Sequence[NetStateRule], exclude: Sequence[NetStateRule], phase: Phase,
               level: int = 0, stages: tuple[str, ...] = ()) -> bool:
    """Whether Caffe keeps a layer with these rules in a net of ``phase``, ``level`` and
    ``stages`` (its ``FilterNet``: any include rule met, else no exclude rule met)."""
    if include:
        return any(rule.met_by(phase, level, stages) for rule in include)
    return not any(rule.met_by(phase, level, stages) for rule in exclude)


@dsl_class
class NetState:
    """A net's own state (Caffe's ``NetState``): its level and stages.

    The phase is chosen per net by Caffe's solver; ``level`` and ``stage`` are
    matched against layers' rules.
    """

    phase: Phase | None = param(EnumKind(Phase), kw_only=False)
    level: int | None = param(INT32)
    stage: tuple[str, ...] = param(Repeated(STR))


@dsl_class
class TransformParam:
    """Preprocessing of a data layer (Caffe's ``TransformationParameter``).

    sparknet feeds nets through Input layers, so its data pipeline, not Caffe,
    applies these; a shipped net keeps them on its Input layers.

    Attributes:
        scale: multiplies each value (after the mean is subtracted).
        mirror: flip images horizontally at random.
        crop_size: crop a square of this side (random in TRAIN, centre in TEST).
        crop_h, crop_w: a non-square crop.
        mean_file: a ``mean.binaryproto`` to subtract.
        mean_value: per-channel means to subtract (one, or one per channel).
        force_color, force_gray: decode images with 3 channels / 1 channel.
    """

    scale: float | None = param(REAL)
    mirror: bool | None = param(BOOL)
    crop_size: int | None = param(NON_NEGATIVE)
    crop_h: int | None = param(NON_NEGATIVE)
    crop_w: int | None = param(NON_NEGATIVE)
    mean_file: str | None = param(ANY_STR)
    mean_value: tuple[float, ...] = param(Repeated(REAL))
    force_color: bool | None = param(BOOL)
    force_gray: bool | None = param(BOOL)

    def __attrs_post_init__(self) -> None:
        if self.mean_file is not None and self.mean_value:
            fail(self, "mean_value", "give mean_file or mean_value, not both")
        if self.force_color and self.force_gray:
            fail(self, "force_gray", "force_color and force_gray exclude each other")


@dsl_class
class LossParam:
    """Options of a loss layer (Caffe's ``LossParameter``).

    Attributes:
        ignore_label: a label value whose predictions do not count.
        normalization: what the loss is divided by (Caffe's default: ``VALID``).
        normalize: the deprecated boolean form of ``normalization``.
    """

    ignore_label: int | None = param(INT32)
    normalization: LossNormalization | None = param(EnumKind(LossNormalization))
    normalize: bool | None = param(BOOL)
