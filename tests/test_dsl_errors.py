"""Invalid net definitions fail in Python, at the call that makes the mistake,
naming the layer and the field -- before anything reaches Caffe."""
from __future__ import annotations

import sys
import textwrap

import pytest

from sparknet.dsl import (
    AccuracyLayer,
    ConcatLayer,
    ConvolutionLayer,
    CropLayer,
    DataLayer,
    DeconvolutionLayer,
    DropoutLayer,
    EltwiseLayer,
    EltwiseOp,
    Filler,
    ImageDataLayer,
    InnerProductLayer,
    InputLayer,
    LRNLayer,
    LrPolicy,
    NetDefinitionError,
    NetParam,
    Phase,
    Pooling,
    PoolingLayer,
    RawLayer,
    ReLULayer,
    ReshapeLayer,
    ScaleLayer,
    SliceLayer,
    SoftmaxWithLoss,
    SolverParam,
    SolverType,
)


def data(shape=(2, 3, 8, 8)):
    return InputLayer("data", shape=shape)


def label(shape=(2, 1)):
    return InputLayer("label", shape=shape)


def net(*layers):
    return NetParam("bad", data(), label(), *layers)


def conv(name="conv", bottom="data", **kw):
    kw = {"num_output": 4, "kernel": 3, **kw}
    return ConvolutionLayer(name, [bottom], **kw)


# (id, the mistake, the layer it names, the field it names)
LAYER_MISTAKES = [
    ("typo'd keyword", lambda: ConvolutionLayer("conv1", ["data"], num_ouput=20, kernel=5),
     "conv1", "num_ouput"),
    ("wrong type", lambda: InnerProductLayer("ip1", ["pool2"], num_output="500"),
     "ip1", "num_output"),
    ("zero size", lambda: conv("conv1", num_output=0), "conv1", "num_output"),
    ("negative kernel", lambda: conv("conv1", kernel=-3), "conv1", "kernel"),
    ("bool for an int", lambda: conv("conv1", stride=True), "conv1", "stride"),
    ("missing required field", lambda: ConvolutionLayer("conv1", ["data"], num_output=20),
     "conv1", "kernel"),
    ("too few bottoms", lambda: SoftmaxWithLoss("loss", ["ip2"]), "loss", "bottoms"),
    ("too many bottoms", lambda: ReLULayer("relu1", ["ip1", "ip2"]), "relu1", "bottoms"),
    ("group does not divide num_output", lambda: conv("conv2", num_output=10, group=3),
     "conv2", "group"),
    ("pooling pad not below kernel",
     lambda: PoolingLayer("pool1", ["conv1"], kernel=2, stride=2, pad=2), "pool1", "pad"),
    ("global pooling with a kernel",
     lambda: PoolingLayer("pool5", ["x"], global_pooling=True, kernel=7), "pool5", "kernel"),
    ("pooling without kernel", lambda: PoolingLayer("pool1", ["x"], stride=2),
     "pool1", "kernel"),
    ("unknown enum value", lambda: PoolingLayer("pool1", ["x"], pooling="MIN", kernel=2),
     "pool1", "pooling"),
    ("stochastic pooling padded",
     lambda: PoolingLayer("pool1", ["x"], pooling=Pooling.STOCHASTIC, kernel=3, pad=1),
     "pool1", "pad"),
    ("dropout ratio 1", lambda: DropoutLayer("drop6", ["fc6"], dropout_ratio=1.0),
     "drop6", "dropout_ratio"),
    ("even LRN window", lambda: LRNLayer("norm1", ["pool1"], local_size=4), "norm1",
     "local_size"),
    ("eltwise coefficients per bottom",
     lambda: EltwiseLayer("sum", ["a", "b"], coeff=[1.0]), "sum", "coeff"),
    ("eltwise coefficients for PROD",
     lambda: EltwiseLayer("prod", ["a", "b"], operation=EltwiseOp.PROD, coeff=[1, 1]),
     "prod", "coeff"),
    ("slice points not increasing",
     lambda: SliceLayer("slice", ["x"], tops=["a", "b", "c"], slice_point=[4, 2]),
     "slice", "slice_point"),
    ("reshape with two -1", lambda: ReshapeLayer("flat", ["x"], shape=(-1, -1)),
     "flat", "shape"),
    ("in place where Caffe cannot", lambda: InnerProductLayer("ip1", ["x"], tops=["x"],
                                                              num_output=3), "ip1", "tops"),
    ("include and exclude together",
     lambda: ReLULayer("relu", ["x"], include=Phase.TRAIN, exclude=Phase.TEST),
     "relu", "exclude"),
    ("a loss weight per top", lambda: SoftmaxWithLoss("loss", ["a", "b"], loss_weight=[1, 0.5]),
     "loss", "loss_weight"),
    ("propagate_down per bottom",
     lambda: SoftmaxWithLoss("loss", ["a", "b"], propagate_down=[True]), "loss",
     "propagate_down"),
    ("misspelled filler", lambda: conv("conv1", weight_filler="xaiver"), "conv1",
     "weight_filler"),
    ("second SoftmaxWithLoss top (this Caffe cannot build it)",
     lambda: SoftmaxWithLoss("loss", ["a", "b"], tops=["loss", "prob"]), "loss", "tops"),
    ("layer type this Caffe lacks", lambda: RawLayer("act", ["x"], type="Swish"),
     "act", "type"),
    ("data layer without source", lambda: DataLayer("mnist", tops=["data", "label"],
                                                     batch_size=64), "mnist", "source"),
    ("input with a zero dimension", lambda: InputLayer("data", shape=(0, 1, 28, 28)),
     "data", "shape"),
    ("new_height without new_width",
     lambda: ImageDataLayer("images", tops=["data", "label"], source="list.txt",
                            new_height=256), "images", "new_width"),
]

