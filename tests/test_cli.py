"""The `sparknet` command line, run as a user would: a separate process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sparknet.proto import ProtoLoader


def sparknet(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparknet", *args], capture_output=True,
                          text=True, timeout=600, cwd=cwd, env=env)


def test_help_lists_the_commands():
    done = sparknet("--help")
    assert done.returncode == 0
    for command in ("train", "test", "featurize", "info", "convert", "digits:", "s3://"):
        assert command in done.stdout


def test_info_of_a_prototxt_and_a_shipped_model(root):
    done = sparknet("info", str(root / "caffe/models/lenet/lenet_train_test.prototxt"))
    assert done.returncode == 0, done.stderr
    assert "conv1" in done.stdout and "(64, 20, 24, 24)" in done.stdout
    assert "parameters: 431,080" in done.stdout
    done = sparknet("info", "caffenet")
    assert done.returncode == 0, done.stderr
    assert "parameters: 60,965,224" in done.stdout


def test_info_of_a_caffemodel(tmp_path, root):
    from sparknet.engine import CaffeNet
    from sparknet.models import lenet

    path = tmp_path / "lenet.caffemodel"
    CaffeNet(lenet.solver(batch_size=4)).save_weights(path)
    done = sparknet("info", str(path))
    assert done.returncode == 0, done.stderr
    assert "ip1" in done.stdout and "parameters: 431,080" in done.stdout


def test_convert_prototxt_to_python_and_back(tmp_path, root):
    source = root / "caffe/models/googlenet/train_val.prototxt"
    py = tmp_path / "googlenet_dsl.py"
    done = sparknet("convert", str(source), "-o", str(py))
    assert done.returncode == 0, done.stderr
    assert "NetParam(" in py.read_text()
    back = tmp_path / "back.prototxt"
    done = sparknet("convert", str(py), "-o", str(back))
    assert done.returncode == 0, done.stderr
    assert ProtoLoader.load_net_prototxt(back) == ProtoLoader.load_net_prototxt(source)


@pytest.mark.parametrize("args, message", [
    (("info", "missing.prototxt"), "missing.prototxt: no such file"),
    (("info", "no_such_model"), "'no_such_model' is neither a shipped model"),
    (("train", "lenet", "--data", "ftp://x"), "unknown data source 'ftp://x'"),
    (("train", "lenet", "--data", "lmdb:/no/db"), "--data lmdb:/no/db: no such folder"),
    (("train", "lenet", "--test-data", "cifar10:"), "--test-data cifar10: names no folder"),
    (("train", "lenet", "--resume"), "--resume needs --checkpoint-dir"),
    (("test", "lenet", "--weights", "/no/such.caffemodel"), "/no/such.caffemodel: no such file"),
])
def test_user_mistakes_exit_2_without_a_traceback(args, message):
    done = sparknet(*args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_prototxt_net_without_a_solver_gets_sgd_at_0_001(spark, root):
    """The documented default of both front ends; at 0.01 cifar10_quick on raw pixels diverges."""
    from sparknet.frontend import load_solver

    images = spark.sparkContext.parallelize([(np.zeros((3, 32, 32), np.float32), 0.0)] * 4, 2)
    solver = load_solver(str(root / "caffe/models/cifar10_quick/train_val.prototxt"),
                         batch_size=20, test_batch_size=30, data=images)
    assert solver.base_lr == pytest.approx(0.001) and solver.lr_policy == "fixed"
    assert solver.momentum == pytest.approx(0.9)
    shapes = [list(s.dim) for layer in solver.net_param.layer if layer.type == "Input"
              for s in layer.input_param.shape]
    assert [20, 3, 32, 32] in shapes and [30, 3, 32, 32] in shapes  # TRAIN and TEST inputs


def test_a_solver_prototxt_with_a_shipped_model_is_used_not_ignored(tmp_path):
    from sparknet.frontend import load_solver

    path = tmp_path / "solver.prototxt"
    path.write_text('base_lr: 0.5\nlr_policy: "step"\nstepsize: 7\ngamma: 0.5\n')
    solver = load_solver("lenet", str(path), batch_size=16)
    assert (solver.base_lr, solver.lr_policy, solver.stepsize) == (0.5, "step", 7)
    assert solver.net_param.name == "LeNet"
    batch = [list(s.dim) for layer in solver.net_param.layer if layer.type == "Input"
             for s in layer.input_param.shape]
    assert [16, 1, 28, 28] in batch


def test_a_bad_prototxt_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('name: "x"\nlayer {\n  name: "data"\n  type: "Input"\n  nonsense: 3\n}\n')
    done = sparknet("info", str(bad))
    assert done.returncode == 2
    assert f"{bad}:5" in done.stderr and "nonsense" in done.stderr
    assert "Traceback" not in done.stderr


def in_process(spark, capsys, *args: str) -> tuple[int, str]:
    """``sparknet ARGS`` through :func:`sparknet.cli.main` in this interpreter, on the suite's
    Spark session (as the README tour runs its commands): (exit status, stdout).

    For commands whose subject is not the process: a command run as its own process is
    proven by the ``sparknet(...)`` tests (``train`` by the s3 scheme's); a JVM and Python
    workers started for each of these would prove nothing more. The command sets the session's log
    level to WARN; the suite's ERROR is put back.
    """
    from sparknet import cli

    capsys.readouterr()
    try:
        status = cli.main(list(args))
    finally:
        spark.sparkContext.setLogLevel("ERROR")
    return status, capsys.readouterr().out


def test_train_then_test_then_featurize_on_digits(tmp_path, spark, capsys):
    """`sparknet train digits:` end to end, then the weights it wrote, scored and
    featurized by `sparknet test` and `sparknet featurize`. (`sparknet train` as its own
    process: test_train_on_every_documented_data_scheme[s3].)"""
    weights = tmp_path / "lenet.caffemodel"
    status, out = in_process(spark, capsys, "train", "lenet", "--data", "digits:", "--workers",
                             "2", "--rounds", "4", "--sync-interval", "50", "--test-interval",
                             "2", "--master", "local[2]", "--output", str(tmp_path / "run"),
                             "--save", str(weights))
    assert status == 0
    accuracy = float(out.split("accuracy ")[1].split(",")[0])
    assert accuracy >= 0.95, out
    assert weights.exists() and (tmp_path / "run" / "history.jsonl").exists()

    status, out = in_process(spark, capsys, "test", "lenet", "--weights", str(weights),
                             "--data", "digits:", "--master", "local[2]")
    assert status == 0
    scores = json.loads(out.strip().splitlines()[-1])
    assert scores["examples"] == 360 and scores["accuracy"] == pytest.approx(accuracy, abs=0.01)

    out_path = tmp_path / "features.parquet"
    status, out = in_process(spark, capsys, "featurize", "lenet", "--weights", str(weights),
                             "--data", "digits:", "--blob", "ip1", "--output", str(out_path),
                             "--master", "local[2]")
    assert status == 0
    assert out.strip().splitlines()[-1] == f"features (ip1): {out_path}"
    frame = spark.read.parquet(str(out_path))
    assert frame.count() == 360
    assert len(frame.first()["ip1"]) == 500


# -- every data scheme the CLI documents, end to end ---------------------------------------

def _digits_uint8(split: str) -> tuple[np.ndarray, np.ndarray]:
    from sparknet.data import load_digits

    x, y = load_digits(split)
    return np.clip(np.round(x * 255), 0, 255).astype(np.uint8), y.astype(np.uint8)


def _colour_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, 3, 32, 32) noisy images whose strongest channel is the label (0-2)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    images = rng.integers(0, 150, (n, 3, 32, 32)).astype(np.uint8)
    for c in range(3):
        images[labels == c, c] += 100
    return images, labels.astype(np.uint8)


def _mnist(folder: Path) -> str:
    from sparknet.data.mnist import write_idx

    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = _digits_uint8(split)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", x[:, 0], gzip_level=6)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", y)
    return f"mnist:{folder}"


def _cifar(folder: Path) -> str:
    from sparknet.data.cifar import write_cifar

    for i, name in enumerate([*(f"data_batch_{k}.bin" for k in range(1, 6)), "test_batch.bin"]):
        x, y = _colour_images(60, i)  # the same images as _s3's
        write_cifar(folder / name, x, y)
    return f"cifar10:{folder}"


def _lmdb(folder: Path) -> tuple[str, str]:
    from sparknet.data import load_digits
    from sparknet.data.caffe_lmdb import write_lmdb

    for split in ("train", "test"):  # float Datums, in [0, 1] as LeNet takes them
        x, y = load_digits(split)
        write_lmdb(folder / split, zip(x, y.astype(int)))
    return f"lmdb:{folder / 'train'}", f"lmdb:{folder / 'test'}"


def _s3(s3server, folder: Path) -> str:
    """The images of _cifar, as lossless PNGs in tar shards in SparkNet's S3 layout."""
    import io

    from PIL import Image

    from sparknet.data import synthetic

    def png(chw: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0))).save(buf, "PNG")
        return buf.getvalue()

    bucket = s3server.bucket()
    for split, shards, labels, seeds in (("train", "ILSVRC2012_train/train.", "train.txt",
                                          range(5)), ("val", "ILSVRC2012_val/val.", "val.txt",
                                                      [5])):
        lines = []
        for k, seed in enumerate(seeds):
            x, y = _colour_images(60, seed)
            names = [f"{split}_{k}_{i:03d}.png" for i in range(len(y))]
            s3server.put(bucket, f"data/{shards}{k:05d}.tar",
                         synthetic.tar_bytes((n, png(img)) for n, img in zip(names, x)))
            lines += [f"{n} {v}\n" for n, v in zip(names, y)]
        s3server.put(bucket, f"data/{labels}", "".join(lines).encode())
    return f"s3://{bucket}/data"


