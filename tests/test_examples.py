"""The example apps, run end to end as a user runs them: a subprocess each, small settings.

LeNet on the bundled digits (with ``python`` and with ``spark-submit``), the
CIFAR-10 app on generated files in CIFAR's binary format, the ImageNet app on
generated JPEG tar shards uploaded with the upload tool to an S3 server on
loopback, the featurizer (Parquet read back and checked against the engine),
and fine-tuning from a ``.caffemodel`` trained without Spark. (The README's own
examples run in ``test_readme.py``, a module of its own so that it runs beside this one.)
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from apphelp import ROOT, VENV_BIN, clean_env, clone_env, fresh_clone, git_status

from sparknet.proto import caffe_pb2

EXAMPLES = ROOT / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.timeout(300)


# -- running an app -----------------------------------------------------------------------

def app_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    return env


def run(args: list[str], cwd: Path, timeout: float = 240,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=False, cwd=cwd, env=env or app_env(),
                          capture_output=True, text=True, timeout=timeout)


def run_app(app: str, *args: str, cwd: Path, status: int = 0, timeout: float = 240,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python examples/<app>.py args`` in ``cwd``; fails showing the output unless ``status``."""
    proc = run([sys.executable, str(EXAMPLES / f"{app}.py"), *args], cwd, timeout, env)
    check_status(proc, status)
    return proc


def check_status(proc: subprocess.CompletedProcess, status: int) -> None:
    assert proc.returncode == status, (
        f"exit status {proc.returncode}, expected {status}\n--- stdout\n{proc.stdout}"
        f"\n--- stderr\n{proc.stderr[-6000:]}")


def printed_paths(stdout: str) -> dict[str, Path]:
    """The ``what: path`` lines the apps print at the end."""
    found = {}
    for line in stdout.splitlines():
        m = re.match(r"^([a-zA-Z][\w ()]*?):\s+(\S.*)$", line)
        if m and ("/" in m.group(2) or m.group(2).endswith((".json", ".png", ".txt"))):
            found[m.group(1)] = Path(m.group(2).strip())
    return found


def printed_metrics(stdout: str) -> dict[str, float]:
    """``test: accuracy 0.97, loss 0.1`` -> ``{"accuracy": 0.97, "loss": 0.1}``."""
    lines = [line for line in stdout.splitlines() if line.startswith("test: ")]
    assert lines, f"no test metrics printed:\n{stdout}"
    return {k: float(v) for k, v in re.findall(r"(\w+) ([-\d.eE+naif]+)", lines[-1][6:])}


def check_training_outputs(stdout: str, cwd: Path, rounds: int) -> list[dict]:
    """The log, JSON history and PNG plot exist where the app says; returns the history."""
    paths = {k: (p if p.is_absolute() else cwd / p) for k, p in printed_paths(stdout).items()}
    log = next(p for k, p in paths.items() if "log" in k)
    history = next(p for k, p in paths.items() if "history" in k)
    plot = next(p for k, p in paths.items() if "plot" in k)
    assert log.is_file() and log.stat().st_size > 0
    assert plot.read_bytes()[:8] == PNG_MAGIC
    records = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
    rounds_seen = [r["round"] for r in records if "round" in r]
    assert len(rounds_seen) == rounds, records
    return records


def caffemodel_layers(path: Path) -> dict[str, list[np.ndarray]]:
    """A ``.caffemodel``'s blobs by layer name, read with Caffe's own schema."""
    net = caffe_pb2.NetParameter()
    net.ParseFromString(path.read_bytes())
    return {layer.name: [np.asarray(b.data, np.float32).reshape(tuple(b.shape.dim))
                         for b in layer.blobs]
            for layer in net.layer if layer.blobs}


# -- LeNet ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory):
    """One LeNet run on the digits as ``make run`` runs it (fewer rounds), in a fresh clone:
    (stdout, the clone), shared by several tests."""
    cwd = fresh_clone(tmp_path_factory.mktemp("lenet") / "clone")
    proc = run_app("lenet_app", "--workers", "2", "--rounds", "3", "--test-interval", "2",
                   cwd=cwd, env=clone_env(app_env()))
    return proc.stdout, cwd


