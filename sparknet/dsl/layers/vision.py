"""Layers over images: convolution, deconvolution, pooling, local response
normalization, cropping."""
from __future__ import annotations

from sparknet.dsl._fields import (
    BOOL,
    INT32,
    NON_NEGATIVE,
    POSITIVE,
    REAL,
    EnumKind,
    Message,
    Repeated,
    Spatial,
    param,
    per_axis,
)
from sparknet.dsl.enums import Engine, NormRegion, Pooling
from sparknet.dsl.layers.base import Layer, Shape, _shape_text, layer
from sparknet.dsl.params import Filler, as_filler

__all__ = ["ConvolutionLayer", "CropLayer", "DeconvolutionLayer", "LRNLayer", "PoolingLayer"]

_Spatial = int | tuple[int, ...]


def _filler() -> Filler | None:
    return param(Message(Filler, coerce=as_filler))


@layer("Convolution", param="convolution_param", bottoms=(1, None), tops=(1, None))
class ConvolutionLayer(Layer):
    """Convolution with learned filters; one top per bottom, all bottoms alike.

    Output size per spatial axis, as Caffe computes it::

        (in + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1

    ``kernel``, ``stride``, ``pad`` and ``dilation`` take one value for every
    spatial axis (written ``kernel_size: 5``) or an ``(h, w)`` pair (written
    ``kernel_h``/``kernel_w``); N-d convolution takes one value per axis.

    Attributes:
        num_output: the number of filters (output channels).
        kernel: the filter size.
        stride: the step between filter positions (Caffe's default: 1).
        pad: zeros added on each side (default: 0).
        dilation: the spacing of filter taps (default: 1).
        group: split channels into this many independent groups (default: 1).
        bias_term: learn a bias per output (default: True).
        weight_filler, bias_filler: initialization (``"xavier"`` is shorthand
            for ``Filler.xavier()``).
        engine: Caffe's or cuDNN's implementation.
        axis: the channel axis (default: 1); spatial axes follow it.
        force_nd_im2col: use the N-d code path even for 2-D.
    """

    num_output: int = param(POSITIVE, required=True)
    kernel: _Spatial = param(Spatial("kernel_size", "kernel_h", "kernel_w", repeated=True),
                             required=True)
    stride: _Spatial | None = param(Spatial("stride", "stride_h", "stride_w", repeated=True))
    pad: _Spatial | None = param(Spatial("pad", "pad_h", "pad_w", repeated=True, lo=0))
    dilation: _Spatial | None = param(Spatial("dilation", None, None, repeated=True))
    group: int | None = param(POSITIVE)
    bias_term: bool | None = param(BOOL)
    weight_filler: Filler | None = _filler()
    bias_filler: Filler | None = _filler()
    engine: Engine | None = param(EnumKind(Engine))
    axis: int | None = param(INT32)
    force_nd_im2col: bool | None = param(BOOL)

    def _check(self) -> None:
        group = self.group or 1
        if self.num_output % group:
            self._fail("group", f"num_output ({self.num_output}) must be a multiple of "
                       f"group ({group})")

    def _geometry(self, shape: Shape) -> tuple[int, list[int], list[int], list[int], list[int]]:
        """(channel axis, kernel, stride, pad, dilation) for a bottom of ``shape``."""
        axis = self._axis(1 if self.axis is None else self.axis, shape)
        axes = len(shape) - axis - 1
        if axes < 1:
            self._fail("axis", f"leaves no spatial axis in the bottom {_shape_text(shape)}")
        values = []
        for field, default in (("kernel", None), ("stride", 1), ("pad", 0), ("dilation", 1)):
            value = getattr(self, field)
            expanded = per_axis(value, axes, default)
            if expanded is None:
                self._fail(field, f"gives {len(value)} values, but the bottom "
                           f"{_shape_text(shape)} has {axes} spatial axes")
            values.append(expanded)
        channels = shape[axis]
        if channels % (self.group or 1):
            self._fail("group", f"the {channels} input channels are not a multiple of "
                       f"group ({self.group})")
        return axis, *values

    def _output_size(self, size: int, kernel: int, stride: int, pad: int,
                     dilation: int, axis: int) -> int:
        extent = dilation * (kernel - 1) + 1
        if extent > size + 2 * pad:
            what = f"kernel {kernel}" + (f" (extent {extent} with dilation {dilation})"
                                         if dilation > 1 else "")
            self._fail("kernel", f"{what} is larger than the padded input on spatial "
                       f"axis {axis}: {size} + 2 * {pad} = {size + 2 * pad}")
        return (size + 2 * pad - extent) // stride + 1

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        first = bottoms[0]
        for name, shape in zip(self.bottoms[1:], bottoms[1:]):
            if shape != first:
                self._fail("bottoms", f"all bottoms must have one shape: '{name}' is "
                           f"{_shape_text(shape)}, '{self.bottoms[0]}' {_shape_text(first)}")
        axis, kernel, stride, pad, dilation = self._geometry(first)
        spatial = tuple(self._output_size(size, *geometry, i) for i, (size, *geometry) in
                        enumerate(zip(first[axis + 1:], kernel, stride, pad, dilation)))
        return ((*first[:axis], self.num_output, *spatial),) * len(self.tops)


