"""A step whose forward pass goes non-finite is refused before Caffe's backward pass.

Caffe's CPU max pooling, given a window of nothing but NaN, keeps the argmax -1
and its backward pass then writes out of bounds (a "double free" at exit, or a
crash later). The engine checks the loss (and the max-pooling outputs) between
forward and backward: such a step returns its non-finite loss, changes no
weight, no solver history and no iteration count, and training stops there.
The NaN cases run in a fresh interpreter, so that a regression fails one test
(a signal exit) rather than killing the test run.
"""
from __future__ import annotations

import itertools
import textwrap

import numpy as np
import pytest
from enginehelp import ROOT, digit_batches, lenet_solver, run_isolated

from sparknet.engine import CaffeNet, set_blas_threads

# -- finite losses: the checked step is Caffe's Solver::Step, bit for bit ----------------

SOLVERS = {
    "lenet sgd, momentum, inv policy": {},
    "iter_size 2, clipped gradients, step policy": {
        "iter_size": 2, "clip_gradients": 0.5, "lr_policy": "step", "stepsize": 5, "gamma": 0.5},
    "adam, average_loss 3": {"type": "Adam", "base_lr": 0.001, "momentum": 0.9,
                             "momentum2": 0.999, "lr_policy": "fixed", "average_loss": 3},
    "nesterov, L1 weight decay": {"type": "Nesterov", "regularization_type": "L1"},
}


@pytest.mark.parametrize("case", list(SOLVERS))
def test_checked_step_equals_caffes_solver_step(case):
    set_blas_threads(1)
    checked = CaffeNet(lenet_solver(batch=8, **SOLVERS[case]))
    caffe = CaffeNet(lenet_solver(batch=8, **SOLVERS[case]))
    assert checked.get_weights() == caffe.get_weights()
    batches = list(itertools.islice(digit_batches(8, seed=5), 12))
    losses = checked.train(len(batches), batches)
    reference = []
    for batch in batches:  # Caffe's own Solver::Step(1), unchecked
        arrays, _ = caffe._arrays(0, batch, require_all=True, allow_resize=False)
        reference.append(caffe._engine.step(arrays, check_finite=False))
    np.testing.assert_array_equal(losses, np.array(reference, np.float32))
    assert checked.iteration == caffe.iteration == len(batches)
    assert checked.get_weights() == caffe.get_weights()
    # The solver history (momentum, Adam's moments) matches too: the next step agrees.
    more = next(digit_batches(8, seed=6))
    checked.train(1, [more])
    arrays, _ = caffe._arrays(0, more, require_all=True, allow_resize=False)
    caffe._engine.step(arrays, check_finite=False)
    assert checked.get_weights() == caffe.get_weights()


# -- non-finite losses, each in a fresh interpreter ----------------------------------------

PRELUDE = f"""
import sys
sys.path.insert(0, {str(ROOT / "tests")!r})
import itertools
import numpy as np
from google.protobuf import text_format
from enginehelp import lenet_solver, digit_batches
from sparknet.engine import CaffeNet, set_blas_threads
from sparknet.proto import caffe_pb2
set_blas_threads(1)

def survive():
    # The interpreter and Caffe still work: no heap corruption to trip over.
    net = CaffeNet(lenet_solver(batch=4))
    assert np.isfinite(net.train(3, digit_batches(4))).all()
    print("ALIVE")
"""

