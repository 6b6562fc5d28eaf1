"""The net DSL: what it compiles to, the shapes it infers, its value semantics."""
from __future__ import annotations

import attrs
import numpy as np
import pytest
from google.protobuf import text_format

import sparknet.dsl as dsl
from sparknet.dsl import (
    AccuracyLayer,
    ConvolutionLayer,
    DataLayer,
    Filler,
    ImageDataLayer,
    InnerProductLayer,
    InputLayer,
    LrPolicy,
    NetDefinitionError,
    NetParam,
    ParamSpec,
    Phase,
    Pooling,
    PoolingLayer,
    RawLayer,
    RDDLayer,
    ReLULayer,
    SoftmaxWithLoss,
    SolverParam,
    SolverType,
    TransformParam,
)
from sparknet.dsl.layers import Layer
from sparknet.proto import caffe_pb2


def readme_net() -> NetParam:
    """The example of SparkNet's README, in Python, exactly as the issue gives it."""
    from sparknet.dsl import (NetParam, RDDLayer, ConvolutionLayer, PoolingLayer,  # noqa
                              Pooling, InnerProductLayer, ReLULayer, SoftmaxWithLoss)

    net = NetParam("LeNet",
        RDDLayer("data", shape=(64, 1, 28, 28)),
        RDDLayer("label", shape=(64, 1)),
        ConvolutionLayer("conv1", ["data"], kernel=(5, 5), num_output=20),
        PoolingLayer("pool1", ["conv1"], pooling=Pooling.MAX, kernel=(2, 2), stride=(2, 2)),
        ConvolutionLayer("conv2", ["pool1"], kernel=(5, 5), num_output=50),
        PoolingLayer("pool2", ["conv2"], pooling=Pooling.MAX, kernel=(2, 2), stride=(2, 2)),
        InnerProductLayer("ip1", ["pool2"], num_output=500),
        ReLULayer("relu1", ["ip1"]),
        InnerProductLayer("ip2", ["relu1"], num_output=10),
        SoftmaxWithLoss("loss", ["ip2", "label"]))
    return net


LENET_SHAPES = {"data": (64, 1, 28, 28), "label": (64, 1), "conv1": (64, 20, 24, 24),
                "pool1": (64, 20, 12, 12), "conv2": (64, 50, 8, 8), "pool2": (64, 50, 4, 4),
                "ip1": (64, 500), "relu1": (64, 500), "ip2": (64, 10), "loss": ()}


def test_the_readme_example_works_as_written():
    net = readme_net()
    proto = net.to_proto()
    assert isinstance(proto, caffe_pb2.NetParameter)
    assert proto.name == "LeNet"
    assert [layer.type for layer in proto.layer] == [
        "Input", "Input", "Convolution", "Pooling", "Convolution", "Pooling", "InnerProduct",
        "ReLU", "InnerProduct", "SoftmaxWithLoss"]
    assert list(proto.layer[-1].bottom) == ["ip2", "label"]
    assert text_format.Parse(net.to_prototxt(), caffe_pb2.NetParameter()) == proto
    assert net.shapes() == {"TRAIN": LENET_SHAPES, "TEST": LENET_SHAPES}
    assert net.shapes("TEST") == LENET_SHAPES


def test_the_readme_net_trains_in_caffe_with_the_shapes_the_dsl_predicted():
    from sparknet.engine import CaffeNet
    solver = SolverParam(readme_net(), base_lr=0.01, momentum=0.9, weight_decay=5e-4,
                         lr_policy=LrPolicy.inv(gamma=1e-4, power=0.75),
                         solver_type=SolverType.SGD, random_seed=3)
    engine = CaffeNet(solver)
    assert engine.blob_shapes("TRAIN") == LENET_SHAPES
    rng = np.random.default_rng(0)
    batch = {"data": rng.random((64, 1, 28, 28), np.float32),
             "label": rng.integers(0, 10, (64, 1)).astype(np.float32)}
    loss = engine.train(2, [batch, batch])
    assert np.all(np.isfinite(loss)) and 1.0 < loss[0] < 4.0