@pytest.mark.parametrize("scheme", ["mnist", "cifar10", "lmdb", "s3"])
def test_train_on_every_documented_data_scheme(tmp_path, scheme, request, spark, capsys):
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    extra: list[str] = []
    net, floor = "lenet", 0.9
    if scheme == "mnist":
        uri = _mnist(tmp_path)
    elif scheme == "cifar10":
        uri, net, floor = _cifar(tmp_path), "cifar10_quick", 0.0   # raw pixels: loss falls
    elif scheme == "lmdb":
        uri, test_uri = _lmdb(tmp_path)
        extra = ["--test-data", test_uri]
    else:
        server = request.getfixturevalue("s3")
        uri, net, floor = _s3(server, tmp_path), "cifar10_quick", 0.0
        from s3server import CREDENTIALS

        env.update(CREDENTIALS, AWS_ENDPOINT_URL=server.endpoint_url)  # boto3's chain
        extra = ["--image-size", "32"]
    weights = tmp_path / "w.caffemodel"
    args = ["train", net, "--data", uri, *extra, "--workers", "2", "--rounds", "4",
            "--sync-interval", "25", "--batch-size", "20", "--test-interval", "4",
            "--master", "local[2]", "--output", str(tmp_path / "run"), "--save", str(weights)]
    if scheme == "s3":
        # its own process: the endpoint and credentials reach boto3 on Spark's workers
        # through the environment the JVM and its workers start with. The suite's test of
        # `sparknet train` as a process of its own (exit status 0, what it prints)
        done = sparknet(*args, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        out = done.stdout
    else:  # the files are the subject here, not the process
        status, out = in_process(spark, capsys, *args)
        assert status == 0
    accuracy = float(out.split("accuracy ")[1].split(",")[0])
    assert accuracy >= floor, out
    history = [json.loads(line) for line in
               (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [h["round"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["loss"] < history[0]["loss"]
    assert weights.stat().st_size > 0


def test_a_failed_write_is_one_line_exit_1_and_keeps_the_old_file(tmp_path):
    import resource

    out = tmp_path / "caffenet.prototxt"
    out.write_text("the old file\n")

    def full_disk() -> None:  # writes past 4 kB fail, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    done = subprocess.run([sys.executable, "-m", "sparknet", "convert", "caffenet", "-o",
                           str(out)], capture_output=True, text=True, timeout=120,
                          preexec_fn=full_disk)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"sparknet convert: failed: [Errno 27] File too large: '{out}'"]
    assert out.read_text() == "the old file\n"
    assert [p.name for p in tmp_path.iterdir()] == ["caffenet.prototxt"]


# -- whose mistake: the user's (exit 2, one line) or sparknet's (exit 1, where it was raised) --

def test_a_value_error_from_inside_sparknet_is_a_failure_with_a_pointer_not_a_usage_error(
        capsys):
    """A bare ValueError is not the user's mistake: exit 1, the reason, where it was raised."""
    from sparknet.frontend import exit_status
    from sparknet.proto.rules import phase_value

    # an internal helper called with a value no user wrote: a bug, not a usage mistake
    status = exit_status(lambda: phase_value("VALIDATE"), "prog")
    lines = capsys.readouterr().err.splitlines()
    assert status == 1
    assert lines[0] == "prog: failed: ValueError: phase must be 'TRAIN' or 'TEST', got 'VALIDATE'"
    assert len(lines) == 2 and lines[1].startswith("prog: raised at sparknet/proto/rules.py:")
    assert lines[1].endswith(" in phase_value; --debug shows the whole traceback")
    assert "Traceback" not in "\n".join(lines)


def test_a_documented_mistake_is_still_exit_2_on_one_line(capsys):
    from sparknet.dsl import ConvolutionLayer
    from sparknet.frontend import exit_status

    status = exit_status(lambda: ConvolutionLayer("c", ["x"], kernel=5, num_ouput=5), "prog")
    assert status == 2
    assert capsys.readouterr().err.splitlines() == [
        "prog: error: layer 'c' (Convolution), field 'num_ouput': ConvolutionLayer has no such "
        "field; did you mean 'num_output'?"]


def test_every_documented_error_class_is_a_user_error_and_still_what_it_was():
    from sparknet._util import UserError
    from sparknet.data.images import ImageDecodeError
    from sparknet.dsl import NetDefinitionError
    from sparknet.engine import CaffeError
    from sparknet.frontend import USER_ERRORS, UsageError
    from sparknet.io import CorruptFileError
    from sparknet.io.s3 import NoSuchBucketError
    from sparknet.ml import ModelDirectoryError, ParamError
    from sparknet.proto import PrototxtError
    from sparknet.spark import DataError, WorkerPythonError
    from sparknet.spark.checkpoint import CheckpointError

    was = {UsageError: Exception, NetDefinitionError: ValueError, PrototxtError: ValueError,
           DataError: ValueError, ImageDecodeError: ValueError, CheckpointError: ValueError,
           ModelDirectoryError: ValueError, ParamError: ValueError,
           CorruptFileError: ValueError, CaffeError: RuntimeError,
           WorkerPythonError: RuntimeError, NoSuchBucketError: FileNotFoundError}
    for cls, base in was.items():
        assert issubclass(cls, UserError) and issubclass(cls, base), cls
    assert ValueError not in USER_ERRORS and RuntimeError not in USER_ERRORS


def test_debug_shows_the_whole_traceback_of_a_failure(tmp_path):
    import resource

    out = tmp_path / "caffenet.prototxt"

    def full_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    done = subprocess.run([sys.executable, "-m", "sparknet", "--debug", "convert", "caffenet",
                           "-o", str(out)], capture_output=True, text=True, timeout=120,
                          preexec_fn=full_disk)
    assert done.returncode == 1
    assert done.stderr.startswith("Traceback (most recent call last):")
    assert done.stderr.splitlines()[-1] == (
        f"sparknet convert: failed: [Errno 27] File too large: '{out}'")