CASES = {
    # LeNet's max pooling sees all-NaN windows: before the check, this step's
    # backward pass wrote out of bounds ("double free or corruption" at exit).
    "NaN input through max pooling": """
        good = list(itertools.islice(digit_batches(8, seed=1), 4))
        bad = dict(good[2], data=np.full_like(good[2]["data"], np.nan))
        net = CaffeNet(lenet_solver(batch=8))
        losses = net.train(4, good[:2] + [bad] + good[3:])
        assert losses.shape == (3,), losses
        assert np.isfinite(losses[:2]).all() and np.isnan(losses[2]), losses
        assert net.iteration == 2
        # The refused step left no trace: training on matches a net that never saw it.
        twin = CaffeNet(lenet_solver(batch=8))
        twin.train(2, good[:2])
        assert net.get_weights() == twin.get_weights()
        for _ in range(3):  # a repeated NaN batch is refused each time
            assert np.isnan(net.train(1, [bad])).tolist() == [True]
        assert net.get_weights() == twin.get_weights() and net.iteration == 2
        np.testing.assert_array_equal(net.train(2, good[2:]), twin.train(2, good[2:]))
        assert net.get_weights() == twin.get_weights() and net.iteration == 4
        print("REFUSED")
        """,
    # A learning rate that blows the weights up: the loss turns inf or NaN.
    "diverging learning rate": """
        batches = list(itertools.islice(digit_batches(8, seed=2), 40))
        net = CaffeNet(lenet_solver(batch=8, base_lr=1e4, lr_policy="fixed"))
        losses = net.train(40, batches)
        k = len(losses) - 1
        assert 0 < k < 39 and not np.isfinite(losses[k]) and np.isfinite(losses[:k]).all(), losses
        assert net.iteration == k
        # The weights are those after the k applied steps, untouched by step k + 1.
        twin = CaffeNet(lenet_solver(batch=8, base_lr=1e4, lr_policy="fixed"))
        np.testing.assert_array_equal(twin.train(k, batches), losses[:k])
        assert net.get_weights() == twin.get_weights()
        print("REFUSED", k, losses[k])
        """,
    # conv -> max pool -> ReLU: an all-NaN pool window gives -FLT_MAX, ReLU makes it 0,
    # and the loss is finite, yet the pool's backward pass would index bottom_diff[-1].
    "finite loss over an all-NaN max-pooling window": """
        net = caffe_pb2.NetParameter()
        text_format.Parse('''
          name: "hidden_nan"
          layer { name: "data" type: "Input" top: "data" top: "label"
                  input_param { shape { dim: 4 dim: 1 dim: 8 dim: 8 } shape { dim: 4 } } }
          layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
                  convolution_param { num_output: 3 kernel_size: 3
                                      weight_filler { type: "xavier" } } }
          layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
                  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
          layer { name: "relu" type: "ReLU" bottom: "pool" top: "pool" }
          layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
                  inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
          layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
        ''', net)
        solver = caffe_pb2.SolverParameter(base_lr=0.1, momentum=0.9, lr_policy="fixed",
                                           net_param=net, random_seed=3)
        net = CaffeNet(solver)
        x = np.random.default_rng(0).random((4, 1, 8, 8), np.float32)
        y = np.arange(4) % 5
        assert np.isfinite(net.train(2, [{"data": x, "label": y}] * 2)).all()
        before = net.get_weights().copy()
        x[0] = np.nan
        loss = net.forward({"data": x, "label": y}, phase="TRAIN")["loss"]
        assert np.isfinite(loss), loss  # the loss alone would not have caught it
        # CaffeNet.train refuses NaN inputs before Caffe runs; the engine's own
        # check (for NaN that arises inside the net) is what this case exercises.
        arrays, _ = net._arrays(0, {"data": x, "label": y}, require_all=True,
                                allow_resize=False)
        assert np.isnan(net._engine.step(arrays))
        assert net.get_weights() == before and net.iteration == 2
        print("REFUSED")
        """,
}


@pytest.mark.parametrize("case", list(CASES))
def test_nonfinite_step_is_refused_and_the_process_lives(case, tmp_path):
    code = PRELUDE + textwrap.dedent(CASES[case]) + "\nsurvive()\n"
    done = run_isolated(code, cwd=tmp_path)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    assert "REFUSED" in done.stdout, done.stdout + done.stderr[-2000:]
    assert done.stdout.rstrip().endswith("ALIVE"), done.stdout + done.stderr[-2000:]
    assert "corruption" not in done.stderr and "double free" not in done.stderr


def test_nonfinite_step_is_logged_and_the_result_is_short(caplog):
    net = CaffeNet(lenet_solver(batch=4))
    good = next(digit_batches(4))
    bad = dict(good, data=np.full_like(good["data"], np.inf))
    with caplog.at_level("WARNING", logger="sparknet.engine.net"):
        losses = net.train(3, [good, bad, good])
    assert len(losses) == 2 and np.isfinite(losses[0]) and not np.isfinite(losses[1])
    assert net.iteration == 1
    assert "step 2 of 3" in caplog.text and "not applied" in caplog.text
    # The warning names the input blob that held the non-finite values, not just the loss.
    assert "input blob 'data' holds 3136 inf (first in example 0)" in caplog.text
    assert net.last_refusal.startswith("training step 2 of 3 (iteration 1) was refused")
    # What the Spark worker does: one step at a time, checking each loss.
    assert not np.isfinite(net.train(1, (bad,))[0])
    assert np.isfinite(net.train(1, (good,))[0]) and net.iteration == 2


def test_a_finite_loss_over_an_infinite_input_is_refused_too():
    """Infinite pixels can leave the loss finite and still fill the gradients with NaN:
    Caffe would then apply the step and every weight would be NaN from there on."""
    net = CaffeNet(lenet_solver(batch=4))
    good = next(digit_batches(4))
    data = good["data"].copy()
    data[2, 0, 0, :3] = np.inf  # three adjacent pixels at the border of one image
    before = net.get_weights().copy()
    losses = net.train(1, [dict(good, data=data)])
    assert np.isnan(losses).tolist() == [True]
    assert net.iteration == 0 and net.get_weights() == before
    assert "input blob 'data' holds 3 inf (first in example 2)" in net.last_refusal
    assert np.isfinite(net.train(1, [good])).all() and net.last_refusal is None