def test_what_you_write_is_what_caffe_gets():
    square = ConvolutionLayer("c", ["x"], num_output=4, kernel=5, stride=1).to_proto()
    assert list(square.convolution_param.kernel_size) == [5]
    assert list(square.convolution_param.stride) == [1]  # explicit, though Caffe's default
    assert not square.convolution_param.HasField("kernel_h")
    pair = ConvolutionLayer("c", ["x"], num_output=4, kernel=(3, 5), pad=(1, 2)).to_proto()
    p = pair.convolution_param
    assert (p.kernel_h, p.kernel_w, p.pad_h, p.pad_w) == (3, 5, 1, 2)
    assert not p.kernel_size and not p.pad
    volume = ConvolutionLayer("c", ["x"], num_output=4, kernel=(3, 3, 3)).to_proto()
    assert list(volume.convolution_param.kernel_size) == [3, 3, 3]
    pool = PoolingLayer("p", ["x"], kernel=(2, 3), stride=2).to_proto().pooling_param
    assert (pool.kernel_h, pool.kernel_w, pool.stride) == (2, 3, 2)
    assert not pool.HasField("kernel_size") and not pool.HasField("pool")
    # Unset fields are not written at all: Caffe's defaults apply.
    relu = ReLULayer("r", ["x"]).to_proto()
    assert not relu.HasField("relu_param") and list(relu.top) == ["r"]


def test_enums_accept_their_names():
    assert PoolingLayer("p", ["x"], pooling="AVE", kernel=2).pooling is Pooling.AVE
    assert Phase.TRAIN == "TRAIN"
    assert ReLULayer("r", ["x"], include="TEST").include[0].phase is Phase.TEST
    assert ReLULayer("r", ["x"], include="TEST").to_proto().include[0].phase == caffe_pb2.TEST


def test_layers_are_frozen_values_that_evolve_with_checks():
    conv = ConvolutionLayer("conv1", ["data"], num_output=20, kernel=5)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        conv.num_output = 30  # type: ignore[misc]
    wider = attrs.evolve(conv, num_output=64)
    assert wider.num_output == 64 and conv.num_output == 20
    assert wider != conv and attrs.evolve(wider, num_output=20) == conv
    assert hash(conv) == hash(attrs.evolve(wider, num_output=20))
    with pytest.raises(NetDefinitionError, match="num_output"):
        attrs.evolve(conv, num_output=-1)


def test_nets_evolve_like_layers():
    net = readme_net()
    renamed = attrs.evolve(net, name="LeNet-2")
    assert renamed.name == "LeNet-2" and renamed.layers == net.layers
    headless = attrs.evolve(net, layers=net.layers[:-1])
    assert "loss" not in headless.shapes("TRAIN")
    with pytest.raises(NetDefinitionError, match="bottoms"):
        attrs.evolve(net, layers=net.layers[3:])  # pool1 without its conv1


def test_floats_are_the_float32_caffe_keeps():
    assert Filler.gaussian(std=0.01).std == 0.01
    assert Filler.constant(1 / 3).value == 0.33333334  # float32(1/3), shortest
    layer = ReLULayer("r", ["x"], negative_slope=0.123456789)
    assert Layer.from_proto(layer.to_proto()) == layer
    with pytest.raises(NetDefinitionError, match="finite float32"):
        Filler.constant(1e40)


def test_repr_is_the_python_that_builds_the_net():
    net = readme_net()
    rebuilt = eval(repr(net), vars(dsl))
    assert rebuilt == net
    assert repr(net.layers[3]) == ("PoolingLayer('pool1', ['conv1'], pooling=Pooling.MAX, "
                                   "kernel=(2, 2), stride=(2, 2))")


def test_two_layers_may_share_a_name_in_different_phases():
    net = NetParam(
        "phased",
        InputLayer("data", shape=(32, 3, 8, 8), include=Phase.TRAIN),
        InputLayer("data", shape=(10, 3, 8, 8), include=Phase.TEST),
        InputLayer("label", shape=(32, 1), include=Phase.TRAIN),
        InputLayer("label", shape=(10, 1), include=Phase.TEST),
        InnerProductLayer("ip", ["data"], num_output=5),
        AccuracyLayer("accuracy", ["ip", "label"], include=Phase.TEST),
        SoftmaxWithLoss("loss", ["ip", "label"]),
    )
    assert [layer.name for layer in net.layers_in("TRAIN")] == ["data", "label", "ip", "loss"]
    assert net.shapes("TRAIN")["ip"] == (32, 5)
    assert net.shapes("TEST")["ip"] == (10, 5)
    assert "accuracy" not in net.shapes("TRAIN") and net.shapes("TEST")["accuracy"] == ()
    names = [layer.name for layer in net.to_proto().layer]
    assert names.count("data") == 2


