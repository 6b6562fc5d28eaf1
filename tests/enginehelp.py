"""Helpers for the engine tests: LeNet solvers from the shipped prototxt, batches
of the bundled digits, Caffe's own command-line tool, and a subprocess runner
for checks that must survive a would-be abort."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from sparknet.data.digits import load_digits
from sparknet.proto import caffe_pb2

ROOT = Path(__file__).resolve().parent.parent
LENET = ROOT / "caffe" / "models" / "lenet"


def lenet_net(batch: int = 64) -> caffe_pb2.NetParameter:
    net = caffe_pb2.NetParameter()
    text_format.Parse((LENET / "lenet_train_test.prototxt").read_text(), net)
    for layer in net.layer:
        if layer.type == "Input":
            layer.input_param.shape[0].dim[0] = batch
    return net


def lenet_solver(batch: int = 64, seed: int = 1, **fields) -> caffe_pb2.SolverParameter:
    solver = caffe_pb2.SolverParameter()
    text_format.Parse((LENET / "lenet_solver.prototxt").read_text(), solver)
    solver.ClearField("net")
    solver.net_param.CopyFrom(lenet_net(batch))
    solver.random_seed = seed
    for name, value in fields.items():
        setattr(solver, name, value)
    return solver


def digit_batches(batch: int = 64, seed: int = 0, split: str = "train"):
    """Endless shuffled minibatches of the bundled digits, as dicts."""
    x, y = load_digits(split)
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(y))
        for i in range(0, len(order) - batch + 1, batch):
            j = order[i:i + batch]
            yield {"data": x[j], "label": y[j]}


def held_out_batches(batch: int = 64):
    x, y = load_digits("test")
    return [{"data": x[i:i + batch], "label": y[i:i + batch]} for i in range(0, len(y), batch)]


def caffe_tool() -> Path:
    """Caffe's own `caffe` binary, built from the same sources (cached)."""
    sys.path.insert(0, str(ROOT / "caffe"))
    try:
        import build as caffe_build
    finally:
        sys.path.pop(0)
    return Path(caffe_build.ensure_built(tools=True)["caffe_tool"])


def run_isolated(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run Python code in a fresh interpreter; an abort shows as a signal exit."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=300)


def dropout_solver(batch: int = 16, momentum: float = 0.9):
    """A small MLP with dropout: its steps depend on Caffe's random numbers."""
    from sparknet.dsl import (
        DropoutLayer,
        InnerProductLayer,
        InputLayer,
        LrPolicy,
        NetParam,
        ReLULayer,
        SoftmaxWithLoss,
        SolverParam,
    )

    net = NetParam("dropout-mlp", InputLayer("data", shape=(batch, 1, 28, 28)),
                   InputLayer("label", shape=(batch, 1)),
                   InnerProductLayer("ip1", ["data"], num_output=64, weight_filler="xavier"),
                   ReLULayer("relu1", ["ip1"], tops=["ip1"]),
                   DropoutLayer("drop1", ["ip1"], tops=["ip1"], dropout_ratio=0.5),
                   InnerProductLayer("ip2", ["ip1"], num_output=10, weight_filler="xavier"),
                   SoftmaxWithLoss("loss", ["ip2", "label"]))
    return SolverParam(net, base_lr=0.01, momentum=momentum, lr_policy=LrPolicy.fixed(),
                       random_seed=1)
