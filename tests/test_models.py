"""The shipped models: DSL modules and prototxt agree, and each trains in Caffe."""
from __future__ import annotations

import numpy as np
import pytest

from sparknet import models
from sparknet.dsl import AccuracyLayer, InputLayer, NetParam, Phase, SolverParam
from sparknet.proto import ProtoLoader

NAMES = ["lenet", "cifar10_quick", "caffenet", "googlenet"]


@pytest.fixture(params=NAMES)
def model(request):
    return models.get(request.param)


def test_every_shipped_model_is_listed():
    assert list(models.MODELS) == NAMES
    with pytest.raises(ValueError, match="no shipped model 'alexnet'"):
        models.get("alexnet")


def test_dsl_module_and_prototxt_compile_to_the_same_net(root, model):
    prototxt = ProtoLoader.load_net_prototxt(root / model.PROTOTXT)
    assert model.net().to_proto() == prototxt
    assert NetParam.from_proto(prototxt) == model.net()


def test_the_prototxt_converts_to_python_that_builds_the_module_net(root, model):
    source = NetParam.load(root / model.PROTOTXT).to_python(variable="converted")
    namespace: dict = {}
    exec(source, namespace)
    assert namespace["converted"] == model.net()
    assert all(len(line) <= 110 for line in source.splitlines())


def test_dsl_module_and_prototxt_compile_to_the_same_solver(root, model):
    from_files = ProtoLoader.load_solver_prototxt_with_net(
        root / model.SOLVER_PROTOTXT, ProtoLoader.load_net_prototxt(root / model.PROTOTXT))
    assert model.solver().to_proto() == from_files
    assert SolverParam.from_proto(from_files) == model.solver()
    # The solver file names its net file, relative to the repository.
    assert ProtoLoader.load_solver_prototxt_with_net(root / model.SOLVER_PROTOTXT) == from_files


def test_fed_by_data_and_label_inputs_scored_by_accuracy_in_test(model):
    net = model.net()
    for phase in ("TRAIN", "TEST"):
        inputs = [layer for layer in net.layers_in(phase) if isinstance(layer, InputLayer)]
        assert [layer.tops for layer in inputs] == [("data",), ("label",)]
    accuracy = [layer for layer in net.layers if isinstance(layer, AccuracyLayer)
                and layer.tops == ("accuracy",)]
    assert len(accuracy) == 1
    assert accuracy[0].active_in(Phase.TEST) and not accuracy[0].active_in(Phase.TRAIN)


def test_batch_size_sets_the_inputs(model):
    shapes = model.net(batch_size=3).shapes()
    assert shapes["TRAIN"]["data"][0] == shapes["TRAIN"]["label"][0] == 3
    assert model.solver(batch_size=3).net == model.net(batch_size=3)


def test_lenet_keeps_the_shapes_other_code_relies_on():
    shapes = models.lenet.net().shapes()
    for phase in ("TRAIN", "TEST"):
        assert shapes[phase]["data"] == (64, 1, 28, 28) and shapes[phase]["label"] == (64, 1)
    assert shapes["TEST"]["accuracy"] == () and "accuracy" not in shapes["TRAIN"]


def test_imagenet_models_tell_the_pipeline_how_to_crop():
    for module, crop in ((models.caffenet, 227), (models.googlenet, 224)):
        transforms = ProtoLoader.transform_params(module.net())
        assert transforms["TRAIN"].mirror and not transforms["TEST"].mirror
        assert transforms["TRAIN"].crop_size == transforms["TEST"].crop_size == crop
        assert list(transforms["TEST"].mean_value) == [104, 117, 123]


def test_classes_sets_the_classifier():
    assert models.caffenet.net(classes=10).shapes("TEST")["fc8"] == (50, 10)
    assert models.googlenet.net(classes=10).shapes("TRAIN")["loss1/classifier"] == (32, 10)


def small_solver(module) -> SolverParam:
    """Batch 2 for training, 1 for testing: big nets stay cheap on a shared machine."""
    if module in (models.caffenet, models.googlenet):
        return module.solver(batch_size=2, test_batch_size=1)
    return module.solver(batch_size=2)


def test_builds_in_caffe_with_the_predicted_shapes_and_trains_a_step(model):
    from sparknet.engine import CaffeNet
    solver = small_solver(model)
    engine = CaffeNet(solver)
    for phase in ("TRAIN", "TEST"):
        caffe = {blob: shape for blob, shape in engine.blob_shapes(phase).items()
                 if "_split_" not in blob}
        assert caffe == solver.net.shapes(phase)
    rng = np.random.default_rng(0)
    data = rng.standard_normal(engine.input_shapes["data"]).astype(np.float32)
    label = rng.integers(0, 10, engine.input_shapes["label"]).astype(np.float32)
    before = engine.get_weights().flat.copy()
    losses = engine.train(1, [{"data": data, "label": label}])  # forward, backward, update
    assert losses.shape == (1,) and np.isfinite(losses[0]) and losses[0] > 0
    assert not np.array_equal(engine.get_weights().flat, before)  # the step learned
    scores = engine.test([{"data": data[:1], "label": label[:1]}])
    assert "accuracy" in scores and 0.0 <= scores["accuracy"] <= 1.0
