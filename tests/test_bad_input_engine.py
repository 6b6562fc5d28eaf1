"""A corpus of user mistakes with prototxt files, DSL objects and engine calls.

Each case is one line of data: the mistake, the error it must raise, and what
the message must name (the file and line, the layer and field, the blob, the
value). The engine cases run together in one fresh interpreter: were one of
them to crash the process (Caffe's debug-only label checks, a division by a
zero batch), the cases from there on fail with the signal instead of the test
run dying. The last engine statement trains a step, so the process is known
to be alive and Caffe usable after every mistake.
"""
from __future__ import annotations

import json
import textwrap

import pytest
from enginehelp import ROOT, run_isolated

from sparknet.dsl import (
    AccuracyLayer,
    ConvolutionLayer,
    DropoutLayer,
    EltwiseLayer,
    EltwiseOp,
    EmbedLayer,
    Filler,
    InnerProductLayer,
    InputLayer,
    LrPolicy,
    NetDefinitionError,
    NetParam,
    PoolingLayer,
    ReLULayer,
    SigmoidLayer,
    SoftmaxWithLoss,
    SolverParam,
)
from sparknet.proto import PrototxtError

LENET = (ROOT / "caffe" / "models" / "lenet" / "lenet_train_test.prototxt").read_text()

# -- prototxt files --------------------------------------------------------------------
# (mistake, LeNet's text -> the mistaken text, error, fragments). In fragments,
# "{file}" is the file's path and "{line:TEXT}" the line where TEXT first occurs.
PROTOTXT = [
    ("unclosed layer block", ("  name: \"ip2\"", "  name: \"ip2\" {"), PrototxtError,
     ["{file}:{line:name: \"ip2\"}"]),
    ("misspelled field", ("num_output: 500", "num_ouput: 500"), PrototxtError,
     ["{file}:{line:num_ouput}", "'num_ouput'"]),
    ("string for a number", ("num_output: 500", "num_output: \"five hundred\""),
     PrototxtError, ["{file}:{line:five hundred}", "num_output"]),
    ("unknown enum value", ("pool: MAX", "pool: MAXIMUM"), PrototxtError,
     ["{file}:{line:MAXIMUM}", "MAXIMUM"]),
    ("negative value of an unsigned field", ("kernel_size: 5\n    stride: 1\n    weight_filler",
                                             "kernel_size: -5\n    stride: 1\n    weight_filler"),
     PrototxtError, ["{file}:{line:kernel_size: -5}", "kernel_size"]),
    ("a field of later BVLC Caffe", ("pool: MAX", "pool: MAX\n    round_mode: CEIL"),
     PrototxtError, ["{file}:{line:round_mode}", "'round_mode'", "ceil_mode"]),
    ("a field set twice", ("num_output: 500", "num_output: 500\n    num_output: 400"),
     PrototxtError, ["{file}:{line:num_output: 400}", "num_output"]),
    ("kernel larger than its input", ("num_output: 50\n    kernel_size: 5",
                                      "num_output: 50\n    kernel_size: 15"),
     NetDefinitionError, ["{file}:{line:name: \"conv2\"}", "layer 'conv2'", "'kernel'"]),
    ("bottom misspelled", ("bottom: \"pool1\"", "bottom: \"pool_1\""), NetDefinitionError,
     ["{file}:{line:name: \"conv2\"}", "'pool_1'", "did you mean 'pool1'"]),
    ("convolution without a kernel", ("    kernel_size: 5\n    stride: 1\n"
                                      "    weight_filler { type: \"xavier\" }\n"
                                      "    bias_filler { type: \"constant\" }\n  }\n}\n"
                                      "layer {\n  name: \"pool1\"", "    stride: 1\n"
                                      "    weight_filler { type: \"xavier\" }\n"
                                      "    bias_filler { type: \"constant\" }\n  }\n}\n"
                                      "layer {\n  name: \"pool1\""),
     NetDefinitionError, ["{file}:{line:name: \"conv1\"}", "layer 'conv1'", "'kernel'"]),
    ("group that does not divide", ("num_output: 50", "num_output: 50\n    group: 4"),
     NetDefinitionError, ["{file}:{line:name: \"conv2\"}", "layer 'conv2'", "'group'"]),
    ("top produced twice", ("top: \"ip2\"", "top: \"ip1\""), NetDefinitionError,
     ["{file}:{line:name: \"ip2\"}", "layer 'ip2'", "'tops'"]),
    ("label count does not match the predictions", ("dim: 64 dim: 1 }", "dim: 32 dim: 1 }"),
     NetDefinitionError, ["{file}:{line:name: \"loss\"}", "layer 'loss'", "'bottoms'"]),
    ("input with a zero dimension", ("dim: 64 dim: 1 dim: 28", "dim: 64 dim: 0 dim: 28"),
     NetDefinitionError, ["{file}:{line:name: \"data\"}", "layer 'data'", "'shape'"]),
    ("a layer type this Caffe lacks", ("type: \"ReLU\"", "type: \"Swish\""),
     NetDefinitionError, ["{file}:{line:name: \"relu1\"}", "layer 'relu1'", "Swish"]),
]