NET_MISTAKES = [
    ("bottom no earlier layer produces", lambda: net(conv("conv1", "dta")), "conv1",
     "bottoms"),
    ("bottom produced later", lambda: net(ReLULayer("relu", ["conv1"]), conv("conv1")),
     "relu", "bottoms"),
    ("bottom only produced in the other phase",
     lambda: net(ReLULayer("relu_test", ["data"], include=Phase.TEST),
                 conv("conv1", "relu_test")), "conv1", "bottoms"),
    ("duplicate top in a phase", lambda: net(conv("conv1"), conv("conv2", tops=["conv1"])),
     "conv2", "tops"),
    ("in place on a blob another layer also reads",
     lambda: net(conv("conv1"), ReLULayer("probe", ["conv1"]),
                 ReLULayer("relu1", ["conv1"], tops=["conv1"])), "relu1", "tops"),
    ("kernel larger than the padded input", lambda: net(conv("conv1", kernel=11, pad=1)),
     "conv1", "kernel"),
    ("pooling kernel larger than its input",
     lambda: net(PoolingLayer("pool1", ["data"], kernel=9, stride=2)), "pool1", "kernel"),
    ("input channels not a multiple of group", lambda: net(conv("conv1", group=2)),
     "conv1", "group"),
    ("concat of mismatched blobs",
     lambda: net(conv("conv1", pad=1), ConcatLayer("cat", ["data", "conv1", "label"])),
     "cat", "bottoms"),
    ("eltwise of mismatched blobs",
     lambda: net(conv("conv1"), EltwiseLayer("sum", ["data", "conv1"])), "sum", "bottoms"),
    ("one label per prediction",
     lambda: NetParam("bad", data(), label((2, 2)),
                      InnerProductLayer("ip", ["data"], num_output=10),
                      SoftmaxWithLoss("loss", ["ip", "label"])), "loss", "bottoms"),
    ("crop beyond its input",
     lambda: net(conv("conv1", pad=1), CropLayer("crop", ["conv1", "data"], offset=[1])),
     "crop", "offset"),
    ("deconvolution pad leaves nothing",
     lambda: net(DeconvolutionLayer("up", ["data"], num_output=3, kernel=2, stride=1,
                                    pad=5)), "up", "pad"),
    ("pooling a 2-axis blob",
     lambda: net(PoolingLayer("pool", ["label"], kernel=1)), "pool", "bottoms"),
    ("slice that does not divide",
     lambda: net(SliceLayer("slice", ["data"], tops=["a", "b"])), "slice", "tops"),
    ("scale past the last axis",
     lambda: net(ScaleLayer("scale", ["data"], axis=2, num_axes=3)), "scale", "num_axes"),
    ("accuracy top_k above the classes",
     lambda: net(InnerProductLayer("ip", ["data"], num_output=3),
                 AccuracyLayer("acc", ["ip", "label"], top_k=5)), "acc", "top_k"),
    ("reshape to another count",
     lambda: net(ReshapeLayer("reshape", ["data"], shape=(2, 100))), "reshape", "shape"),
    ("axis out of range", lambda: net(InnerProductLayer("ip", ["label"], num_output=3,
                                                        axis=2)), "ip", "axis"),
]


@pytest.mark.parametrize("make, layer, field",
                         [pytest.param(*case[1:], id=case[0]) for case in LAYER_MISTAKES])
def test_layer_mistakes_fail_at_the_constructor(make, layer, field):
    with pytest.raises(NetDefinitionError) as info:
        make()
    error = info.value
    assert isinstance(error, ValueError)
    assert (error.layer, error.field) == (layer, field)
    assert f"layer '{layer}'" in str(error) and f"'{field}'" in str(error)


@pytest.mark.parametrize("make, layer, field",
                         [pytest.param(*case[1:], id=case[0]) for case in NET_MISTAKES])
