"""ProtoLoader: prototxt in and out, data layers replaced by sparknet's inputs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from google.protobuf import text_format

from sparknet.dsl import NetParam
from sparknet.proto import ProtoLoader, PrototxtError, caffe_pb2, loader

CORPUS = Path(__file__).parent / "corpus"


@pytest.fixture
def caffenet_zoo() -> caffe_pb2.NetParameter:
    """The zoo's CaffeNet: one LMDB Data layer per phase, tops data and label."""
    return ProtoLoader.load_net_prototxt(CORPUS / "caffenet_train_val.prototxt")


def inputs(net: caffe_pb2.NetParameter) -> list[tuple]:
    """(name, top, phase rules, shape) of each Input layer."""
    return [(layer.name, tuple(layer.top),
             tuple(caffe_pb2.Phase.Name(r.phase) for r in layer.include),
             tuple(tuple(s.dim) for s in layer.input_param.shape))
            for layer in net.layer if layer.type == "Input"]


def test_the_issue_example(root, monkeypatch):
    monkeypatch.chdir(root)
    netp = ProtoLoader.load_net_prototxt("caffe/models/caffenet/train_val.prototxt")
    netp = ProtoLoader.replace_data_layers(netp, 16, 8, 3, 227, 227)
    solver = ProtoLoader.load_solver_prototxt_with_net("caffe/models/caffenet/solver.prototxt",
                                                       netp, snapshot_prefix=None)
    assert solver.net_param == netp and not solver.HasField("net")
    assert solver.snapshot_prefix == "caffenet_train" and solver.lr_policy == "step"
    assert inputs(netp) == [
        ("data", ("data",), ("TRAIN",), ((16, 3, 227, 227),)),
        ("label", ("label",), ("TRAIN",), ((16, 1),)),
        ("data", ("data",), ("TEST",), ((8, 3, 227, 227),)),
        ("label", ("label",), ("TEST",), ((8, 1),))]


def test_one_data_layer_per_phase_becomes_inputs_in_its_place(caffenet_zoo):
    replaced = ProtoLoader.replace_data_layers(caffenet_zoo, 32, 10, 3, 227, 227)
    assert [layer.type for layer in replaced.layer[:5]] == ["Input"] * 4 + ["Convolution"]
    assert inputs(replaced) == [
        ("data", ("data",), ("TRAIN",), ((32, 3, 227, 227),)),
        ("label", ("label",), ("TRAIN",), ((32, 1),)),
        ("data", ("data",), ("TEST",), ((10, 3, 227, 227),)),
        ("label", ("label",), ("TEST",), ((10, 1),))]
    assert replaced.layer[4:] == caffenet_zoo.layer[2:]
    assert not any(layer.type == "Data" for layer in replaced.layer)
    assert caffenet_zoo.layer[0].type == "Data"  # the argument is left alone
    shapes = NetParam.from_proto(replaced).shapes()
    assert shapes["TRAIN"]["fc8"] == (32, 1000) and shapes["TEST"]["fc8"] == (10, 1000)


def test_the_transform_stays_available_to_the_data_pipeline(caffenet_zoo):
    replaced = ProtoLoader.replace_data_layers(caffenet_zoo, 32, 10, 3, 227, 227)
    train_data, test_data = replaced.layer[0], replaced.layer[2]
    assert train_data.transform_param.mirror and train_data.transform_param.crop_size == 227
    assert not test_data.transform_param.mirror
    assert test_data.transform_param.mean_file.endswith("imagenet_mean.binaryproto")
    assert not replaced.layer[1].HasField("transform_param")  # labels are not transformed
    per_phase = ProtoLoader.transform_params(replaced)
    assert per_phase["TRAIN"].mirror and not per_phase["TEST"].mirror
    assert ProtoLoader.transform_params(caffenet_zoo) == per_phase
    info = ProtoLoader.data_layers(caffenet_zoo)
    assert [(i.name, i.type, i.phases, i.tops, i.batch_size) for i in info] == [
        ("data", "Data", ("TRAIN",), ("data", "label"), 256),
        ("data", "Data", ("TEST",), ("data", "label"), 50)]
    assert info[0].source == "examples/imagenet/ilsvrc12_train_lmdb"