def _expand(fragment: str, path, text: str) -> str:
    fragment = fragment.replace("{file}", str(path))
    if "{line:" in fragment:
        start = fragment.index("{line:")
        end = fragment.index("}", start + 6)
        marker = fragment[start + 6:end]
        while fragment[end + 1:end + 2] == "}":  # a marker ending in "}"
            end += 1
            marker = fragment[start + 6:end]
        line = next(i for i, row in enumerate(text.splitlines(), 1) if marker in row)
        fragment = fragment[:start] + str(line) + fragment[end + 1:]
    return fragment


@pytest.mark.parametrize("edit, error, fragments",
                         [pytest.param(*case[1:], id=case[0]) for case in PROTOTXT])
def test_a_mistaken_prototxt_names_the_file_and_line(edit, error, fragments, tmp_path):
    old, new = edit
    assert old in LENET, old
    text = LENET.replace(old, new, 1)  # the first occurrence
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    with pytest.raises(error) as info:
        NetParam.load(path)
    for fragment in fragments:
        assert _expand(fragment, path, text) in str(info.value), str(info.value)
    assert path.read_text() == text  # nothing touched the user's file


def test_a_binary_file_given_as_prototxt_is_named(tmp_path):
    from enginehelp import lenet_solver

    from sparknet.engine import CaffeNet

    path = tmp_path / "lenet.caffemodel"
    CaffeNet(lenet_solver(batch=2)).save_weights(path)
    with pytest.raises(PrototxtError, match=rf"^{path}:\d+: not prototxt text.*caffemodel"):
        NetParam.load(path)


