"""Whatever Caffe rejects becomes a Python exception; the interpreter lives on.

The cases run one after the other in one fresh interpreter, each followed by a
training step that proves Caffe still works: were Caffe to abort (its CHECKs
call abort() in a stock build), that subprocess would die by a signal and the
case that killed it (and those after it) fail, rather than the whole test run.
"""
from __future__ import annotations

import subprocess
import textwrap

import pytest
from enginehelp import ROOT, run_isolated

PRELUDE = """
import sys
sys.path.insert(0, "tests")
import numpy as np
from enginehelp import lenet_net, lenet_solver, digit_batches
from sparknet.engine import CaffeNet, CaffeError
from sparknet.proto import caffe_pb2

def solver_for(net):
    return caffe_pb2.SolverParameter(base_lr=0.01, lr_policy="fixed", net_param=net)

def expect(make, kind=CaffeError):
    try:
        make()
    except kind as e:
        print("ERROR:", e)

def survive():
    # The interpreter and Caffe still work after the failure.
    net = CaffeNet(lenet_solver(batch=4))
    net.train(1, digit_batches(4))
    print("ALIVE")
"""

CASES = {
    "unknown layer type": ("""
        net = lenet_net()
        net.layer[2].type = "Convolutionn"
        expect(lambda: CaffeNet(solver_for(net)))
        """, ["layer 'conv1': Unknown layer type: Convolutionn"]),
    "bottom that does not exist": ("""
        net = lenet_net()
        net.layer[3].bottom[0] = "conv9"
        expect(lambda: CaffeNet(solver_for(net)))
        """, ["Unknown bottom blob 'conv9'", "pool1"]),
    "kernel larger than its input": ("""
        net = lenet_net()
        net.layer[4].convolution_param.kernel_size[0] = 40
        expect(lambda: CaffeNet(solver_for(net)))
        """, ["layer 'conv2' (Convolution), reading 'pool1' (64, 20, 12, 12), failed "
              "while Caffe set up the TRAIN net", "Check failed: shape[i] >= 0"]),
    # the other two messages of issue 11, item 5: each now names the layer and its type
    "num_output 0": ("""
        net = lenet_net()
        net.layer[2].convolution_param.num_output = 0
        expect(lambda: CaffeNet(solver_for(net)))
        """, ["layer 'conv1' (Convolution), reading 'data' (64, 1, 28, 28)", "num_output_ > 0"]),
    "zero input dimension": ("""
        net = lenet_net()
        net.layer[0].input_param.shape[0].dim[1] = 0
        expect(lambda: CaffeNet(solver_for(net)))
        """, ["layer 'conv1' (Convolution), reading 'data' (64, 0, 28, 28)",
              "Check failed: blob->count()"]),
    "a TEST-only layer that fails names the TEST net": ("""
        net = lenet_net()
        acc = [l for l in net.layer if l.type == "Accuracy"][0]
        acc.accuracy_param.top_k = 11
        c = CaffeNet(solver_for(net))
        expect(lambda: c.test_output_names)
        """, ["layer 'accuracy' (Accuracy), reading 'ip2' (64, 10), 'label' (64, 1), "
              "failed while Caffe set up the TEST net", "top_k"]),
    "unreadable caffemodel": ("""
        open("garbage.caffemodel", "wb").write(b"\\x08\\xff" * 100)
        net = CaffeNet(lenet_solver())
        before = net.get_weights()
        try:
            net.load_weights("garbage.caffemodel")
        except CaffeError as e:
            print("ERROR:", e)
        assert net.get_weights() == before
        """, ["garbage.caffemodel"]),
    "shape mismatch on load_weights": ("""
        small = lenet_net()
        small.layer[6].inner_product_param.num_output = 300
        other = CaffeNet(solver_for(small))
        other.save_weights("small.caffemodel")
        net = CaffeNet(lenet_solver())
        before = net.get_weights()
        try:
            net.load_weights("small.caffemodel")
        except ValueError as e:
            print("ERROR:", e)
        assert net.get_weights() == before  # nothing was copied
        """, ["layer 'ip1' blob 0: the file has shape (300, 800), the net (500, 800)",
              "layer 'ip2' blob 0"]),
    "missing caffemodel": ("""
        try:
            CaffeNet(lenet_solver()).load_weights("nowhere.caffemodel")
        except ValueError as e:
            print("ERROR:", e)
        """, ["nowhere.caffemodel: no such file"]),
    "loss inputs of different sizes": ("""
        net = lenet_net()
        net.layer[-1].type = "EuclideanLoss"   # needs equal counts: 64x10 vs 64x1
        expect(lambda: CaffeNet(solver_for(net)))
        """, ["Check failed", "Inputs must have the same dimension"]),
}