def test_lenet_app_trains_on_the_digits(lenet_run):
    stdout, cwd = lenet_run
    metrics = printed_metrics(stdout)
    assert metrics["accuracy"] >= 0.9, stdout
    history = check_training_outputs(stdout, cwd, rounds=3)
    tested = [r for r in history if r.get("test")]
    assert tested and tested[-1]["test"]["accuracy"] == pytest.approx(metrics["accuracy"],
                                                                    abs=1e-4)
    weights = caffemodel_layers(cwd / "runs" / "lenet" / "lenet.caffemodel")
    assert weights["ip2"][0].shape == (10, 500)
    assert git_status(cwd) == ""  # make run writes under runs/ only, which git ignores


def test_lenet_app_under_spark_submit(tmp_path):
    # one short round: what is proven here is the master, the outputs and their paths under
    # spark-submit; that the app's LeNet learns is test_lenet_app_trains_on_the_digits's
    proc = run([str(VENV_BIN / "spark-submit"), str(EXAMPLES / "lenet_app.py"),
                "--workers", "2", "--rounds", "1", "--sync-interval", "5",
                "--test-interval", "1"], tmp_path)
    check_status(proc, 0)
    # spark-submit runs the app with its stderr merged into stdout
    assert "on local[*]" in proc.stdout  # spark-submit's (default) master, not local[2]
    printed_metrics(proc.stdout)
    check_training_outputs(proc.stdout, tmp_path, rounds=1)
    assert (tmp_path / "runs" / "lenet" / "lenet.caffemodel").is_file()


# -- CIFAR-10 --------------------------------------------------------------------------------

def colour_images(rng: np.random.Generator, labels: np.ndarray, size: int = 32) -> np.ndarray:
    """uint8 ``(N, 3, size, size)`` noisy images whose strongest channel is the label (0-2)."""
    images = rng.integers(0, 150, (len(labels), 3, size, size)).astype(np.uint8)
    for c in range(3):
        images[labels == c, c] += 100
    return images


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    """CIFAR-10 binary batches (5 training files of 60 images, a test file of 90), 3 classes."""
    from sparknet.data.cifar import write_cifar

    folder = tmp_path_factory.mktemp("cifar-10-batches-bin")
    rng = np.random.default_rng(0)
    for name, n in [*((f"data_batch_{i}.bin", 60) for i in range(1, 6)),
                    ("test_batch.bin", 90)]:
        labels = rng.integers(0, 3, n)
        write_cifar(folder / name, colour_images(rng, labels), labels)
    return folder


def test_cifar_app_on_cifar_format_files(cifar_dir, tmp_path):
    from sparknet.data import load_cifar10, read_mean

    proc = run_app("cifar_app", str(cifar_dir), "--workers", "2", "--batch-size", "20",
                   "--test-batch-size", "30", "--rounds", "2", "--sync-interval", "10",
                   "--test-interval", "1", "--output", "out", cwd=tmp_path)
    history = check_training_outputs(proc.stdout, tmp_path, rounds=2)
    assert history[-1]["loss"] < history[0]["loss"]
    # SparkNet's mean image: the mean of every training image, written as Caffe's binaryproto
    x, _ = load_cifar10(cifar_dir, "train")
    np.testing.assert_allclose(read_mean(tmp_path / "out" / "mean.binaryproto"), x.mean(0),
                               rtol=1e-5)
    assert printed_metrics(proc.stdout)["accuracy"] >= 0.6  # chance is 1/3
    weights = caffemodel_layers(tmp_path / "out" / "cifar10_quick.caffemodel")
    assert weights["conv1"][0].shape == (32, 3, 5, 5)


# -- ImageNet from S3 ---------------------------------------------------------------------