# -- DSL objects -----------------------------------------------------------------------
# (mistake, what the user wrote, the layer or object named, the field named)
DSL = [
    ("negative num_output", lambda: InnerProductLayer("fc", ["x"], num_output=-5), "fc",
     "num_output"),
    ("negative dropout ratio", lambda: DropoutLayer("drop", ["x"], dropout_ratio=-0.1),
     "drop", "dropout_ratio"),
    ("zero pooling stride", lambda: PoolingLayer("pool", ["x"], kernel=2, stride=0), "pool",
     "stride"),
    ("a number for a bottom", lambda: ReLULayer("relu", [3]), "relu", "bottoms"),
    ("a fractional input dimension", lambda: InputLayer("data", shape=(2, 2.5)), "data",
     "shape"),
    ("a NaN loss weight",
     lambda: SoftmaxWithLoss("loss", ["a", "b"], loss_weight=[float("nan")]), "loss",
     "loss_weight"),
    ("an embedding of no rows", lambda: EmbedLayer("embed", ["x"], num_output=4, input_dim=0),
     "embed", "input_dim"),
    ("two bottoms for a one-bottom layer", lambda: SigmoidLayer("sig", ["a", "b"]), "sig",
     "bottoms"),
    ("coefficients for an Eltwise MAX",
     lambda: EltwiseLayer("max", ["a", "b"], operation=EltwiseOp.MAX, coeff=[1, 2]), "max",
     "coeff"),
    ("accuracy over the top 0",
     lambda: AccuracyLayer("acc", ["x", "y"], top_k=0), "acc", "top_k"),
    ("a 3-d kernel on 2-d images",
     lambda: NetParam("n", InputLayer("d", shape=(2, 3, 8, 8)),
                      ConvolutionLayer("conv", ["d"], num_output=2, kernel=(3, 3, 3))),
     "conv", "kernel"),
    ("a NaN filler deviation", lambda: Filler("gaussian", std=float("nan")), None, "std"),
    ("a NaN learning rate",
     lambda: SolverParam(NetParam("n", InputLayer("d", shape=(1, 2))), base_lr=float("nan"),
                         lr_policy=LrPolicy.fixed()), None, "base_lr"),
    ("momentum of 1.5",
     lambda: SolverParam(NetParam("n", InputLayer("d", shape=(1, 2))), base_lr=0.1,
                         momentum=1.5, lr_policy=LrPolicy.fixed()), None, "momentum"),
]


@pytest.mark.parametrize("make, layer, field",
                         [pytest.param(*case[1:], id=case[0]) for case in DSL])
def test_a_mistaken_dsl_object_names_the_layer_and_field(make, layer, field):
    with pytest.raises(NetDefinitionError) as info:
        make()
    assert (info.value.layer, info.value.field) == (layer, field)
    assert f"'{field}'" in str(info.value)
    if layer is not None:
        assert f"layer '{layer}'" in str(info.value)


# -- engine calls ------------------------------------------------------------------------
PRELUDE = f"""
import json, os, sys
sys.path.insert(0, {str(ROOT / "tests")!r})
import numpy as np
from google.protobuf import text_format
from enginehelp import lenet_net, lenet_solver, digit_batches
from sparknet.engine import CaffeNet, CaffeError, set_blas_threads
from sparknet.proto import caffe_pb2
set_blas_threads(1)
LENET = open({str(ROOT / "caffe" / "models" / "lenet" / "lenet_train_test.prototxt")!r}).read()
B = next(digit_batches(4))

def solver(text):
    net = text_format.Parse(text, caffe_pb2.NetParameter())
    return caffe_pb2.SolverParameter(base_lr=0.01, lr_policy="fixed", net_param=net,
                                     random_seed=1)

def lenet(old=None, new=None):
    text = LENET.replace("dim: 64", "dim: 4")
    if old is not None:
        assert old in text, old
        text = text.replace(old, new, 1)
    return CaffeNet(solver(text))

def labels(*values):
    return dict(B, label=np.array(values, np.float64))

def head(loss, extra=""):
    # 4 examples of 6 features, 5 classes: scores, their softmax, and a loss layer.
    return CaffeNet(solver('''
      layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ dim: 4 dim: 6 }} }} }}
      layer {{ name: "label" type: "Input" top: "label"
              input_param {{ shape {{ dim: 4 }} }} }}
      ''' + extra + '''
      layer {{ name: "scores" type: "InnerProduct" bottom: "x" top: "scores"
              inner_product_param {{ num_output: 5 weight_filler {{ type: "xavier" }} }} }}
      layer {{ name: "prob" type: "Softmax" bottom: "scores" top: "prob" }}
      ''' + loss))

X = np.ones((4, 6), np.float32)

def reading(source):
    # a TRAIN net whose Data layer reads `source`, an LMDB
    return solver('layer {{ name: "mnist" type: "Data" top: "data" top: "label" include '
                  '{{ phase: TRAIN }} data_param {{ source: "%s" batch_size: 4 backend: LMDB }} '
                  '}}' % source)

def run(case, code):
    print("START", case, flush=True)
    try:
        exec(code, globals())
    except Exception as e:
        print("CASE " + json.dumps([case, type(e).__name__, str(e)]), flush=True)
    else:
        print("CASE " + json.dumps([case, None, ""]), flush=True)
"""

