"""Property: random valid nets round-trip exactly, and their DSL shapes are the
shapes Caffe computes when it builds them."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparknet.dsl import (
    AccuracyLayer,
    BatchNormLayer,
    ConcatLayer,
    ConvolutionLayer,
    CropLayer,
    DeconvolutionLayer,
    DropoutLayer,
    EltwiseLayer,
    EltwiseOp,
    FlattenLayer,
    InnerProductLayer,
    InputLayer,
    LRNLayer,
    NetParam,
    NormRegion,
    Phase,
    Pooling,
    PoolingLayer,
    ReLULayer,
    ReshapeLayer,
    ScaleLayer,
    SigmoidLayer,
    SliceLayer,
    SoftmaxLayer,
    SoftmaxWithLoss,
    TanHLayer,
)
from sparknet.dsl.layers import Layer
from sparknet.proto.loader import parse_net

Shape = tuple[int, ...]


def spatial(draw, values: list[int]):
    """One value, or an (h, w) pair: both spellings Caffe reads."""
    if values[0] == values[1] and draw(st.booleans()):
        return values[0]
    return tuple(values)


@st.composite
def conv_layer(draw, name: str, bottom: str, shape: Shape) -> Layer:
    channels, sizes = shape[1], shape[2:]
    group = draw(st.sampled_from([g for g in (1, 2, 3) if channels % g == 0]))
    outputs = group * draw(st.integers(1, 3))
    pad = [draw(st.integers(0, 2)) for _ in sizes]
    dilation = draw(st.integers(1, 2))
    kernel = [draw(st.integers(1, min(5, (s + 2 * p - 1) // dilation + 1)))
              for s, p in zip(sizes, pad)]
    stride = [draw(st.integers(1, 3)) for _ in sizes]
    if draw(st.booleans()) and max(sizes) <= 8:
        pad = [min(p, (st_ * (s - 1) + dilation * (k - 1)) // 2)
               for p, st_, s, k in zip(pad, stride, sizes, kernel)]
        return DeconvolutionLayer(name, [bottom], num_output=outputs, group=group,
                                  kernel=spatial(draw, kernel), stride=spatial(draw, stride),
                                  pad=spatial(draw, pad), dilation=dilation,
                                  bias_term=draw(st.sampled_from([None, False])))
    return ConvolutionLayer(name, [bottom], num_output=outputs, group=group,
                            kernel=spatial(draw, kernel), stride=spatial(draw, stride),
                            pad=spatial(draw, pad),
                            dilation=draw(st.sampled_from([None, dilation])) if dilation == 1
                            else dilation, weight_filler=draw(st.sampled_from(
                                [None, "xavier", "msra"])))


@st.composite
def pool_layer(draw, name: str, bottom: str, shape: Shape) -> Layer:
    method = draw(st.sampled_from([None, Pooling.MAX, Pooling.AVE, Pooling.STOCHASTIC]))
    if draw(st.integers(0, 5)) == 0:
        return PoolingLayer(name, [bottom], pooling=method, global_pooling=True)
    sizes = shape[2:]
    kernel = [draw(st.integers(1, min(4, s))) for s in sizes]
    pad = [0, 0] if method is Pooling.STOCHASTIC else \
        [draw(st.integers(0, k - 1)) for k in kernel]
    stride = [draw(st.integers(1, 3)) for _ in sizes]
    return PoolingLayer(name, [bottom], pooling=method, kernel=spatial(draw, kernel),
                        stride=spatial(draw, stride),
                        pad=None if not any(pad) and draw(st.booleans()) else spatial(draw, pad),
                        ceil_mode=draw(st.sampled_from([None, True, False])))


def infer(layer: Layer, shapes: dict[str, Shape]) -> None:
    for top, shape in zip(layer.tops, layer.infer(tuple(shapes[b] for b in layer.bottoms))):
        shapes[top] = shape


@st.composite
def random_nets(draw) -> NetParam:
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    h, w = draw(st.integers(3, 12)), draw(st.integers(3, 12))
    layers: list[Layer] = [InputLayer("data", shape=(n, c, h, w))]
    shapes: dict[str, Shape] = {"data": (n, c, h, w)}
    current = "data"
    shared = False  # another layer reads `current` too: no in-place layer on it then

    def add(*new: Layer) -> None:
        for layer in new:
            layers.append(layer)
            infer(layer, shapes)

    for i in range(draw(st.integers(1, 6))):
        name, shape = f"l{i}", shapes[current]
        kinds = ["conv", "pool", "relu", "neuron", "lrn", "eltwise", "concat", "bn"]
        if shape[1] >= 2:
            kinds.append("slice")
        if min(shape[2:]) >= 2:
            kinds.append("crop")
        kind = draw(st.sampled_from(kinds))
        if kind == "conv":
            add(draw(conv_layer(name, current, shape)))
        elif kind == "pool":
            add(draw(pool_layer(name, current, shape)))
        elif kind == "relu":
            in_place = not shared and draw(st.booleans())
            add(ReLULayer(name, [current], tops=[current] if in_place else None,
                          negative_slope=draw(st.none() | st.floats(0, 1))))
            name = current if in_place else name
        elif kind == "neuron":
            cls = draw(st.sampled_from([SigmoidLayer, TanHLayer]))
            add(cls(name, [current]))
        elif kind == "lrn":
            add(LRNLayer(name, [current], local_size=draw(st.sampled_from([None, 1, 3, 5])),
                         norm_region=draw(st.sampled_from(list(NormRegion)))))
        elif kind == "eltwise":
            add(EltwiseLayer(name, [current, current],
                             operation=draw(st.sampled_from([None, *EltwiseOp]))))
        elif kind == "concat":
            add(ConcatLayer(name, [current, current], axis=draw(st.sampled_from([None, 0, 1,
                                                                                 -1]))))
        elif kind == "crop":
            add(PoolingLayer(f"{name}_ref", [current], kernel=2, stride=2, pad=None))
            ref = shapes[f"{name}_ref"]
            room = [a - b for a, b in zip(shape[2:], ref[2:])]
            offsets = ([draw(st.integers(0, r)) for r in room] if draw(st.booleans())
                       else [draw(st.integers(0, min(room)))])
            add(CropLayer(name, [current, f"{name}_ref"], axis=draw(st.sampled_from([None, 2])),
                          offset=offsets))
        elif kind == "bn":
            top = name if shared else current
            add(BatchNormLayer(f"{name}_bn", [current], tops=[top]),
                ScaleLayer(name, [top], tops=[top], bias_term=draw(st.booleans())))
            name = top
        else:  # slice
            point = draw(st.integers(1, shape[1] - 1))
            add(SliceLayer(name, [current], tops=[name, f"{name}_rest"], slice_point=[point]))
        current, shared = name, False
        if draw(st.integers(0, 4)) == 0:  # a dead end that exists in one phase only
            phase = draw(st.sampled_from(list(Phase)))
            add(ReLULayer(f"{name}_only_{phase.lower()}", [current], include=phase))
            shared = True

    # A classifier head on the 4-D features.
    if draw(st.booleans()):
        add(FlattenLayer("flat", [current]))
        current = "flat"
    add(InnerProductLayer("fc", [current], num_output=draw(st.integers(2, 5))),
        DropoutLayer("drop", ["fc"], tops=["fc"], dropout_ratio=0.5))
    head = draw(st.sampled_from(["loss", "softmax", "reshape"]))
    if head == "loss":
        add(InputLayer("label", shape=(shapes["fc"][0], 1)),
            AccuracyLayer("accuracy", ["fc", "label"], include=Phase.TEST),
            SoftmaxWithLoss("loss", ["fc", "label"]))
    elif head == "softmax":
        add(SoftmaxLayer("prob", ["fc"]))
    else:
        add(ReshapeLayer("reshaped", ["fc"], shape=(0, -1, 1)))
    return NetParam("random", *layers)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(random_nets())
def test_random_nets_round_trip_and_have_caffes_shapes(net):
    from sparknet.dsl import LrPolicy, SolverParam
    from sparknet.engine import CaffeNet

    proto = net.to_proto()
    again = NetParam.from_proto(proto)
    assert again == net
    assert again.to_proto() == proto
    assert parse_net(net.to_prototxt()) == proto

    engine = CaffeNet(SolverParam(net, base_lr=0.01, lr_policy=LrPolicy.fixed()))
    for phase in ("TRAIN", "TEST"):
        caffe = {blob: shape for blob, shape in engine.blob_shapes(phase).items()
                 if "_split_" not in blob}
        assert net.shapes(phase) == caffe, phase