def test_separate_image_and_label_layers_anywhere_in_the_net():
    zoo = ProtoLoader.load_net_prototxt(CORPUS / "fcn32s_train_val.prototxt")
    # Move the data layers behind another layer: they are found by type, not position.
    layers = list(zoo.layer)
    zoo.ClearField("layer")
    zoo.layer.extend([layers[4], *layers[:4], *layers[5:]])
    replaced = ProtoLoader.replace_data_layers(zoo, 2, 1, 3, 64, 64, label_shape=(1, 64, 64))
    assert replaced.layer[0] == layers[4]
    assert inputs(replaced) == [
        ("data", ("data",), ("TRAIN",), ((2, 3, 64, 64),)),
        ("label", ("label",), ("TRAIN",), ((2, 1, 64, 64),)),
        ("data", ("data",), ("TEST",), ((1, 3, 64, 64),)),
        ("label", ("label",), ("TEST",), ((1, 1, 64, 64),))]
    assert list(replaced.layer[1].transform_param.mean_value) == pytest.approx(
        [104.00699, 116.66877, 122.67892])


def test_a_data_layer_for_both_phases():
    net = loader.parse_net("""
        layer { name: "mnist" type: "Data" top: "data" top: "label"
                data_param { source: "mnist_lmdb" batch_size: 64 backend: LMDB }
                transform_param { scale: 0.00390625 } }
        layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
                inner_product_param { num_output: 10 } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
    """)
    same = ProtoLoader.replace_data_layers(net, 64, 64, 1, 28, 28)
    assert inputs(same) == [("data", ("data",), (), ((64, 1, 28, 28),)),
                            ("label", ("label",), (), ((64, 1),))]
    split = ProtoLoader.replace_data_layers(net, 64, 100, 1, 28, 28)
    assert [(name, phase, shape[0][0]) for name, _, phase, shape in inputs(split)] == [
        ("data", ("TRAIN",), 64), ("label", ("TRAIN",), 64),
        ("data", ("TEST",), 100), ("label", ("TEST",), 100)]
    assert split.layer[0].transform_param.scale == pytest.approx(1 / 256)


def test_replacing_is_idempotent_and_reshapes_inputs(root):
    lenet = ProtoLoader.load_net_prototxt(root / "caffe/models/lenet/lenet_train_test.prototxt")
    once = ProtoLoader.replace_data_layers(lenet, 32, 32, 1, 28, 28)
    assert inputs(once) == [("data", ("data",), (), ((32, 1, 28, 28),)),
                            ("label", ("label",), (), ((32, 1),))]
    assert ProtoLoader.replace_data_layers(once, 32, 32, 1, 28, 28) == once


def test_replacing_needs_data_layers_and_sane_sizes():
    bare = loader.parse_net('layer { name: "x" type: "ReLU" bottom: "a" top: "a" }')
    with pytest.raises(ValueError, match="no data layers"):
        ProtoLoader.replace_data_layers(bare, 1, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="train_batch must be a positive integer"):
        ProtoLoader.replace_data_layers(bare, 0, 1, 1, 1, 1)


def test_parse_errors_name_file_line_and_column(tmp_path):
    path = tmp_path / "broken.prototxt"
    path.write_text('name: "x"\nlayer {\n  name: "conv1"\n  type: "Convolution"\n'
                    '  convolution_param { num_output: "ten" }\n}\n')
    with pytest.raises(PrototxtError) as info:
        ProtoLoader.load_net_prototxt(path)
    assert str(info.value).startswith(f"{path}:5:")
    assert (info.value.path, info.value.line) == (str(path), 5) and info.value.column > 1