SURVIVE = """
net = CaffeNet(lenet_solver(batch=4))
assert np.isfinite(net.train(2, digit_batches(4))).all()
print("ALIVE", flush=True)
"""

# (mistake, the statement that makes it, error type, fragments of the message)
ENGINE = [
    # labels: Caffe checks them only in debug builds and reads out of bounds otherwise
    ("label equal to the number of classes", "lenet().train(1, [labels(0, 1, 2, 10)])",
     "ValueError", ["input blob 'label' holds 10", "layer 'loss' (SoftmaxWithLoss)",
                    "'ip2', which has 10 classes"]),
    ("a very large label", "lenet().train(1, [labels(0, 1, 2e9, 3)])", "ValueError",
     ["'label' holds 2e+09", "layer 'loss'", "10 classes"]),
    ("a negative label", "lenet().train(1, [labels(0, -1, 2, 3)])", "ValueError",
     ["'label' holds -1 (example 1", "layer 'loss'"]),
    ("a NaN label", "lenet().train(1, [labels(0, 1, np.nan, 3)])", "ValueError",
     ["'label' holds nan (example 2", "layer 'loss'"]),
    ("a fractional label", "lenet().train(1, [labels(0, 1.5, 2, 3)])", "ValueError",
     ["'label' holds 1.5", "integers in [0, 10)"]),
    ("a label other than ignore_label outside the classes",
     "lenet('top: \"loss\"', 'top: \"loss\" loss_param { ignore_label: 255 }')"
     ".train(1, [labels(255, 1, 254, 3)])", "ValueError",
     ["'label' holds 254 (example 2", "or 255 (its ignore_label)"]),
    ("a label out of range in a test batch", "lenet().test([labels(0, 1, 2, 11)])",
     "ValueError", ["'label' holds 11", "layer 'accuracy' (Accuracy)", "10 classes"]),
    ("a label out of range in a forward pass",
     "lenet().forward(labels(12, 1, 2, 3), phase='TRAIN')", "ValueError",
     ["'label' holds 12", "layer 'loss'"]),
    ("a label beyond an Accuracy axis of 2 classes",
     "head('layer { name: \"acc\" type: \"Accuracy\" bottom: \"two\" bottom: \"label\" "
     "top: \"acc\" }', 'layer { name: \"two\" type: \"Input\" top: \"two\" input_param "
     "{ shape { dim: 4 dim: 2 } } }').forward({'x': X, 'two': np.zeros((4, 2)), "
     "'label': np.array([0, 1, 2, 1])}, phase='TRAIN')", "ValueError",
     ["'label' holds 2", "layer 'acc' (Accuracy)", "'two', which has 2 classes"]),
    ("a label out of range for MultinomialLogisticLoss",
     "head('layer { name: \"mll\" type: \"MultinomialLogisticLoss\" bottom: \"prob\" "
     "bottom: \"label\" top: \"mll\" }').train(1, [{'x': X, 'label': [0, 5, 1, 1]}])",
     "ValueError", ["'label' holds 5", "layer 'mll' (MultinomialLogisticLoss)",
                    "5 classes"]),
    ("a label out of range for HingeLoss",
     "head('layer { name: \"hinge\" type: \"HingeLoss\" bottom: \"scores\" bottom: \"label\" "
     "top: \"hinge\" }').train(1, [{'x': X, 'label': [0, 1, 1, 7]}])", "ValueError",
     ["'label' holds 7 (example 3", "layer 'hinge' (HingeLoss)"]),
    ("a label out of range for InfogainLoss",
     "head('layer { name: \"gain\" type: \"InfogainLoss\" bottom: \"prob\" bottom: \"label\" "
     "bottom: \"H\" top: \"gain\" }', 'layer { name: \"H\" type: \"Input\" top: \"H\" "
     "input_param { shape { dim: 1 dim: 1 dim: 5 dim: 5 } } }').train(1, [{'x': X, "
     "'label': [0, 1, 6, 1], 'H': np.eye(5).reshape(1, 1, 5, 5)}])", "ValueError",
     ["'label' holds 6", "layer 'gain' (InfogainLoss)"]),
    ("a label reshaped before the loss",
     "head('layer { name: \"flat\" type: \"Reshape\" bottom: \"label\" top: \"flat\" "
     "reshape_param { shape { dim: 4 } } } layer { name: \"loss\" type: \"SoftmaxWithLoss\" "
     "bottom: \"scores\" bottom: \"flat\" top: \"loss\" }')"
     ".train(1, [{'x': X, 'label': [0, 1, 9, 1]}])", "ValueError",
     ["input blob 'label' holds 9", "layer 'loss' (SoftmaxWithLoss)", "5 classes"]),
    ("a word index beyond an embedding",
     "CaffeNet(solver('layer { name: \"w\" type: \"Input\" top: \"w\" input_param { shape "
     "{ dim: 4 } } } layer { name: \"embed\" type: \"Embed\" bottom: \"w\" top: \"e\" "
     "embed_param { num_output: 3 input_dim: 7 weight_filler { type: \"xavier\" } } }'))"
     ".forward({'w': [0, 1, 7, 2]}, phase='TRAIN')", "ValueError",
     ["input blob 'w' holds 7", "layer 'embed' (Embed)", "input_dim 7"]),
    # batches that do not fit the net
    ("images of another size", "lenet().train(1, [dict(B, data=np.zeros((4, 1, 32, 32)))])",
     "ValueError", ["input blob 'data' has shape (4, 1, 28, 28)", "(4, 1, 32, 32)"]),
    ("strings for pixels", "lenet().train(1, [dict(B, data=np.full((4, 1, 28, 28), 'a'))])",
     "ValueError", ["input blob 'data'", "dtype <U1"]),
    ("a misspelled input name", "lenet().train(1, [dict(B, image=B['data'])])",
     "ValueError", ["no input blob named 'image'", "data, label"]),
    ("a training batch without labels", "lenet().train(1, [{'data': B['data']}])",
     "ValueError", ["no array for input blob 'label'"]),
    ("inputs of different batch sizes",
     "lenet().forward({'data': np.zeros((3, 1, 28, 28)), 'label': np.zeros(5)})",
     "ValueError", ["input blob 'label': batch of 5", "other inputs have 3"]),
    ("an empty batch", "lenet().forward({'data': np.zeros((0, 1, 28, 28))})", "ValueError",
     ["input blob 'data'", "empty array, shape (0, 1, 28, 28)"]),
    ("a string for a batch", "lenet().train(1, ['data'])", "TypeError",
     ["a batch is a dict", "got str"]),
    ("fewer batches than steps", "lenet().train(3, [B])", "ValueError",
     ["ran out after 1 of 3 steps"]),
    ("NaN pixels", "n = lenet(); n.train(1, [dict(B, data=np.full((4, 1, 28, 28), np.nan))]); "
     "raise RuntimeError(n.last_refusal)", "RuntimeError",
     ["input blob 'data' holds 3136 NaN", "step 1 of 1"]),
    ("infinite pixels in one example",
     "n = lenet(); d = B['data'].copy(); d[2, 0, 0, :3] = np.inf; "
     "n.train(1, [dict(B, data=d)]); raise RuntimeError(n.last_refusal)", "RuntimeError",
     ["input blob 'data' holds 3 inf (first in example 2)"]),
    # nets given as prototxt straight to the engine: Caffe's setup errors name the layer
    ("kernel larger than its input (prototxt)",
     "lenet('kernel_size: 5\\n    stride: 1\\n    weight_filler { type: \"xavier\" }\\n"
     "    bias_filler { type: \"constant\" }\\n  }\\n}\\nlayer {\\n  name: \"pool2\"', "
     "'kernel_size: 25\\n    stride: 1\\n    weight_filler { type: \"xavier\" }\\n"
     "    bias_filler { type: \"constant\" }\\n  }\\n}\\nlayer {\\n  name: \"pool2\"')",
     "CaffeError", ["layer 'conv2' (Convolution), reading 'pool1' (4, 20, 12, 12), failed",
      "TRAIN net", "shape[i] >= 0"]),
    ("num_output 0 (prototxt)", "lenet('num_output: 500', 'num_output: 0')", "CaffeError",
     ["layer 'ip1' (InnerProduct), reading 'pool2' (4, 50, 4, 4)", "Check failed"]),
    ("a zero input dimension (prototxt)",
     "lenet('dim: 4 dim: 1 dim: 28', 'dim: 4 dim: 0 dim: 28')", "CaffeError",
     ["layer 'conv1' (Convolution), reading 'data' (4, 0, 28, 28)", "Check failed"]),
    ("a misspelled layer type (prototxt)", "lenet('type: \"ReLU\"', 'type: \"Relu\"')",
     "CaffeError", ["layer 'relu1'", "Unknown layer type: Relu", "ReLU"]),
    ("a Reshape that fixes the batch size, fed another",
     "n = CaffeNet(solver(LENET.replace('dim: 64', 'dim: 4') + 'layer { name: \"fixed\" "
     "type: \"Reshape\" bottom: \"ip2\" top: \"fixed\" reshape_param { shape { dim: 4 dim: 10 "
     "} } }')); n.forward({'data': B['data'][:2], 'label': B['label'][:2]})", "CaffeError",
     ["layer 'fixed' (Reshape) cannot take its new input shapes"]),
    ("a Data layer whose LMDB does not exist", "CaffeNet(reading('no_such_lmdb'))",
     "CaffeError", ["layer 'mnist' (Data)", "data_param.source 'no_such_lmdb'",
                    "No such file"]),
    ("a Data layer over an empty LMDB",
     "import lmdb; lmdb.open('empty_lmdb').close(); CaffeNet(reading('empty_lmdb'))",
     "CaffeError", ["layer 'mnist' (Data)", "'empty_lmdb' (LMDB)", "it holds no records"]),
    ("a Data layer over an LMDB of something else",
     "import lmdb; env = lmdb.open('other_lmdb'); txn = env.begin(write=True); "
     "txn.put(b'00000001', b'\\xff\\xff\\xff'); txn.commit(); env.close(); "
     "CaffeNet(reading('other_lmdb'))", "CaffeError",
     ["layer 'mnist' (Data)", "first record (key '00000001') is not a caffe.Datum"]),
    ("an unknown learning-rate policy",
     "s = lenet_solver(batch=4); s.lr_policy = 'cosine'; CaffeNet(s)", "ValueError",
     ["lr_policy is 'cosine'"]),
    # weights and solver state from elsewhere
    ("a caffemodel of another net",
     "from sparknet.dsl import *\n"
     "o = CaffeNet(SolverParam(NetParam('o', InputLayer('data', shape=(4, 1, 28, 28)), "
     "InputLayer('label', shape=(4,)), InnerProductLayer('fc', ['data'], num_output=10), "
     "SoftmaxWithLoss('loss', ['fc', 'label'])), base_lr=0.1, lr_policy=LrPolicy.fixed()))\n"
     "o.save_weights('other.caffemodel'); lenet().load_weights('other.caffemodel')",
     "ValueError", ["other.caffemodel has no weights for any layer"]),
    ("a caffemodel whose layers have other shapes",
     "lenet('num_output: 500', 'num_output: 300').save_weights('small.caffemodel'); "
     "lenet().load_weights('small.caffemodel')", "ValueError",
     ["small.caffemodel does not fit", "layer 'ip1' blob 0: the file has shape (300, 800)"]),
    ("a truncated caffemodel",
     "lenet().save_weights('w.caffemodel'); data = open('w.caffemodel', 'rb').read(); "
     "open('cut.caffemodel', 'wb').write(data[:len(data) // 2]); "
     "lenet().load_weights('cut.caffemodel')", "CaffeError",
     ["cut.caffemodel", "Failed to parse NetParameter"]),
    ("a prototxt given as a caffemodel",
     "open('text.caffemodel', 'w').write(LENET); lenet().load_weights('text.caffemodel')",
     "CaffeError", ["text.caffemodel"]),
    ("a solverstate of another solver",
     "from sparknet.dsl import *\n"
     "o = CaffeNet(SolverParam(NetParam('o', InputLayer('data', shape=(4, 1, 28, 28)), "
     "InputLayer('label', shape=(4,)), InnerProductLayer('fc', ['data'], num_output=10), "
     "SoftmaxWithLoss('loss', ['fc', 'label'])), base_lr=0.1, momentum=0.9, "
     "lr_policy=LrPolicy.fixed()))\n"
     "o.snapshot('snap/other'); lenet().restore('snap/other_iter_0.solverstate')",
     "CaffeError", ["snap/other_iter_0.solverstate", "history"]),
    ("a truncated solverstate",
     "n = lenet(); n.snapshot('snap/lenet'); "
     "open('cut.solverstate', 'wb').write(open('snap/lenet_iter_0.solverstate', 'rb')"
     ".read()[:7]); n.restore('cut.solverstate')", "CaffeError", ["cut.solverstate"]),
    ("a flat weight array of the wrong size",
     "lenet().set_weights(np.zeros(10, np.float32))", "ValueError",
     ["1-d with 431080 values", "got shape (10,)"]),
    ("float64 buffer for get_weights",
     "n = lenet(); n.get_weights(out=np.zeros(n.num_params))", "ValueError",
     ["out must be", "got dtype float64"]),
    ("an unknown phase", "lenet().forward(B, phase='VALIDATE')", "ValueError",
     ["phase must be 'TRAIN' or 'TEST'", "'VALIDATE'"]),
]


