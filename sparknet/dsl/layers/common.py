"""Layers that reshape, combine and transform blobs: inner product, normalization,
scaling, element-wise sums, concatenation, slicing, reshaping, softmax ..."""
from __future__ import annotations

import itertools

from sparknet.dsl._fields import (
    BOOL,
    INT32,
    NON_NEGATIVE,
    POSITIVE,
    REAL,
    BlobShapeKind,
    EnumKind,
    Float,
    Int,
    Message,
    Repeated,
    param,
)
from sparknet.dsl.enums import EltwiseOp, Engine, ReductionOp
from sparknet.dsl.layers.base import Layer, Shape, _shape_text, count, layer
from sparknet.dsl.params import Filler, as_filler

__all__ = ["ArgMaxLayer", "BatchNormLayer", "BiasLayer", "ConcatLayer", "EltwiseLayer",
           "EmbedLayer", "FlattenLayer", "InnerProductLayer", "MVNLayer", "ReductionLayer",
           "ReshapeLayer", "ScaleLayer", "SilenceLayer", "SliceLayer", "SoftmaxLayer",
           "SplitLayer", "TileLayer"]

_NUM_AXES = Int(-1, 2**31 - 1, "-1 (to the last axis) or a non-negative integer")


def _filler() -> Filler | None:
    return param(Message(Filler, coerce=as_filler))


@layer("InnerProduct", param="inner_product_param")
class InnerProductLayer(Layer):
    """A fully connected layer: every output sees every input from ``axis`` on.

    Top shape: the bottom's axes before ``axis``, then ``num_output``.

    Attributes:
        num_output: the number of outputs.
        bias_term: learn a bias per output (default: True).
        weight_filler, bias_filler: initialization.
        axis: the first axis flattened into the product (default: 1).
        transpose: store the weight matrix transposed.
    """

    num_output: int = param(POSITIVE, required=True)
    bias_term: bool | None = param(BOOL)
    weight_filler: Filler | None = _filler()
    bias_filler: Filler | None = _filler()
    axis: int | None = param(INT32)
    transpose: bool | None = param(BOOL)

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        axis = self._axis(1 if self.axis is None else self.axis, bottoms[0])
        return ((*bottoms[0][:axis], self.num_output),)


@layer("BatchNorm", param="batch_norm_param", in_place=True)
class BatchNormLayer(Layer):
    """Normalize each channel by batch statistics (follow it with a ``ScaleLayer``).

    This Caffe's BatchNorm does not mask its three statistic blobs from the
    solver itself: give ``params=[ParamSpec(lr_mult=0, decay_mult=0)] * 3``
    when training, as the classic ResNet prototxts do.

    Attributes:
        use_global_stats: use the stored statistics (default: only in TEST).
        moving_average_fraction: decay of the running statistics (.999).
        eps: added to the variance (1e-5).
    """

    use_global_stats: bool | None = param(BOOL)
    moving_average_fraction: float | None = param(REAL)
    eps: float | None = param(Float(lo=0.0, lo_open=True))

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        return (bottoms[0],)


def _check_broadcast(layer: Layer, bottoms: tuple[Shape, ...], axis: int | None,
                     num_axes: int | None) -> None:
    """Scale and Bias: the factor's shape must fit the bottom from ``axis`` on."""
    shape = bottoms[0]
    if len(bottoms) == 2:
        factor = bottoms[1]
        start = 0 if not factor else layer._axis(1 if axis is None else axis, shape)
        if shape[start:start + len(factor)] != factor:
            layer._fail("bottoms", f"'{layer.bottoms[1]}' {_shape_text(factor)} does not "
                        f"match '{layer.bottoms[0]}' {_shape_text(shape)} from axis {start}")
        return
    start = layer._axis(1 if axis is None else axis, shape)
    axes = 1 if num_axes is None else num_axes
    if axes >= 0 and start + axes > len(shape):
        layer._fail("num_axes", f"axis {start} + num_axes {axes} runs past the "
                    f"{len(shape)}-axis bottom {_shape_text(shape)}")


@layer("Scale", param="scale_param", bottoms=(1, 2), in_place=True)
class ScaleLayer(Layer):
    """Multiply by a learned factor (or by a second bottom), broadcast from ``axis``.

    Attributes:
        axis: the first bottom axis the factor covers (default: 1).
        num_axes: how many axes the learned factor spans (default: 1; -1: all).
        filler: initialization of the factor (Caffe's default: constant 1).
        bias_term: also add a learned bias.
        bias_filler: initialization of that bias.
    """

    axis: int | None = param(INT32)
    num_axes: int | None = param(_NUM_AXES)
    filler: Filler | None = _filler()
    bias_term: bool | None = param(BOOL)
    bias_filler: Filler | None = _filler()

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        _check_broadcast(self, bottoms, self.axis, self.num_axes)
        return (bottoms[0],)