def test_stage_and_level_rules_follow_caffe():
    from sparknet.dsl import NetState, NetStateRule
    layers = [InputLayer("data", shape=(1, 4)),
              ReLULayer("deploy_only", ["data"], include=NetStateRule(stage=["deploy"])),
              ReLULayer("not_deploy", ["data"], exclude=NetStateRule(stage=["deploy"])),
              ReLULayer("level2", ["data"], include=NetStateRule(min_level=2))]
    plain = NetParam("rules", *layers)
    assert set(plain.shapes("TRAIN")) == {"data", "not_deploy"}
    deploy = NetParam("rules", *layers, state=NetState(level=2, stage=["deploy"]))
    assert set(deploy.shapes("TEST")) == {"data", "deploy_only", "level2"}


def test_in_place_layers_keep_the_blob():
    net = NetParam("inplace", InputLayer("x", shape=(2, 6)),
                   InnerProductLayer("ip", ["x"], num_output=3),
                   ReLULayer("relu", ["ip"], tops=["ip"]))
    assert net.shapes("TRAIN") == {"x": (2, 6), "ip": (2, 3)}
    assert list(net.to_proto().layer[2].top) == ["ip"]


def test_shared_parameters_and_multipliers():
    spec = (ParamSpec(lr_mult=1, name="w"), ParamSpec(lr_mult=2, decay_mult=0, name="b"))
    layer = InnerProductLayer("ip", ["x"], num_output=2, params=spec,
                              weight_filler=Filler.gaussian(std=0.01),
                              bias_filler=Filler.constant(0.2))
    proto = layer.to_proto()
    assert [(p.name, p.lr_mult, p.HasField("decay_mult")) for p in proto.param] == [
        ("w", 1.0, False), ("b", 2.0, True)]
    assert proto.inner_product_param.weight_filler.type == "gaussian"
    # Floats come back from the float32 proto as the decimals that were written.
    assert Layer.from_proto(proto) == layer
    assert Layer.from_proto(proto).bias_filler.value == 0.2


def test_nested_lists_of_layers_are_spliced_in():
    def block(name, bottom):
        return [InnerProductLayer(name, [bottom], num_output=4),
                ReLULayer(f"{name}_relu", [name], tops=[name])]
    net = NetParam("blocks", InputLayer("x", shape=(1, 4)), block("a", "x"), [block("b", "a")])
    assert [layer.name for layer in net.layers] == ["x", "a", "a_relu", "b", "b_relu"]


def test_data_layers_know_what_the_data_does_not_hide():
    net = NetParam(
        "lmdb",
        DataLayer("mnist", tops=["data", "label"], source="train_lmdb", batch_size=64,
                  backend="LMDB", transform_param=TransformParam(scale=1 / 256)),
        InnerProductLayer("ip", ["data"], num_output=10),
        SoftmaxWithLoss("loss", ["ip", "label"]))
    shapes = net.shapes("TRAIN")
    assert shapes["label"] == (64,)  # Caffe's Data layer labels are 1-D
    assert shapes["data"] is None and shapes["ip"] is None  # in the database
    images = ImageDataLayer("images", tops=["data", "label"], source="list.txt", batch_size=8,
                            new_height=256, new_width=256, is_color=False,
                            transform_param=TransformParam(crop_size=227))
    assert images.infer(()) == ((8, 1, 227, 227), (8,))


def test_raw_layers_keep_what_the_dsl_does_not_model():
    proto = caffe_pb2.LayerParameter(name="norm", type="Normalize", bottom=["x"], top=["norm"],
                                     norm_param={"across_spatial": False})
    layer = Layer.from_proto(proto)
    assert isinstance(layer, RawLayer) and layer.type == "Normalize"
    assert layer.to_proto() == proto
    assert layer == RawLayer("norm", ["x"], tops=["norm"], type="Normalize",
                             proto=caffe_pb2.LayerParameter(norm_param={"across_spatial": False}))
    names = {**vars(dsl), "caffe_pb2": caffe_pb2, "text_format": text_format}
    assert eval(repr(layer), names) == layer
    net = NetParam("raw", InputLayer("x", shape=(1, 3, 4, 4)), layer)
    assert net.shapes("TRAIN")["norm"] == (1, 3, 4, 4)  # Normalize keeps its bottom's shape
    # A known type spelled in a way the typed class would not write back stays raw,
    # and still has its shape inferred.
    odd = caffe_pb2.LayerParameter(name="c", type="Convolution", bottom=["x"], top=["c"],
                                   convolution_param={"num_output": 2, "kernel_size": [3, 3]})
    kept = Layer.from_proto(odd)
    assert isinstance(kept, RawLayer) and kept.to_proto() == odd
    assert kept.typed() == ConvolutionLayer("c", ["x"], num_output=2, kernel=(3, 3))
    assert NetParam("odd", InputLayer("x", shape=(1, 3, 4, 4)), kept).shapes("TEST")["c"] == (
        1, 2, 2, 2)
    with pytest.raises(NetDefinitionError, match=r"layer 'x' \(RawLayer\), field 'type'"):
        RawLayer("x", ["a"], tops=["x"])
    with pytest.raises(NetDefinitionError, match="give those as the layer's own fields"):
        RawLayer("x", type="Python", proto=caffe_pb2.LayerParameter(name="x"))