@pytest.fixture(scope="module")
def engine_results(tmp_path_factory):
    """Every engine case, run in order in one fresh interpreter."""
    cwd = tmp_path_factory.mktemp("engine-corpus")
    code = PRELUDE + "".join(f"run({case!r}, {textwrap.dedent(stmt)!r})\n"
                             for case, stmt, *_ in ENGINE) + SURVIVE
    done = run_isolated(code, cwd=cwd)
    results = {}
    for line in done.stdout.splitlines():
        if line.startswith("CASE "):
            case, kind, message = json.loads(line[5:])
            results[case] = (kind, message)
    return results, done


@pytest.mark.parametrize("statement, error, fragments",
                         [pytest.param(*case[1:], id=case[0]) for case in ENGINE])
def test_a_mistaken_engine_call_raises_naming_what_was_wrong(engine_results, request,
                                                             statement, error, fragments):
    results, done = engine_results
    case = request.node.callspec.id
    assert case in results, (f"the interpreter died (exit {done.returncode}) at or before "
                             f"this case:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    kind, message = results[case]
    assert kind == error, f"{statement}\nraised {kind}: {message}"
    for fragment in fragments:
        assert fragment in message, message


def test_the_interpreter_lives_through_every_engine_mistake(engine_results):
    _, done = engine_results
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stderr[-3000:]}"
    assert done.stdout.rstrip().endswith("ALIVE"), done.stdout[-2000:]


def test_the_corpus_holds_at_least_35_distinct_mistakes():
    names = [case[0] for case in PROTOTXT + DSL + ENGINE] + ["binary file as prototxt"]
    assert len(set(names)) == len(names) >= 35