MARK = "=== case "


@pytest.fixture(scope="module")
def rejections(tmp_path_factory) -> tuple[dict[str, str], subprocess.CompletedProcess]:
    """Every case in one fresh interpreter, in order: each case's output by name.

    One interpreter start instead of one per case (the module's main cost). Each
    case runs in its own function (no names leak from one to the next) and is
    followed by ``survive()``; a Python exception a case did not expect is
    printed in its section rather than ending the run.
    """
    code = [PRELUDE.replace('sys.path.insert(0, "tests")',
                            f'sys.path.insert(0, {str(ROOT / "tests")!r})'),
            "import traceback\nsys.stdout.reconfigure(line_buffering=True)\n"]
    for i, (case, (body, _)) in enumerate(CASES.items()):
        code.append(f"def case_{i}():\n{textwrap.indent(textwrap.dedent(body), '    ')}\n"
                    f"print({MARK + case!r})\n"
                    f"try:\n    case_{i}()\nexcept Exception:\n"
                    f"    print('UNEXPECTED', traceback.format_exc())\n"
                    f"survive()\n")
    done = run_isolated("\n".join(code), cwd=tmp_path_factory.mktemp("rejections"))
    sections = {}
    for part in done.stdout.split(MARK)[1:]:
        name, _, out = part.partition("\n")
        sections[name] = out
    return sections, done


@pytest.mark.parametrize("case", list(CASES))
def test_caffe_rejection_is_an_exception(case, rejections):
    sections, done = rejections
    _, expected = CASES[case]
    assert case in sections, (f"the interpreter ended (exit {done.returncode}) before this "
                              f"case\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    out = sections[case]
    assert "UNEXPECTED" not in out, out
    assert "ERROR:" in out, out + done.stderr[-2000:]
    for fragment in expected:
        assert fragment in out, out
    assert out.rstrip().endswith("ALIVE"), f"exit {done.returncode}\n{out}\n{done.stderr[-3000:]}"


def test_the_interpreter_exits_cleanly_after_every_rejection(rejections):
    sections, done = rejections
    assert list(sections) == list(CASES)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stderr[-3000:]}"


def test_a_label_beyond_the_classes_is_refused_before_caffe_trains_on_it():
    """Caffe checks labels only in debug builds: label 10 of 10 classes trained on
    whatever lay past the scores, and a very large one crashed (SIGSEGV)."""
    import numpy as np
    from enginehelp import digit_batches, lenet_solver

    from sparknet.engine import CaffeNet

    net = CaffeNet(lenet_solver(batch=4))
    batch = next(digit_batches(4))
    before = net.get_weights().copy()
    label = batch["label"].copy()
    label[3] = 10
    with pytest.raises(ValueError, match=r"input blob 'label' holds 10 \(example 3; 1 of 4 "
                       r"values are bad\), but layer 'loss' \(SoftmaxWithLoss\) reads it as a "
                       r"class index of 'ip2', which has 10 classes"):
        net.train(1, [dict(batch, label=label)])
    assert net.iteration == 0 and net.get_weights() == before
    assert np.isfinite(net.train(1, [batch])).all() and net.iteration == 1


def test_ignore_label_is_honoured():
    import numpy as np
    from enginehelp import LENET, digit_batches
    from google.protobuf import text_format

    from sparknet.engine import CaffeNet
    from sparknet.proto import caffe_pb2

    text = (LENET / "lenet_train_test.prototxt").read_text().replace("dim: 64", "dim: 4")
    text = text.replace('top: "loss"', 'top: "loss"\n  loss_param { ignore_label: -1 }')
    proto = text_format.Parse(text, caffe_pb2.NetParameter())
    net = CaffeNet(caffe_pb2.SolverParameter(base_lr=0.01, lr_policy="fixed", net_param=proto))
    batch = next(digit_batches(4))
    ignored = dict(batch, label=np.array([-1, -1, -1, -1]))
    assert net.forward(ignored, phase="TRAIN")["loss"] == 0  # every label ignored: no loss
    assert np.isfinite(net.train(1, [ignored])).all()
    with pytest.raises(ValueError, match="or -1 \\(its ignore_label\\)"):
        net.train(1, [dict(batch, label=np.array([-2, 0, 1, 2]))])
