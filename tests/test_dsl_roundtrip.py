"""prototxt -> DSL -> prototxt is exact for a corpus of model-zoo families, and the
DSL's shapes are the ones Caffe computes for each of them."""
from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format

from sparknet.dsl import NetParam, RawLayer
from sparknet.proto import ProtoLoader, caffe_pb2
from sparknet.proto.loader import DATA_LAYER_TYPES, parse_net

CORPUS = Path(__file__).parent / "corpus"
MODERN = sorted(p for p in CORPUS.glob("*.prototxt")
                if p.name not in ("lenet_v1_format.prototxt", "caffenet_deploy.prototxt"))
#: Layer types of this Caffe the DSL deliberately keeps raw (in assorted_layers).
RAW_TYPES = {"ReLU6", "Permute", "Normalize"}
#: Image channels and size per corpus family, for feeding it Input layers.
INPUTS = {"lenet": (1, 28, 28), "cifar10": (3, 32, 32), "caffenet": (3, 227, 227),
          "alexnet": (3, 227, 227), "googlenet": (3, 224, 224), "vgg16": (3, 224, 224),
          "resnet50": (3, 224, 224), "squeezenet": (3, 227, 227), "fcn32s": (3, 64, 64),
          "mnist_siamese": (2, 28, 28)}


def test_the_corpus_covers_the_zoo_families():
    names = {p.name.split("_train")[0] for p in MODERN}
    assert len(MODERN) >= 10
    for family in ("lenet", "cifar10_full", "caffenet", "alexnet", "googlenet", "vgg16",
                   "resnet50", "squeezenet_v1.1", "fcn32s", "mnist_siamese"):
        assert family in names, family


@pytest.mark.parametrize("path", MODERN, ids=lambda p: p.stem)
def test_round_trip_is_exact_and_typed(path):
    proto = ProtoLoader.load_net_prototxt(path)
    net = NetParam.from_proto(proto)
    assert net.to_proto() == proto
    assert text_format.Parse(net.to_prototxt(), caffe_pb2.NetParameter()) == proto
    raw = {layer.type for layer in net.layers if isinstance(layer, RawLayer)}
    assert raw <= RAW_TYPES, f"layers the DSL should have typed: {raw - RAW_TYPES}"
    assert NetParam.from_proto(net.to_proto()) == net
    # ... and as Python source, the prototxt converted to the DSL.
    namespace: dict = {}
    exec(net.to_python(), namespace)
    assert namespace["net"] == net


def caffe_shapes(proto: caffe_pb2.NetParameter) -> dict[str, dict[str, tuple]]:
    from sparknet.engine import CaffeNet
    solver = caffe_pb2.SolverParameter(base_lr=0.01, lr_policy="fixed", net_param=proto)
    engine = CaffeNet(solver)
    # Caffe adds split blobs where one blob feeds several layers; the DSL does not.
    return {phase: {blob: shape for blob, shape in engine.blob_shapes(phase).items()
                    if "_split_" not in blob} for phase in ("TRAIN", "TEST")}


@pytest.mark.parametrize("path", MODERN, ids=lambda p: p.stem)
def test_shapes_are_caffes(path):
    proto = ProtoLoader.load_net_prototxt(path)
    family = next((k for k in INPUTS if path.name.startswith(k)), None)
    if family is not None:  # a zoo net reading LMDB: feed it as sparknet does
        assert any(layer.type in DATA_LAYER_TYPES for layer in proto.layer)
        c, h, w = INPUTS[family]
        labels = (1, h, w) if family == "fcn32s" else (1,)
        proto = ProtoLoader.replace_data_layers(proto, 1, 2, c, h, w, label_shape=labels)
    net = NetParam.from_proto(proto)
    truth = caffe_shapes(proto)
    for phase in ("TRAIN", "TEST"):
        mine = net.shapes(phase)
        assert set(mine) == set(truth[phase])
        unknown = {blob for blob, shape in mine.items() if shape is None}
        assert {blob: shape for blob, shape in mine.items() if shape is not None} == {
            blob: shape for blob, shape in truth[phase].items() if blob not in unknown}
        # Only what comes out of layer types the DSL keeps raw may be unknown.
        assert unknown <= {"permute", "normalize"}


def test_v1_nets_are_upgraded_as_caffe_does():
    v1_text = (CORPUS / "lenet_v1_format.prototxt").read_text()
    as_written = parse_net(v1_text)
    assert len(as_written.layers) == 11 and not as_written.layer
    modern = ProtoLoader.load_net_prototxt(CORPUS / "lenet_train_test.prototxt")
    assert ProtoLoader.load_net_prototxt(CORPUS / "lenet_v1_format.prototxt") == modern
    upgraded = NetParam.from_proto(as_written)
    assert upgraded.to_proto() == modern
    conv1 = modern.layer[2]
    assert [p.lr_mult for p in conv1.param] == [1, 2]
    assert modern.layer[0].transform_param.scale == pytest.approx(1 / 256)


def test_legacy_input_fields_become_an_input_layer():
    as_written = parse_net((CORPUS / "caffenet_deploy.prototxt").read_text())
    assert list(as_written.input) == ["data"] and list(as_written.input_dim) == [10, 3, 227, 227]
    net = NetParam.from_proto(as_written)
    first = net.layers[0]
    assert (first.type, first.name, first.tops, first.shape) == (
        "Input", "input", ("data",), (10, 3, 227, 227))
    assert net.shapes("TEST")["prob"] == (10, 1000)
    assert not net.to_proto().input


def test_v0_nets_are_refused_clearly():
    v0 = parse_net('name: "old" layers { layer { name: "conv1" type: "conv" } }')
    with pytest.raises(ValueError, match="V0 format.*upgrade_net_proto_text"):
        NetParam.from_proto(v0)


def test_a_bad_layer_in_a_file_is_named_with_its_line(tmp_path):
    path = tmp_path / "bad.prototxt"
    text = (CORPUS / "lenet_train_test.prototxt").read_text()
    path.write_text(text.replace("num_output: 50\n", "num_output: 50\n    group: 3\n"))
    with pytest.raises(ValueError) as info:
        NetParam.load(path)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if 'name: "conv2"' in row)
    assert str(info.value).startswith(f"{path}:{line}: layer 'conv2' (Convolution), "
                                      "field 'group'")