@pytest.mark.parametrize("field, text, hint", [
    ("round_mode", 'layer { name: "p" type: "Pooling" pooling_param { round_mode: FLOOR } }',
     "ceil_mode: false"),
    ("clip_param", 'layer { name: "c" type: "Clip" clip_param { min: 0 max: 6 } }',
     "no Clip layer"),
    ("swish_param", 'layer { name: "s" type: "Swish" swish_param { beta: 1 } }',
     "no Swish layer"),
])
def test_late_bvlc_net_fields_are_named_as_unknown_to_this_schema(tmp_path, field, text, hint):
    path = tmp_path / "late.prototxt"
    path.write_text('name: "late"\n' + text + "\n")
    with pytest.raises(PrototxtError) as info:
        ProtoLoader.load_net_prototxt(path)
    message = str(info.value)
    assert message.startswith(f"{path}:2:")
    assert f"field '{field}' is unknown to this Caffe's schema" in message
    assert "later BVLC Caffe addition" in message and hint in message
    assert info.value.field == field


@pytest.mark.parametrize("field", ["weights", "layer_wise_reduce"])
def test_late_bvlc_solver_fields_are_named_too(tmp_path, field):
    path = tmp_path / "solver.prototxt"
    value = '"init.caffemodel"' if field == "weights" else "false"
    path.write_text(f'base_lr: 0.01\nlr_policy: "fixed"\n{field}: {value}\n')
    with pytest.raises(PrototxtError, match=rf"solver.prototxt:3:1: field '{field}' is unknown"):
        ProtoLoader.load_solver_prototxt(path)


def test_other_unknown_fields_are_named_without_the_bvlc_hint(tmp_path):
    path = tmp_path / "typo.prototxt"
    path.write_text('layer { name: "c" type: "Convolution" convolution_param { num_ouput: 3 } }')
    with pytest.raises(PrototxtError, match=r":1:\d+: field 'num_ouput' is unknown") as info:
        ProtoLoader.load_net_prototxt(path)
    assert "BVLC" not in str(info.value)