def test_pooling_rounds_as_this_caffe_does():
    def pooled(size, **kw):
        layer = PoolingLayer("p", ["x"], **kw)
        return layer.infer(((1, 1, size, size),))[0][2]
    assert pooled(112, kernel=3, stride=2) == 56             # ceil: floor would give 55
    assert pooled(112, kernel=3, stride=2, ceil_mode=False) == 55
    assert pooled(5, kernel=2, stride=3, pad=1) == 2          # the last window is clipped
    assert pooled(7, pooling=Pooling.AVE, global_pooling=True) == 1


def test_solver_compiles_to_caffes_fields():
    net = readme_net()
    solver = SolverParam(net, base_lr=0.01, lr_policy=LrPolicy.multistep(0.1, [100, 200]),
                         momentum=0.9, momentum2=0.999, solver_type=SolverType.ADAM,
                         max_iter=300, test_iter=[10], test_interval=50)
    proto = solver.to_proto()
    assert proto.type == "Adam" and not proto.HasField("solver_type")
    assert proto.lr_policy == "multistep" and list(proto.stepvalue) == [100, 200]
    assert proto.net_param == net.to_proto() and not proto.HasField("net")
    assert SolverParam.from_proto(proto) == solver
    assert [solver.rate(i) for i in (0, 100, 250)] == pytest.approx([0.01, 0.001, 0.0001])


@pytest.mark.parametrize("policy, iteration, expected", [
    (LrPolicy.fixed(), 500, 0.01),
    (LrPolicy.step(gamma=0.5, stepsize=100), 250, 0.01 * 0.25),
    (LrPolicy.exp(gamma=0.99), 10, 0.01 * 0.99 ** 10),
    (LrPolicy.inv(gamma=1e-4, power=0.75), 1000, 0.01 * (1 + 0.1) ** -0.75),
    (LrPolicy.poly(power=2), 500, 0.01 * 0.5 ** 2),
    (LrPolicy.sigmoid(gamma=-0.01, stepsize=500), 500, 0.005),
])
def test_every_lr_policy_computes_caffes_rate(policy, iteration, expected):
    assert policy.rate(0.01, iteration, max_iter=1000) == pytest.approx(expected)


def test_each_solver_type_is_written_as_caffes_type_string():
    net = readme_net()
    for kind, caffe_name in [(SolverType.SGD, "SGD"), (SolverType.NESTEROV, "Nesterov"),
                             (SolverType.ADAGRAD, "AdaGrad"), (SolverType.RMSPROP, "RMSProp"),
                             (SolverType.ADADELTA, "AdaDelta"), (SolverType.ADAM, "Adam")]:
        proto = SolverParam(net, base_lr=0.1, lr_policy=LrPolicy.fixed(),
                            solver_type=kind).to_proto()
        assert proto.type == caffe_name
        assert SolverParam.from_proto(proto).solver_type is kind


def test_rdd_layer_is_the_input_layer():
    assert RDDLayer is InputLayer
    assert RDDLayer("data", shape=(1, 2)).to_proto().type == "Input"


