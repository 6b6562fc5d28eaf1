"""End to end: the loaders' RDDs feed real Caffe training on Spark workers.

Each partition's ``(array, label)`` pairs are stacked into minibatches and
fed to a CaffeNet built on the worker from the shipped prototxt (LeNet for
the digits and MNIST-format files, CIFAR-10 quick for CIFAR-format files) —
the shape of what the Spark trainer does with these RDDs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from google.protobuf import text_format

from sparknet.data import (
    Transformer,
    cifar10_rdd,
    compute_mean,
    digits_rdd,
    mnist_rdd,
)
from sparknet.data.cifar import write_cifar
from sparknet.data.mnist import write_idx
from sparknet.proto import caffe_pb2

ROOT = Path(__file__).resolve().parent.parent


def solver_bytes(model: str, net_file: str, solver_file: str, batch: int) -> bytes:
    solver = caffe_pb2.SolverParameter()
    text_format.Parse((ROOT / "caffe/models" / model / solver_file).read_text(), solver)
    solver.ClearField("net")
    text_format.Parse((ROOT / "caffe/models" / model / net_file).read_text(), solver.net_param)
    for layer in solver.net_param.layer:
        if layer.type == "Input":
            layer.input_param.shape[0].dim[0] = batch
    solver.random_seed = 1
    return solver.SerializeToString()


def train_partitions(rdd, solver: bytes, batch: int, steps: int, transform=None):
    """Train one CaffeNet per partition on that partition's examples; return the losses."""
    def run(examples):
        from sparknet.engine import CaffeNet

        examples = list(examples)
        x = np.stack([a for a, _ in examples])
        y = np.asarray([lab for _, lab in examples], np.float32)
        net = CaffeNet(solver, blas_threads=1)
        rng = np.random.default_rng(0)

        def batches():
            while True:
                idx = rng.permutation(len(y))
                for i in range(0, len(idx) - batch + 1, batch):
                    j = idx[i:i + batch]
                    xb = x[j] if transform is None else transform(x[j])
                    yield {"data": xb, "label": y[j]}
        yield net.train(steps, batches()).tolist()

    return [np.asarray(losses) for losses in rdd.mapPartitions(run).collect()]


def test_digits_rdd_trains_lenet(spark):
    rdd = digits_rdd(spark, "train", num_partitions=2)
    losses = train_partitions(rdd, solver_bytes("lenet", "lenet_train_test.prototxt",
                                                "lenet_solver.prototxt", 32), 32, 60)
    assert len(losses) == 2
    for run in losses:
        assert np.isfinite(run).all()
        assert run[-10:].mean() < 0.5 * run[:5].mean()  # it learns from these examples


def test_mnist_format_rdd_trains_lenet(tmp_path, spark):
    from sparknet.data import load_digits

    # real digits written as MNIST IDX files (gzipped), then read back by the loader
    x, y = load_digits("train")
    write_idx(tmp_path / "train-images-idx3-ubyte.gz",
              np.round(x[:, 0] * 255).astype(np.uint8), gzip_level=1)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", y.astype(np.uint8), gzip_level=1)
    rdd = mnist_rdd(spark, tmp_path, "train", num_partitions=2, scale=1 / 255)
    losses = train_partitions(rdd, solver_bytes("lenet", "lenet_train_test.prototxt",
                                                "lenet_solver.prototxt", 32), 32, 60)
    for run in losses:
        assert np.isfinite(run).all() and run[-10:].mean() < 0.5 * run[:5].mean()


def test_cifar_format_rdd_trains_cifar10_quick(tmp_path, spark):
    # two classes a net can tell apart: brighter red vs brighter blue, with noise
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)]:
        labels = rng.integers(0, 2, 20)
        imgs = rng.integers(0, 160, (20, 3, 32, 32)).astype(np.uint8)
        imgs[labels == 0, 0] += 90
        imgs[labels == 1, 2] += 90
        write_cifar(tmp_path / name, imgs, labels)
    rdd = cifar10_rdd(spark, tmp_path, "train", shuffle_seed=0, num_partitions=2).cache()
    mean = compute_mean(rdd)  # distributed, as for mean.binaryproto
    transform = Transformer(mean=mean, phase="TRAIN", mirror=True, seed=0)
    losses = train_partitions(rdd, solver_bytes("cifar10_quick", "train_val.prototxt",
                                                "solver.prototxt", 10), 10, 40, transform)
    assert len(losses) == 2
    for run in losses:
        assert np.isfinite(run).all() and run[-10:].mean() < run[:5].mean()