@layer("Bias", param="bias_param", bottoms=(1, 2), in_place=True)
class BiasLayer(Layer):
    """Add a learned bias (or a second bottom), broadcast from ``axis``.

    Attributes:
        axis: the first bottom axis the bias covers (default: 1).
        num_axes: how many axes the learned bias spans (default: 1; -1: all).
        filler: initialization of the bias (Caffe's default: constant 0).
    """

    axis: int | None = param(INT32)
    num_axes: int | None = param(_NUM_AXES)
    filler: Filler | None = _filler()

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        _check_broadcast(self, bottoms, self.axis, self.num_axes)
        return (bottoms[0],)


@layer("Eltwise", param="eltwise_param", bottoms=(2, None), in_place=True)
class EltwiseLayer(Layer):
    """Element-wise product, (weighted) sum or maximum of equally shaped bottoms.

    Attributes:
        operation: ``EltwiseOp.SUM`` (Caffe's default), ``PROD`` or ``MAX``.
        coeff: one weight per bottom, for SUM only.
        stable_prod_grad: the slower, stabler gradient for PROD.
    """

    operation: EltwiseOp | None = param(EnumKind(EltwiseOp))
    coeff: tuple[float, ...] = param(Repeated(REAL))
    stable_prod_grad: bool | None = param(BOOL)

    def _check(self) -> None:
        if self.coeff:
            if self.operation not in (None, EltwiseOp.SUM):
                self._fail("coeff", "coefficients are for SUM only")
            if len(self.coeff) != len(self.bottoms):
                self._fail("coeff", f"needs one coefficient per bottom ({len(self.bottoms)}), "
                           f"got {len(self.coeff)}")

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        for name, shape in zip(self.bottoms[1:], bottoms[1:]):
            if shape != bottoms[0]:
                self._fail("bottoms", f"'{name}' {_shape_text(shape)} and "
                           f"'{self.bottoms[0]}' {_shape_text(bottoms[0])} differ in shape")
        return (bottoms[0],)


@layer("Concat", param="concat_param", bottoms=(1, None))
class ConcatLayer(Layer):
    """Join bottoms along ``axis``; all other dimensions must agree.

    Attributes:
        axis: the axis joined along (default: 1, channels).
        concat_dim: the deprecated, non-negative spelling of ``axis``.
    """

    axis: int | None = param(INT32)
    concat_dim: int | None = param(NON_NEGATIVE)

    def _check(self) -> None:
        if self.axis is not None and self.concat_dim is not None:
            self._fail("concat_dim", "give axis or concat_dim, not both")

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        first = bottoms[0]
        field = "concat_dim" if self.concat_dim is not None else "axis"
        axis = self._axis(self.concat_dim if self.concat_dim is not None else
                          1 if self.axis is None else self.axis, first, field)
        total = 0
        for name, shape in zip(self.bottoms, bottoms):
            if len(shape) != len(first) or any(
                    a != b for i, (a, b) in enumerate(zip(shape, first)) if i != axis):
                self._fail("bottoms", f"'{name}' {_shape_text(shape)} does not fit "
                           f"'{self.bottoms[0]}' {_shape_text(first)}: only axis {axis} "
                           "may differ")
            total += shape[axis]
        return ((*first[:axis], total, *first[axis + 1:]),)