def test_solver_with_its_net_file(root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the net path is found relative to the repository too
    solver = ProtoLoader.load_solver_prototxt_with_net(
        root / "caffe/models/lenet/lenet_solver.prototxt", snapshot_prefix="runs/lenet")
    assert not solver.HasField("net") and solver.net_param.name == "LeNet"
    assert solver.snapshot_prefix == "runs/lenet" and solver.base_lr == pytest.approx(0.01)
    assert solver.net_param == ProtoLoader.load_net_prototxt(
        root / "caffe/models/lenet/lenet_train_test.prototxt")
    missing = tmp_path / "solver.prototxt"
    missing.write_text('net: "nowhere/net.prototxt"\nbase_lr: 0.1\n')
    with pytest.raises(FileNotFoundError, match="nowhere/net.prototxt"):
        ProtoLoader.load_solver_prototxt_with_net(missing)


def test_solver_with_a_dsl_net(root):
    from sparknet.models import lenet
    solver = ProtoLoader.load_solver_prototxt_with_net(
        root / "caffe/models/lenet/lenet_solver.prototxt", lenet.net(batch_size=8),
        snapshot_prefix="snap")
    assert solver.net_param.layer[0].input_param.shape[0].dim[0] == 8
    assert solver.snapshot_prefix == "snap"


def test_sparknets_three_arguments_and_the_one_snake_case_function(root):
    path = root / "caffe/models/lenet/lenet_solver.prototxt"
    net = ProtoLoader.load_net_prototxt(root / "caffe/models/lenet/lenet_train_test.prototxt")
    solver = ProtoLoader.loadSolverPrototxtWithNet(path, net, "runs/x")  # SparkNet's order
    assert solver.snapshot_prefix == "runs/x" and solver.net_param == net
    assert ProtoLoader.loadSolverPrototxtWithNet(path, net) == \
        ProtoLoader.load_solver_prototxt_with_net(path)  # without a net: the file's
    assert not hasattr(ProtoLoader, "loadSolverWithNetPrototxt")
    assert not hasattr(loader, "load_solver_with_net_prototxt")


def test_anything_with_to_proto_is_taken_as_its_message():
    from sparknet.models import lenet

    net = lenet.net(batch_size=4)
    assert loader.as_message(net, caffe_pb2.NetParameter) == net.to_proto()
    proto = net.to_proto()
    assert loader.as_message(proto, caffe_pb2.NetParameter) is proto
    assert loader.as_message(proto.SerializeToString(), caffe_pb2.NetParameter) == proto
    with pytest.raises(TypeError, match=r"NetParam.to_proto\(\) returned NetParameter, not a "
                       "caffe_pb2.SolverParameter"):
        loader.as_message(net, caffe_pb2.SolverParameter)
    with pytest.raises(TypeError, match="expected a caffe_pb2.NetParameter or an object with "
                       r"to_proto\(\), got int"):
        loader.as_message(3, caffe_pb2.NetParameter)


def test_old_solver_type_enum_is_upgraded(tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text('base_lr: 0.01\nlr_policy: "fixed"\nsolver_type: NESTEROV\n')
    solver = ProtoLoader.load_solver_prototxt(path)
    assert solver.type == "Nesterov" and not solver.HasField("solver_type")
    assert ProtoLoader.load_solver_prototxt(path, upgrade=False).solver_type == 1
    path.write_text('solver_type: ADAM\ntype: "Adam"\n')
    with pytest.raises(ValueError, match="not both"):
        ProtoLoader.load_solver_prototxt(path)


def test_save_prototxt_writes_atomically(tmp_path, monkeypatch, caffenet_zoo):
    path = tmp_path / "models" / "net.prototxt"
    ProtoLoader.save_prototxt(caffenet_zoo, path, header="CaffeNet\nsaved by a test")
    text = path.read_text()
    assert text.startswith("# CaffeNet\n# saved by a test\n")
    assert ProtoLoader.load_net_prototxt(path) == caffenet_zoo

    # A failed write leaves the old file whole, and no temporary file behind.
    def broken_replace(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        ProtoLoader.save_prototxt(NetParam.from_proto(caffenet_zoo), path)
    assert path.read_text() == text
    assert [p.name for p in path.parent.iterdir()] == ["net.prototxt"]


def test_save_goes_through_a_temporary_file_in_the_same_folder(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((Path(src).parent, Path(src).read_text()))
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", spy)
    ProtoLoader.save_prototxt(caffe_pb2.SolverParameter(base_lr=0.5), tmp_path / "s.prototxt")
    assert seen == [(tmp_path, "base_lr: 0.5\n")]


def test_sparknet_spellings_are_the_same_functions():
    pairs = {"loadNetPrototxt": "load_net_prototxt",
             "loadSolverPrototxt": "load_solver_prototxt",
             "loadSolverPrototxtWithNet": "load_solver_prototxt_with_net",
             "replaceDataLayers": "replace_data_layers",
             "savePrototxt": "save_prototxt", "dataLayers": "data_layers"}
    for camel, snake in pairs.items():
        assert getattr(ProtoLoader, camel) is getattr(ProtoLoader, snake) \
            is getattr(loader, snake)


def test_text_round_trip_of_every_corpus_file():
    for path in CORPUS.glob("*.prototxt"):
        net = ProtoLoader.load_net_prototxt(path, upgrade=False)
        again = text_format.Parse(ProtoLoader.to_prototxt(net), caffe_pb2.NetParameter())
        assert again == net, path.name


def test_the_proto_package_depends_on_protobuf_only():
    import ast
    source = Path(loader.__file__).read_text()
    imported = {alias.name.split(".")[0] if isinstance(node, ast.Import) else
                (node.module or "").split(".")[0]
                for node in ast.walk(ast.parse(source))
                if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names}
    assert imported <= {"__future__", "os", "re", "tempfile", "collections", "dataclasses",
                        "pathlib", "typing", "google", "sparknet"}
    assert "from sparknet.proto import caffe_pb2" in source
    assert "sparknet.dsl" not in source and "sparknet.engine" not in source