@layer("Deconvolution", param="convolution_param", bottoms=(1, None), tops=(1, None))
class DeconvolutionLayer(ConvolutionLayer):
    """Transposed convolution (upsampling); the fields are those of convolution.

    Output size per spatial axis::

        stride * (in - 1) + dilation * (kernel - 1) + 1 - 2 * pad

    A ``Filler.bilinear()`` weight filler with ``group == num_output`` and
    ``lr_mult=0`` gives fixed bilinear upsampling (as in FCN).
    """

    def _output_size(self, size: int, kernel: int, stride: int, pad: int,
                     dilation: int, axis: int) -> int:
        out = stride * (size - 1) + dilation * (kernel - 1) + 1 - 2 * pad
        if out < 1:
            self._fail("pad", f"pad {pad} leaves no output on spatial axis {axis} "
                       f"(input {size}, kernel {kernel}, stride {stride})")
        return out


@layer("Pooling", param="pooling_param", bottoms=(1, 1), tops=(1, 2))
class PoolingLayer(Layer):
    """Max, average or stochastic pooling over 2-D windows of (N, C, H, W) input.

    Output size per spatial axis, as this Caffe computes it (``ceil_mode``
    defaults to True, Caffe's classic rounding)::

        out = ceil((in + 2 * pad - kernel) / stride) + 1     # floor if not ceil_mode
        if pad and (out - 1) * stride >= in + pad: out -= 1   # last window starts inside

    ``global_pooling=True`` pools each channel to 1x1 (no kernel then).

    Attributes:
        pooling: ``Pooling.MAX`` (Caffe's default), ``AVE`` or ``STOCHASTIC``.
        kernel, stride, pad: one value or an ``(h, w)`` pair each.
        global_pooling: pool the whole input.
        ceil_mode: round the output size up (default) or down (BVLC's
            ``round_mode: FLOOR``, which this Caffe lacks).
        engine: Caffe's or cuDNN's implementation.
    """

    pooling: Pooling | None = param(EnumKind(Pooling), proto="pool")
    kernel: _Spatial | None = param(Spatial("kernel_size", "kernel_h", "kernel_w",
                                            repeated=False))
    stride: _Spatial | None = param(Spatial("stride", "stride_h", "stride_w", repeated=False))
    pad: _Spatial | None = param(Spatial("pad", "pad_h", "pad_w", repeated=False, lo=0))
    engine: Engine | None = param(EnumKind(Engine))
    global_pooling: bool | None = param(BOOL)
    ceil_mode: bool | None = param(BOOL)

    def _check(self) -> None:
        pad, stride = per_axis(self.pad, 2, 0), per_axis(self.stride, 2, 1)
        if self.global_pooling:
            if self.kernel is not None:
                self._fail("kernel", "global pooling takes its kernel from the input; "
                           "give no kernel")
            if any(pad) or stride != [1, 1]:
                self._fail("pad" if any(pad) else "stride",
                           "global pooling allows only pad 0 and stride 1")
        elif self.kernel is None:
            self._fail("kernel", "is required (unless global_pooling=True)")
        method = self.pooling or Pooling.MAX
        if any(pad):
            if method is Pooling.STOCHASTIC:
                self._fail("pad", "padding works only with MAX and AVE pooling")
            if self.kernel is not None:
                for p, k in zip(pad, per_axis(self.kernel, 2, 0)):
                    if p >= k:
                        self._fail("pad", f"pad {p} must be smaller than the kernel ({k})")
        if len(self.tops) == 2 and method is not Pooling.MAX:
            self._fail("tops", "only MAX pooling has a second top (the argmax mask)")

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        shape = bottoms[0]
        if len(shape) != 4:
            self._fail("bottoms", f"pooling needs a 4-axis (N, C, H, W) bottom, "
                       f"'{self.bottoms[0]}' is {_shape_text(shape)}")
        kernel = list(shape[2:]) if self.global_pooling else per_axis(self.kernel, 2, 0)
        pad, stride = per_axis(self.pad, 2, 0), per_axis(self.stride, 2, 1)
        out = []
        for axis, (size, k, p, s) in enumerate(zip(shape[2:], kernel, pad, stride)):
            if k > size + 2 * p:
                self._fail("kernel", f"kernel {k} is larger than the padded input on "
                           f"spatial axis {axis}: {size} + 2 * {p} = {size + 2 * p}")
            span = size + 2 * p - k
            n = (-(-span // s) if self.ceil_mode is not False else span // s) + 1
            if any(pad) and (n - 1) * s >= size + p:
                n -= 1
            out.append(n)
        return ((*shape[:2], *out),) * len(self.tops)


@layer("LRN", param="lrn_param", bottoms=(1, 1), tops=(1, 1))
class LRNLayer(Layer):
    """Local response normalization (AlexNet, GoogLeNet) of (N, C, H, W) input.

    Attributes:
        local_size: the window, an odd number (Caffe's default: 5).
        alpha, beta, k: ``x / (k + alpha / n * sum(x^2)) ^ beta``.
        norm_region: across channels (default) or within each channel.
        engine: Caffe's or cuDNN's implementation.
    """

    local_size: int | None = param(POSITIVE)
    alpha: float | None = param(REAL)
    beta: float | None = param(REAL)
    norm_region: NormRegion | None = param(EnumKind(NormRegion))
    k: float | None = param(REAL)
    engine: Engine | None = param(EnumKind(Engine))

    def _check(self) -> None:
        if self.local_size is not None and self.local_size % 2 == 0:
            self._fail("local_size", f"must be odd, got {self.local_size}")

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        if len(bottoms[0]) != 4:
            self._fail("bottoms", f"LRN needs a 4-axis (N, C, H, W) bottom, "
                       f"'{self.bottoms[0]}' is {_shape_text(bottoms[0])}")
        return (bottoms[0],)


@layer("Crop", param="crop_param", bottoms=(2, 2), tops=(1, 1))
class CropLayer(Layer):
    """Crop the first bottom to the size of the second, from ``axis`` on (FCN).

    Attributes:
        axis: the first axis cropped (Caffe's default: 2, the height).
        offset: where the crop starts: one value for every cropped axis, or one
            per cropped axis (default: 0).
    """

    axis: int | None = param(INT32)
    offset: tuple[int, ...] = param(Repeated(NON_NEGATIVE))

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        data, like = bottoms
        start = self._axis(2 if self.axis is None else self.axis, data)
        cropped = len(data) - start
        if len(self.offset) > 1 and len(self.offset) != cropped:
            self._fail("offset", f"gives {len(self.offset)} offsets for the {cropped} "
                       f"cropped axes of {_shape_text(data)}")
        if len(like) < len(data):
            self._fail("bottoms", f"the reference '{self.bottoms[1]}' {_shape_text(like)} "
                       f"has fewer axes than '{self.bottoms[0]}' {_shape_text(data)}")
        shape = list(data)
        for i in range(start, len(data)):
            offset = (self.offset[0] if len(self.offset) == 1 else
                      self.offset[i - start] if self.offset else 0)
            if data[i] - offset < like[i]:
                self._fail("offset", f"cropping axis {i} to {like[i]} at offset {offset} "
                           f"runs past '{self.bottoms[0]}' {_shape_text(data)}")
            shape[i] = like[i]
        return (tuple(shape),)