def test_net_mistakes_fail_at_netparam(make, layer, field):
    with pytest.raises(NetDefinitionError) as info:
        make()
    error = info.value
    assert (error.layer, error.field) == (layer, field)
    assert f"layer '{layer}'" in str(error) and f"'{field}'" in str(error)


def test_there_are_at_least_twenty_distinct_mistakes():
    cases = LAYER_MISTAKES + NET_MISTAKES
    assert len({name for name, *_ in cases}) == len(cases) >= 20


def test_messages_say_what_is_wrong_and_suggest_the_fix():
    with pytest.raises(NetDefinitionError, match="did you mean 'num_output'"):
        ConvolutionLayer("conv1", ["data"], num_ouput=20, kernel=5)
    with pytest.raises(NetDefinitionError, match=r"did you mean 'conv1'\?"):
        net(conv("conv1"), ReLULayer("relu", ["conv_1"]))
    with pytest.raises(NetDefinitionError,
                       match=r"kernel 11 is larger than the padded input .* 8 \+ 2 \* 1 = 10"):
        net(conv("conv1", kernel=11, pad=1))
    with pytest.raises(NetDefinitionError, match="already produced by layer 'conv1'"):
        net(conv("conv1"), conv("conv2", tops=["conv1"]))


def test_phase_specific_shape_errors_name_the_phase():
    with pytest.raises(NetDefinitionError, match=r"\(in the TEST net\)") as info:
        NetParam("bad",
                 InputLayer("data", shape=(2, 3, 32, 32), include=Phase.TRAIN),
                 InputLayer("data", shape=(2, 3, 4, 4), include=Phase.TEST),
                 conv("conv1", kernel=5))
    assert info.value.layer == "conv1"


def test_mistakes_outside_layers_name_their_field():
    cases = [
        (lambda: Filler("gaussian", std=-1.0), "std"),
        (lambda: Filler.uniform(min=1.0, max=0.5), "max"),
        (lambda: LrPolicy("step", gamma=0.1), "stepsize"),
        (lambda: LrPolicy("inv", gamma=0.1, power=0.75, stepsize=3), "stepsize"),
        (lambda: LrPolicy("cosine"), "policy"),
        (lambda: LrPolicy.multistep(gamma=0.1, stepvalue=[200, 100]), "stepvalue"),
        (lambda: SolverParam(net(), base_lr=0.0, lr_policy=LrPolicy.fixed()), "base_lr"),
        (lambda: SolverParam(net(), base_lr=0.1, lr_policy=LrPolicy.fixed(), momentum=0.9,
                             solver_type=SolverType.ADAGRAD), "momentum"),
        (lambda: SolverParam(net(), base_lr=0.1, lr_policy=LrPolicy.poly(power=1)),
         "max_iter"),
        (lambda: SolverParam(net(), base_lr=0.1, lr_policy=LrPolicy.fixed(), momentun=0.9),
         "momentun"),
        (lambda: NetParam("x", data(), force_backwards=True), "force_backwards"),
        (lambda: NetParam(data(), label()), "name"),
    ]
    for make, field in cases:
        with pytest.raises(NetDefinitionError) as info:
            make()
        assert info.value.field == field and f"'{field}'" in str(info.value), str(info.value)


def test_definitions_are_checked_without_caffe(root):
    """Every mistake above is found without the engine even being imported."""
    import subprocess
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(root / 'tests')!r})
        import test_dsl_errors as t
        from sparknet.dsl import NetDefinitionError
        for name, make, *_ in t.LAYER_MISTAKES + t.NET_MISTAKES:
            try:
                make()
            except NetDefinitionError:
                continue
            raise SystemExit(f"no error for {{name}}")
        assert "sparknet.engine" not in sys.modules, "the DSL imported the engine"
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=root, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_caffe_would_have_failed_less_clearly():
    """The same mistakes handed to Caffe directly: its CHECK message, with the layer
    (the engine adds it) but not the field to change."""
    from sparknet.engine import CaffeError, CaffeNet
    from sparknet.proto import caffe_pb2

    good = net(conv("conv1", kernel=3)).to_proto()
    for mutate in (lambda p: setattr(p.layer[2].convolution_param, "group", 2),
                   lambda p: p.layer[2].convolution_param.kernel_size.__setitem__(0, 11)):
        bad = caffe_pb2.NetParameter()
        bad.CopyFrom(good)
        mutate(bad)
        solver = caffe_pb2.SolverParameter(base_lr=0.1, lr_policy="fixed", net_param=bad)
        with pytest.raises(CaffeError, match="layer 'conv1' \\(Convolution\\)"):
            CaffeNet(solver)
        with pytest.raises(NetDefinitionError, match="layer 'conv1'"):
            NetParam.from_proto(bad)