@layer("Slice", param="slice_param", bottoms=(1, 1), tops=(1, None))
class SliceLayer(Layer):
    """Cut the bottom along ``axis`` into the tops, at ``slice_point`` or evenly.

    Attributes:
        axis: the axis cut (default: 1).
        slice_point: where each top after the first begins (one fewer than
            the tops); without it the axis is split evenly.
        slice_dim: the deprecated, non-negative spelling of ``axis``.
    """

    axis: int | None = param(INT32)
    slice_point: tuple[int, ...] = param(Repeated(POSITIVE))
    slice_dim: int | None = param(NON_NEGATIVE)

    def _check(self) -> None:
        if self.axis is not None and self.slice_dim is not None:
            self._fail("slice_dim", "give axis or slice_dim, not both")
        if self.slice_point:
            if len(self.slice_point) != len(self.tops) - 1:
                self._fail("slice_point", f"needs one point fewer than the tops "
                           f"({len(self.tops)}), got {len(self.slice_point)}")
            if list(self.slice_point) != sorted(set(self.slice_point)):
                self._fail("slice_point", f"must increase strictly, got {self.slice_point}")

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        shape = bottoms[0]
        field = "slice_dim" if self.slice_dim is not None else "axis"
        axis = self._axis(self.slice_dim if self.slice_dim is not None else
                          1 if self.axis is None else self.axis, shape, field)
        size = shape[axis]
        if self.slice_point:
            if self.slice_point[-1] >= size:
                self._fail("slice_point", f"point {self.slice_point[-1]} is not inside "
                           f"axis {axis} of {_shape_text(shape)}")
            edges = (0, *self.slice_point, size)
            sizes = [b - a for a, b in itertools.pairwise(edges)]
        else:
            if size % len(self.tops):
                self._fail("tops", f"{len(self.tops)} tops do not divide axis {axis} of "
                           f"{_shape_text(shape)} evenly; give slice_point")
            sizes = [size // len(self.tops)] * len(self.tops)
        return tuple((*shape[:axis], n, *shape[axis + 1:]) for n in sizes)


@layer("Split", bottoms=(1, 1), tops=(1, None))
class SplitLayer(Layer):
    """Copy the bottom to several tops (Caffe inserts these itself where needed)."""

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        return (bottoms[0],) * len(self.tops)


@layer("Flatten", param="flatten_param")
class FlattenLayer(Layer):
    """Merge axes ``axis`` to ``end_axis`` into one.

    Attributes:
        axis: the first axis merged (default: 1).
        end_axis: the last axis merged (default: -1, the last).
    """

    axis: int | None = param(INT32)
    end_axis: int | None = param(INT32)

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        shape = bottoms[0]
        start = self._axis(1 if self.axis is None else self.axis, shape)
        end = self._axis(-1 if self.end_axis is None else self.end_axis, shape, "end_axis")
        if end < start:
            self._fail("end_axis", f"axis {end} comes before the start axis {start}")
        return ((*shape[:start], count(shape, start, end + 1), *shape[end + 1:]),)


@layer("Reshape", param="reshape_param")
class ReshapeLayer(Layer):
    """Give the bottom's data a new shape (no copy).

    In ``shape``, ``0`` copies the bottom's dimension at that position and
    ``-1`` (at most once) is inferred from the count.

    Attributes:
        shape: the new shape of axes ``axis`` to ``axis + num_axes``.
        axis: the first axis replaced (default: 0; negative counts from the end).
        num_axes: how many axes are replaced (default: -1, all the rest).
    """

    shape: Shape = param(BlobShapeKind(min_dim=-1), required=True)
    axis: int | None = param(INT32)
    num_axes: int | None = param(_NUM_AXES)

    def _check(self) -> None:
        if self.shape.count(-1) > 1:
            self._fail("shape", f"at most one dimension may be -1, got {self.shape}")

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        bottom = bottoms[0]
        axis = 0 if self.axis is None else self.axis
        start = axis if axis >= 0 else len(bottom) + axis + 1
        if not 0 <= start <= len(bottom):
            self._fail("axis", f"axis {axis} is out of range for {_shape_text(bottom)}")
        num_axes = -1 if self.num_axes is None else self.num_axes
        end = len(bottom) if num_axes == -1 else start + num_axes
        if end > len(bottom):
            self._fail("num_axes", f"axis {start} + num_axes {num_axes} runs past "
                       f"{_shape_text(bottom)}")
        new = list(self.shape)
        for i, dim in enumerate(new):
            if dim == 0:
                if start + i >= len(bottom):
                    self._fail("shape", f"dimension {i} is 0 (copy), but "
                               f"{_shape_text(bottom)} has no axis {start + i} to copy")
                new[i] = bottom[start + i]
        top = [*bottom[:start], *new, *bottom[end:]]
        if -1 in new:
            known = count(tuple(d for d in top if d != -1))
            if known == 0 or count(bottom) % known:
                self._fail("shape", f"{self.shape} cannot hold the {count(bottom)} values "
                           f"of {_shape_text(bottom)}")
            top[top.index(-1)] = count(bottom) // known
        if count(tuple(top)) != count(bottom):
            self._fail("shape", f"{_shape_text(tuple(top))} holds {count(tuple(top))} values, "
                       f"{_shape_text(bottom)} holds {count(bottom)}")
        return (tuple(top),)


@layer("Softmax", param="softmax_param", in_place=True)
class SoftmaxLayer(Layer):
    """Softmax over ``axis``.

    Attributes:
        axis: the axis normalized over (default: 1).
        engine: Caffe's or cuDNN's implementation.
    """

    engine: Engine | None = param(EnumKind(Engine))
    axis: int | None = param(INT32)

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        self._axis(1 if self.axis is None else self.axis, bottoms[0])
        return (bottoms[0],)


@layer("ArgMax", param="argmax_param")
class ArgMaxLayer(Layer):
    """Indices (and optionally values) of the ``top_k`` largest entries.

    Without ``axis``, per example over everything else: top shape
    ``(N, 2 if out_max_val else 1, top_k)`` (padded with 1s to the bottom's
    axes). With ``axis``: the bottom's shape with that axis set to ``top_k``.

    Attributes:
        out_max_val: output the values too (or only, with ``axis``).
        top_k: how many (default: 1).
        axis: the axis to search along.
    """

    out_max_val: bool | None = param(BOOL)
    top_k: int | None = param(POSITIVE)
    axis: int | None = param(INT32)

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        shape, k = bottoms[0], self.top_k or 1
        if self.axis is not None:
            axis = self._axis(self.axis, shape)
            if k > shape[axis]:
                self._fail("top_k", f"top_k {k} exceeds axis {axis} of {_shape_text(shape)}")
            return ((*shape[:axis], k, *shape[axis + 1:]),)
        if k > count(shape, 1):
            self._fail("top_k", f"top_k {k} exceeds the {count(shape, 1)} values per example "
                       f"of {_shape_text(shape)}")
        top = [1] * max(3, len(shape))
        top[0], top[1], top[2] = shape[0], 2 if self.out_max_val else 1, k
        return (tuple(top),)


@layer("Embed", param="embed_param")
class EmbedLayer(Layer):
    """Look up a learned vector for each integer in the bottom (word embeddings).

    Top shape: the bottom's, plus ``num_output``.

    Attributes:
        num_output: the size of each vector.
        input_dim: the vocabulary size (inputs are in ``[0, input_dim)``).
        bias_term: learn a bias (default: True).
        weight_filler, bias_filler: initialization.
    """

    num_output: int = param(POSITIVE, required=True)
    input_dim: int = param(POSITIVE, required=True)
    bias_term: bool | None = param(BOOL)
    weight_filler: Filler | None = _filler()
    bias_filler: Filler | None = _filler()

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        return ((*bottoms[0], self.num_output),)


@layer("Silence", bottoms=(1, None), tops=(0, 0))
class SilenceLayer(Layer):
    """Consume blobs nobody else uses, so Caffe does not report them as outputs."""

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        return ()


@layer("Tile", param="tile_param")
class TileLayer(Layer):
    """Repeat the bottom ``tiles`` times along ``axis``.

    Attributes:
        axis: default 1.
        tiles: how many copies.
    """

    axis: int | None = param(INT32)
    tiles: int = param(POSITIVE, required=True)

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        shape = bottoms[0]
        axis = self._axis(1 if self.axis is None else self.axis, shape)
        return ((*shape[:axis], shape[axis] * self.tiles, *shape[axis + 1:]),)


@layer("Reduction", param="reduction_param")
class ReductionLayer(Layer):
    """Sum, absolute sum, sum of squares or mean of all axes from ``axis`` on.

    Attributes:
        operation: ``ReductionOp.SUM`` (Caffe's default), ``ASUM``, ``SUMSQ``, ``MEAN``.
        axis: the first axis reduced (default: 0, giving a scalar).
        coeff: multiplies the result (default: 1).
    """

    operation: ReductionOp | None = param(EnumKind(ReductionOp))
    axis: int | None = param(INT32)
    coeff: float | None = param(REAL)

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        axis = self._axis(0 if self.axis is None else self.axis, bottoms[0])
        return (bottoms[0][:axis],)


@layer("MVN", param="mvn_param")
class MVNLayer(Layer):
    """Mean-variance normalization of each example (and channel).

    Attributes:
        normalize_variance: divide by the standard deviation too (default: True).
        across_channels: normalize over channels as well.
        eps: added to the deviation.
    """

    normalize_variance: bool | None = param(BOOL)
    across_channels: bool | None = param(BOOL)
    eps: float | None = param(Float(lo=0.0, lo_open=True))

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        return (bottoms[0],)