def test_imagenet_app_on_s3_shards(s3, tmp_path):
    """JPEGs in class folders -> the upload tool -> a loopback S3 bucket -> the app."""
    from PIL import Image

    from sparknet.data import read_mean, synthetic
    from sparknet.data.imagenet import tar_examples
    from sparknet.data.imagenet_to_s3 import main as upload

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for c, synset in enumerate(("n01440764", "n01443537", "n01484850")):
            folder = tmp_path / split / synset
            folder.mkdir(parents=True)
            for i in range(n):
                img = synthetic.photo(90 + 3 * i, 80, rng)
                img[..., c] = np.maximum(img[..., c], 180)  # a class you can see
                Image.fromarray(img).save(folder / f"{synset}_{i}.JPEG", quality=90)
    bucket = s3.bucket()
    assert upload(["--bucket", bucket, "--endpoint-url", s3.endpoint_url,
                   "--train", str(tmp_path / "train"), "--val", str(tmp_path / "val"),
                   "--size", "72", "--shard-size", "12", "--jobs", "1", "--no-progress"]) == 0
    assert sorted(k for k in s3.keys(bucket) if k.endswith(".tar")) == [
        "ILSVRC2012_train/train.00000.tar", "ILSVRC2012_train/train.00001.tar",
        "ILSVRC2012_val/val.00000.tar"]

    proc = run_app("imagenet_app", "2", bucket, "--endpoint-url", s3.endpoint_url,
                   "--image-size", "72", "--crop", "67", "--batch-size", "4",
                   "--test-batch-size", "4", "--rounds", "2", "--sync-interval", "3",
                   "--test-interval", "1", "--base-lr", "0.001", "--output", "out",
                   cwd=tmp_path, timeout=280)
    assert "24 images from 2/2 shards" in proc.stdout
    history = check_training_outputs(proc.stdout, tmp_path, rounds=2)
    losses = [r["loss"] for r in history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    # scored over exactly the 12 validation images (3 batches of 4), each counted once
    assert all(r["test"]["accuracy"] * 12 == pytest.approx(round(r["test"]["accuracy"] * 12),
                                                           abs=1e-4) for r in history)
    # the mean image is the mean of the training images as decoded from the shards (BGR)
    images = []
    for key in ("ILSVRC2012_train/train.00000.tar", "ILSVRC2012_train/train.00001.tar"):
        body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        images += [img for img, _ in tar_examples(io.BytesIO(body), size=(72, 72),
                                                  color="BGR")]
    expected = np.mean(np.stack(images).astype(np.float64), axis=0).transpose(2, 0, 1)
    np.testing.assert_allclose(read_mean(tmp_path / "out" / "mean.binaryproto"), expected,
                               rtol=1e-4, atol=1e-3)
    weights = caffemodel_layers(tmp_path / "out" / "caffenet.caffemodel")
    assert weights["conv1"][0].shape == (96, 3, 11, 11)
    assert weights["fc8"][0].shape == (1000, 4096)


# -- features and fine-tuning ---------------------------------------------------------------

def test_featurizer_app_writes_parquet(lenet_run, spark, tmp_path):
    from sparknet.data import load_digits
    from sparknet.engine import CaffeNet
    from sparknet.models import lenet

    _, lenet_cwd = lenet_run
    weights = lenet_cwd / "runs" / "lenet" / "lenet.caffemodel"
    out = tmp_path / "features.parquet"
    proc = run_app("featurizer_app", "--weights", str(weights), "--blob", "ip1",
                   "--blob", "ip2", "--output", str(out), cwd=tmp_path)
    assert printed_paths(proc.stdout)["features (Parquet)"] == out
    frame = spark.read.parquet(str(out))
    assert frame.columns == ["label", "ip1", "ip2"]
    rows = frame.collect()
    x, y = load_digits("test")
    assert len(rows) == len(y) == 360
    assert {r["ip1"].size for r in rows} == {500} and {r["ip2"].size for r in rows} == {10}
    # the same numbers as the engine's own forward pass with those weights, row by row
    engine = CaffeNet(lenet.solver(batch_size=len(y)))
    engine.load_weights(weights)
    expected = engine.forward({"data": x}, blobs=["ip2"])["ip2"]
    got = np.asarray([r["ip2"].toArray() for r in rows], np.float32)
    labels = np.asarray([r["label"] for r in rows])
    mine, theirs = np.lexsort(got.T[::-1]), np.lexsort(expected.T[::-1])
    np.testing.assert_allclose(got[mine], expected[theirs], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(labels[mine], y[theirs])
    assert (got.argmax(1) == labels).mean() >= 0.9  # LeNet's scores classify the digits


@pytest.fixture(scope="module")
def parity_mnist(tmp_path_factory):
    """The digits as MNIST IDX files, labelled even (0) / odd (1): a new task for LeNet."""
    from sparknet.data import load_digits
    from sparknet.data.mnist import write_idx

    folder = tmp_path_factory.mktemp("parity-mnist")
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = load_digits(split)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", np.round(x[:, 0] * 255).astype(np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", (y % 2).astype(np.uint8))
    return folder


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """LeNet trained on the ten digits with the engine alone (no Spark), saved as .caffemodel
    once for the fine-tuning tests (which only read it)."""
    from sparknet.data import load_digits
    from sparknet.engine import CaffeNet
    from sparknet.models import lenet

    x, y = load_digits("train")
    rng = np.random.default_rng(0)
    engine = CaffeNet(lenet.solver(batch_size=32))

    def batches():
        while True:
            j = rng.integers(0, len(y), 32)
            yield {"data": x[j], "label": y[j]}
    losses = engine.train(150, batches())
    assert losses[-20:].mean() < 0.5
    path = tmp_path_factory.mktemp("pretrained") / "digits.caffemodel"
    engine.save_weights(path)
    return path


def test_finetune_app_new_last_layer(parity_mnist, pretrained, tmp_path):
    pre = pretrained
    proc = run_app("finetune_app", "--weights", str(pre), "--net", "lenet",
                   "--data", f"mnist:{parity_mnist}", "--num-classes", "2", "--freeze",
                   "--rounds", "2", "--sync-interval", "20", "--test-interval", "1",
                   "--output", "out", cwd=tmp_path)
    assert "ip2 -> ip2_finetune" in proc.stdout
    check_training_outputs(proc.stdout, tmp_path, rounds=2)
    assert printed_metrics(proc.stdout)["accuracy"] >= 0.9
    before = caffemodel_layers(pre)
    after = caffemodel_layers(tmp_path / "out" / "finetuned.caffemodel")
    assert "ip2" not in after and after["ip2_finetune"][0].shape == (2, 500)
    for layer in ("conv1", "conv2", "ip1"):  # loaded from the .caffemodel, then frozen
        for a, b in zip(before[layer], after[layer]):
            np.testing.assert_array_equal(a, b)


def test_finetune_app_labels_that_do_not_fit(parity_mnist, pretrained, tmp_path):
    """One output for two labels: refused on the driver, before any round, without a traceback."""
    proc = run_app("finetune_app", "--weights", str(pretrained), "--data", f"mnist:{parity_mnist}",
                   "--num-classes", "1", "--rounds", "1", "--output", "out", cwd=tmp_path,
                   status=2)
    assert "it must hold integers in [0, 1)" in proc.stderr
    assert "Traceback" not in proc.stderr and "round 1" not in proc.stderr


@pytest.fixture(scope="module")
def parity_lmdb(tmp_path_factory):
    """The digits as two Caffe LMDBs of float Datums, labelled even (0) / odd (1)."""
    from sparknet.data import load_digits
    from sparknet.data.caffe_lmdb import write_lmdb

    folder = tmp_path_factory.mktemp("parity-lmdb")
    for split in ("train", "test"):
        x, y = load_digits(split)
        write_lmdb(folder / split, zip(x, (y % 2).astype(int)))
    return folder


def test_finetune_app_on_lmdb_databases(parity_lmdb, pretrained, tmp_path):
    """The apps take every data URI the command line takes: here lmdb:, train and test."""
    proc = run_app("finetune_app", "--weights", str(pretrained), "--net", "lenet",
                   "--data", f"lmdb:{parity_lmdb / 'train'}",
                   "--test-data", f"lmdb:{parity_lmdb / 'test'}", "--num-classes", "2",
                   "--rounds", "2", "--sync-interval", "20", "--test-interval", "1",
                   "--output", "out", cwd=tmp_path)
    history = check_training_outputs(proc.stdout, tmp_path, rounds=2)
    assert printed_metrics(proc.stdout)["accuracy"] >= 0.9
    # scored on the 360 test digits of the second LMDB, not on the 1437 training ones
    assert all(r["test"]["accuracy"] * 360 == pytest.approx(round(r["test"]["accuracy"] * 360),
                                                            abs=1e-3) for r in history)


# -- mistakes -------------------------------------------------------------------------------

@pytest.mark.parametrize(("app", "args", "message"), [
    ("lenet_app", ["--workers", "0"], "positive integer"),
    ("lenet_app", ["--mnist", "/no/such/folder"], "no such folder"),
    ("lenet_app", ["--resume"], "--resume needs --checkpoint-dir"),
    ("cifar_app", ["/no/such/cifar"], "no such folder"),
    ("imagenet_app", ["2", "bucket", "--crop", "300"], "larger than --image-size"),
    ("featurizer_app", ["--weights", "/no/such.caffemodel", "--blob", "ip1",
                        "--output", "x.parquet"], "no such file"),
    ("finetune_app", ["--weights", "/no/such.caffemodel", "--num-classes", "2"],
     "no such file"),
    ("finetune_app", ["--weights", __file__, "--num-classes", "2", "--data", "ftp://x"],
     "unknown data source 'ftp://x'"),
    ("finetune_app", ["--weights", __file__, "--num-classes", "2", "--data", "lmdb:/no/db"],
     "--data lmdb:/no/db: no such folder"),
    ("finetune_app", ["--weights", __file__, "--num-classes", "2", "--test-data", "mnist:"],
     "--test-data mnist: names no folder"),
    ("featurizer_app", ["--weights", __file__, "--blob", "ip1", "--output", "x.parquet",
                        "--data", "s3://"], "--data s3://: not an S3 URI"),
])
def test_user_mistakes_exit_2_without_traceback(app, args, message, tmp_path):
    proc = run_app(app, *args, cwd=tmp_path, status=2, timeout=60)
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


# -- workers that cannot import this sparknet ---------------------------------------------

def run_clean(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    path = cwd / "script.py"
    path.write_text(script)
    return subprocess.run([sys.executable, str(path)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900, check=False)


WORKER_CHECK = '''
import sys
sys.path.insert(0, {root!r})
from pyspark.sql import SparkSession
from sparknet.data.digits import digits_rdd
from sparknet.models import lenet
from sparknet.spark import WorkerPythonError, train

builder = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
{conf}
spark = builder.getOrCreate()
try:
    train(spark, lenet.solver(batch_size=16), digits_rdd(spark, "train"), workers=2,
          sync_interval=2, rounds=1, test_interval=0, progress=False,
          callback=lambda rec: print("ROUND RAN"))
except WorkerPythonError as e:
    print("WORKER-ERROR", e)
    print("INTERPRETER", e.interpreter)
spark.stop()
'''


@pytest.mark.parametrize("case", ["no-sparknet", "other-sparknet"])
def test_workers_that_cannot_import_this_sparknet_fail_before_round_1(tmp_path, case):
    env = clean_env()
    if case == "no-sparknet":  # an interpreter without sparknet (nor pyspark)
        python = "/usr/bin/python3"
        conf = f'builder = builder.config("spark.pyspark.python", {python!r})'
    else:  # the workers find another copy of sparknet first
        python = sys.executable
        conf = ""
        fake = tmp_path / "elsewhere" / "sparknet"
        fake.mkdir(parents=True)
        (fake / "__init__.py").write_text('__version__ = "0.0.1"\n')
        env["PYTHONPATH"] = str(fake.parent)
    done = run_clean(WORKER_CHECK.format(root=str(ROOT), conf=conf), tmp_path, env)
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout
    assert "ROUND RAN" not in out
    assert f"INTERPRETER {python}" in out
    assert f"interpreter '{python}'" in out
    assert "PYSPARK_PYTHON" in out and "spark.pyspark.python" in out
    if case == "other-sparknet":
        assert f"imports sparknet 0.0.1 from {fake}" in out
