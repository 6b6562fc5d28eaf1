"""Caffe's sources as this project patches them (caffe/patches/) compute what
Caffe as released computes, bit for bit: forward and backward, on the layers
the patches touch, for the shapes that exercise their edge cases.

Both builds are loaded in fresh interpreters through ``LD_LIBRARY_PATH`` (as
``tests/test_blas.py`` does for the BLAS builds); the unpatched one
(``SPARKNET_CAFFE_PATCHES=none``) is its own cache entry, built on first use by
recompiling only the patched files.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

# Convolutions with padding, strides larger than 1 and larger than the kernel,
# rectangular kernels, groups and dilation; max pooling whose windows run past
# the image (ceil mode), average pooling with padding; then a loss, so the
# backward pass runs col2im (the bottom gradients of conv2/conv3) and the max
# pooling's mask. A second branch has only "same" convolutions (stride 1, the
# output as large as the input: im2col's shifted-image path), with a
# rectangular kernel, dilation, and a 9x9 kernel on a 4x3 image (whole rows
# and columns of every block in the padding), and its own loss.
NET = """
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 4 dim: 3 dim: 13 dim: 11 } } }
layer { name: "target" type: "Input" top: "target"
        input_param { shape { dim: 4 dim: 5 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1
          weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 8 group: 2 kernel_h: 3 kernel_w: 2 stride_h: 2
          stride_w: 1 pad_h: 2 pad_w: 0 dilation: 2
          weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param { pool: AVE kernel_size: 2 stride: 1 pad: 1 } }
layer { name: "conv3" type: "Convolution" bottom: "pool2" top: "conv3"
        convolution_param { num_output: 6 kernel_size: 2 stride: 3 pad: 1
          weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "pool3" type: "Pooling" bottom: "conv3" top: "pool3"
        pooling_param { pool: MAX kernel_h: 2 kernel_w: 1 stride: 1 pad_h: 1 pad_w: 0 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool3" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "loss" }
layer { name: "same1" type: "Convolution" bottom: "data" top: "same1"
        convolution_param { num_output: 4 kernel_h: 5 kernel_w: 3 pad_h: 2 pad_w: 1
          weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "same2" type: "Convolution" bottom: "same1" top: "same2"
        convolution_param { num_output: 4 kernel_size: 3 pad: 2 dilation: 2
          weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "pool4" type: "Pooling" bottom: "same2" top: "pool4"
        pooling_param { pool: MAX kernel_size: 4 stride: 4 } }
layer { name: "same3" type: "Convolution" bottom: "pool4" top: "same3"
        convolution_param { num_output: 3 kernel_size: 9 pad: 4
          weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "same3" top: "ip2"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss2" type: "EuclideanLoss" bottom: "ip2" bottom: "target" top: "loss2" }
"""
BLOBS = ["conv1", "pool1", "conv2", "pool2", "conv3", "pool3", "ip", "same1", "same2", "pool4",
         "same3", "ip2"]

# In the child: forward blobs, then the gradient of every parameter (one SGD
# step with lr 1 and nothing else moves w by exactly -gradient), then 5 steps
# of CIFAR-10 quick (every patched loop on realistic shapes) from the same start.
_CHILD = """
import itertools, json, sys
import numpy as np
from google.protobuf import text_format
from sparknet.engine import CaffeNet, set_blas_threads
from sparknet.proto import caffe_pb2
sys.path.insert(0, "bench")
from engine_overhead import python_pool, solver_for

set_blas_threads(1)
out = {}
net = caffe_pb2.NetParameter()
text_format.Parse(NET, net)
solver = caffe_pb2.SolverParameter(base_lr=1.0, momentum=0.0, weight_decay=0.0,
                                   lr_policy="fixed", random_seed=7)
solver.net_param.CopyFrom(net)
caffe_net = CaffeNet(solver)
rng = np.random.default_rng(3)
w0 = rng.normal(0, 0.3, caffe_net.num_params).astype(np.float32)
batch = {"data": rng.normal(0, 1, (4, 3, 13, 11)).astype(np.float32),
         "target": rng.normal(0, 1, (4, 5)).astype(np.float32)}
caffe_net.set_weights(w0)
blobs = caffe_net.forward(batch, blobs=BLOBS, phase="TRAIN")
for name in BLOBS:
    np.save(f"{OUT}/{name}.npy", blobs[name])
caffe_net.train(1, [batch])
np.save(f"{OUT}/grad.npy", w0 - caffe_net.get_weights().flat)
cifar = CaffeNet(solver_for(__import__("pathlib").Path(
    "caffe/models/cifar10_quick/train_val.prototxt"), 16))
cifar.train(5, itertools.cycle(python_pool(cifar)))
np.save(f"{OUT}/cifar.npy", cifar.get_weights().flat)
print(json.dumps(__import__("sparknet.engine._blas", fromlist=["x"]).compiled_with()))
"""


def _build(patch_set: str) -> dict:
    sys.path.insert(0, str(ROOT / "caffe"))
    try:
        import build
    finally:
        sys.path.pop(0)
    return build.ensure_built(choice="system", patch_set=patch_set)


def _outputs(patch_set: str, out: Path) -> dict:
    info = _build(patch_set)
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    env["LD_LIBRARY_PATH"] = info["library_dirs"][0]
    code = f"NET = {NET!r}\nBLOBS = {BLOBS!r}\nOUT = {str(out)!r}\n" + textwrap.dedent(_CHILD)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    built = json.loads(done.stdout.strip().splitlines()[-1])
    return {"patches": built.get("patches"),
            **{p.stem: np.load(p) for p in out.glob("*.npy")}}


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("patches")
    return _outputs("all", tmp / "patched"), _outputs("none", tmp / "vanilla")


def test_the_patched_build_is_the_one_compared():
    patched = _build("all")
    vanilla = _build("none")
    assert patched["patches"] and vanilla["patches"] == []
    assert patched["prefix"] != vanilla["prefix"]  # never the same cache entry
    assert (Path(patched["library_dirs"][0]) / "libcaffe.so").read_bytes() != \
        (Path(vanilla["library_dirs"][0]) / "libcaffe.so").read_bytes()


def test_patched_convolution_and_pooling_forward_as_released_caffe(both):
    patched, vanilla = both
    assert patched["patches"] and vanilla["patches"] == []
    for name in BLOBS:
        assert patched[name].shape == vanilla[name].shape, name
        assert np.abs(vanilla[name]).max() > 0, name  # the comparison is not of zeros
        # The patches reorder no arithmetic: the very same bits, not just close.
        np.testing.assert_array_equal(patched[name], vanilla[name], err_msg=name)


def test_patched_convolution_and_pooling_backward_as_released_caffe(both):
    patched, vanilla = both
    # The gradient of every parameter, conv1's through conv2's and conv3's
    # col2im and both max poolings' masks.
    assert np.count_nonzero(vanilla["grad"]) > 0.5 * vanilla["grad"].size
    np.testing.assert_array_equal(patched["grad"], vanilla["grad"])
    # Five training steps of CIFAR-10 quick from the same start: the same weights.
    np.testing.assert_array_equal(patched["cifar"], vanilla["cifar"])