# BVLC's examples/mnist/mnist_autoencoder.prototxt, in outline (written here, not copied):
# a Data layer per phase and TEST stage, a deep encoder/decoder, and two layers named
# "loss" -- a sigmoid cross-entropy that trains and a Euclidean one that is only reported.
AUTOENCODER = """
name: "DigitAutoencoder"
layer { name: "data" type: "Data" top: "data" include { phase: TRAIN }
        transform_param { scale: 0.00390625 }
        data_param { source: "digits_train_lmdb" batch_size: 16 backend: LMDB } }
layer { name: "data" type: "Data" top: "data"
        include { phase: TEST stage: "test-on-train" }
        transform_param { scale: 0.00390625 }
        data_param { source: "digits_train_lmdb" batch_size: 16 backend: LMDB } }
layer { name: "data" type: "Data" top: "data"
        include { phase: TEST stage: "test-on-test" }
        transform_param { scale: 0.00390625 }
        data_param { source: "digits_test_lmdb" batch_size: 16 backend: LMDB } }
layer { name: "flatdata" type: "Flatten" bottom: "data" top: "flatdata" }
layer { name: "encode1" type: "InnerProduct" bottom: "data" top: "encode1"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 1 decay_mult: 0 }
        inner_product_param { num_output: 64
          weight_filler { type: "gaussian" std: 0.1 sparse: 15 }
          bias_filler { type: "constant" value: 0 } } }
layer { name: "encode1neuron" type: "Sigmoid" bottom: "encode1" top: "encode1neuron" }
layer { name: "encode2" type: "InnerProduct" bottom: "encode1neuron" top: "encode2"
        inner_product_param { num_output: 16 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "decode2" type: "InnerProduct" bottom: "encode2" top: "decode2"
        inner_product_param { num_output: 64 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "decode2neuron" type: "Sigmoid" bottom: "decode2" top: "decode2neuron" }
layer { name: "decode1" type: "InnerProduct" bottom: "decode2neuron" top: "decode1"
        inner_product_param { num_output: 784 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "decode1" bottom: "flatdata"
        top: "cross_entropy_loss" loss_weight: 1 }
layer { name: "decode1neuron" type: "Sigmoid" bottom: "decode1" top: "decode1neuron" }
layer { name: "loss" type: "EuclideanLoss" bottom: "decode1neuron" bottom: "flatdata"
        top: "l2_error" loss_weight: 0 }
"""


def test_bvlc_mnist_autoencoder_loads_and_its_two_loss_layers_warn(tmp_path):
    from sparknet.dsl import NetDefinitionWarning
    from sparknet.proto import ProtoLoader

    path = tmp_path / "mnist_autoencoder.prototxt"
    path.write_text(AUTOENCODER)
    with pytest.warns(NetDefinitionWarning, match=r"2 layers of one net are named 'loss' "
                      r"\(SigmoidCrossEntropyLoss, EuclideanLoss\)"):
        net = NetParam.load(path)
    assert net.to_proto() == ProtoLoader.load_net_prototxt(path)
    # TEST has a data layer per stage only; each stage's net builds, as Caffe's would.
    assert [layer.name for layer in net.layers_in("TEST")].count("data") == 0
    assert "l2_error" in net.shapes("TEST") and "cross_entropy_loss" in net.shapes("TRAIN")


def test_caffe_trains_a_net_with_two_layers_of_one_name():
    """What the DSL now accepts, Caffe accepts: the autoencoder (fed by an Input) learns."""
    import itertools
    import warnings

    from sparknet.data.digits import load_digits
    from sparknet.dsl import NetDefinitionWarning
    from sparknet.engine import CaffeNet

    proto = text_format.Parse(AUTOENCODER, caffe_pb2.NetParameter())
    del proto.layer[:3]
    proto.layer.insert(0, InputLayer("data", shape=(16, 1, 28, 28)).to_proto())
    with warnings.catch_warnings():
        warnings.simplefilter("error", NetDefinitionWarning)
        with pytest.raises(NetDefinitionWarning, match="'loss'"):
            NetParam.from_proto(proto)
    with pytest.warns(NetDefinitionWarning):
        solver = SolverParam(NetParam.from_proto(proto), base_lr=0.05, momentum=0.9,
                             lr_policy=LrPolicy.fixed(), random_seed=1)
    net = CaffeNet(solver)
    assert net.output_names == ["cross_entropy_loss", "l2_error"]
    x = load_digits("train")[0][:16 * 40].reshape(40, 16, 1, 28, 28)
    batches = [{"data": b / 255.0} for b in itertools.chain(x, x, x)]
    before = net.forward(batches[0], phase="TRAIN")["l2_error"]
    losses = net.train(len(batches), batches)
    after = net.forward(batches[0], phase="TRAIN")["l2_error"]
    assert losses[-10:].mean() < 0.8 * losses[:10].mean(), losses
    assert after < 0.8 * before, (before, after)


def test_a_stage_whose_net_cannot_build_is_named():
    from sparknet.dsl import NetStateRule
    with pytest.raises(NetDefinitionError, match=r"TEST \(level 0, stage b\) net") as info:
        NetParam("staged", InputLayer("a", shape=(2, 4), include=NetStateRule(
                     phase=Phase.TEST, stage=["a"])),
                 InputLayer("b", shape=(2, 4), include=NetStateRule(phase=Phase.TEST,
                                                                    stage=["b"])),
                 InputLayer("a", shape=(2, 4), include=Phase.TRAIN),
                 ReLULayer("relu", ["a"]))
    assert info.value.layer == "relu"
