"""A corpus of user mistakes with data: files, S3, Spark data, checkpoints, the command line.

Every case is one line: what the user did, the error it must raise, and the
words of the message that name what they wrote (the file, the S3 key, the
column, the checkpoint, the argument). Each test also checks that nothing
was lost: the files the user gave are unchanged afterwards, and the
interpreter (or the CLI process) is still there to report it.
"""
from __future__ import annotations

import gzip
import json
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sparknet.data import load_cifar10, load_mnist, synthetic
from sparknet.data.caffe_lmdb import load_lmdb, read_lmdb
from sparknet.data.imagenet import load_imagenet, parse_labels, tar_examples
from sparknet.io.s3 import NoSuchBucketError
from sparknet.models import lenet
from sparknet.proto import caffe_pb2
from sparknet.spark import DataError, train
from sparknet.spark.checkpoint import CheckpointError

ROOT = Path(__file__).resolve().parent.parent


# -- bytes of well-formed and broken files ---------------------------------------------------

def idx(array: np.ndarray, magic_code: int = 0x08) -> bytes:
    a = np.asarray(array, np.uint8)
    return struct.pack(">HBB", 0, magic_code, a.ndim) + struct.pack(
        f">{a.ndim}I", *a.shape) + a.tobytes()


IMAGES = idx(np.zeros((3, 28, 28)))
LABELS = idx(np.array([1, 2, 3]))
MNIST = {"train-images-idx3-ubyte": IMAGES, "train-labels-idx1-ubyte": LABELS}


def cifar(n: int = 2, label: int = 1) -> bytes:
    records = np.zeros((n, 3073), np.uint8)
    records[:, 0] = label
    return records.tobytes()


CIFAR = {f"data_batch_{i}.bin": cifar() for i in range(1, 6)}


def datum(**fields: Any) -> bytes:
    return caffe_pb2.Datum(**fields).SerializeToString()


def lmdb_db(*values: bytes) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        import lmdb

        env = lmdb.open(str(folder / "db"), map_size=1 << 22)
        with env.begin(write=True) as txn:
            for i, v in enumerate(values):
                txn.put(f"{i:08d}".encode(), v)
        env.close()
    return make


# -- data files ----------------------------------------------------------------------------------
# (case, files the user has, what they call on folder d, the error, the words naming it)

FILE_CASES = [
    ("mnist-images-with-labels-magic", {**MNIST, "train-images-idx3-ubyte": LABELS},
     lambda d: load_mnist(d), ValueError, "{d}/train-images-idx3-ubyte: wrong magic number"),
    ("mnist-images-cut-short", {**MNIST, "train-images-idx3-ubyte": IMAGES[:1000]},
     lambda d: load_mnist(d), ValueError, "{d}/train-images-idx3-ubyte: truncated IDX file"),
    ("mnist-header-only", {**MNIST, "train-images-idx3-ubyte": IMAGES[:6]},
     lambda d: load_mnist(d), ValueError, "{d}/train-images-idx3-ubyte: truncated IDX header"),
    ("mnist-bytes-after-the-data", {**MNIST, "train-labels-idx1-ubyte": LABELS + b"\0\0"},
     lambda d: load_mnist(d), ValueError, "{d}/train-labels-idx1-ubyte: 2 unexpected bytes"),
    ("mnist-gzip-cut-short", {"train-images-idx3-ubyte.gz": gzip.compress(IMAGES)[:30],
                              "train-labels-idx1-ubyte": LABELS},
     lambda d: load_mnist(d), ValueError, "{d}/train-images-idx3-ubyte.gz: corrupt or truncated gzip"),
    ("mnist-fewer-labels-than-images", {**MNIST, "train-labels-idx1-ubyte": idx(np.ones(2))},
     lambda d: load_mnist(d), ValueError, "has 3 images but {d}/train-labels-idx1-ubyte has 2 labels"),
    ("mnist-labels-of-two-dimensions", {**MNIST, "train-labels-idx1-ubyte": idx(np.ones((3, 2)))},
     lambda d: load_mnist(d), ValueError, "{d}/train-labels-idx1-ubyte: wrong magic number"),
    ("mnist-test-split-missing", MNIST,
     lambda d: load_mnist(d, "test"), FileNotFoundError, "{d}/t10k-images-idx3-ubyte"),
    ("mnist-unknown-split", MNIST,
     lambda d: load_mnist(d, "validation"), ValueError, "'validation'"),
    ("cifar-batch-cut-short", {**CIFAR, "data_batch_3.bin": cifar()[:5000]},
     lambda d: load_cifar10(d), ValueError, "{d}/data_batch_3.bin: 5000 bytes is not a whole number"),
    ("cifar-100-file-as-cifar-10", {**CIFAR, "data_batch_2.bin": cifar(label=42)},
     lambda d: load_cifar10(d), ValueError, "{d}/data_batch_2.bin: record 0 has label 42"),
    ("cifar-empty-batch", {**CIFAR, "data_batch_5.bin": b""},
     lambda d: load_cifar10(d), ValueError, "{d}/data_batch_5.bin: 0 bytes"),
    ("cifar-batch-missing", {"data_batch_1.bin": cifar()},
     lambda d: load_cifar10(d), FileNotFoundError, "{d}/data_batch_2.bin"),
    ("lmdb-path-missing", {},
     lambda d: load_lmdb(d / "db"), FileNotFoundError, "{d}/db: no such LMDB database"),
    ("lmdb-folder-without-data", {"db/readme.txt": b"x"},
     lambda d: load_lmdb(d / "db"), FileNotFoundError, "{d}/db: not an LMDB database"),
    ("lmdb-text-file", {"db.mdb": b"not a database at all\n" * 100},
     lambda d: load_lmdb(d / "db.mdb"), ValueError, "{d}/db.mdb: cannot open as LMDB"),
    ("lmdb-value-not-a-datum", lmdb_db(b"\xff\xff\xff\xff"),
     lambda d: load_lmdb(d / "db"), ValueError, "{d}/db key b'00000000': not a Caffe Datum"),
    ("lmdb-datum-of-wrong-size", lmdb_db(datum(channels=1, height=28, width=28, data=b"x" * 10)),
     lambda d: load_lmdb(d / "db"), ValueError, "key b'00000000': 10 bytes of data for shape (1, 28, 28)"),
    ("lmdb-float-datum-of-wrong-size", lmdb_db(datum(channels=1, height=2, width=2, float_data=[1.0])),
     lambda d: list(read_lmdb(d / "db")), ValueError, "key b'00000000': 1 float_data values for shape (1, 2, 2)"),
    ("lmdb-two-shapes", lmdb_db(datum(channels=1, height=1, width=1, data=b"a"),
                                datum(channels=1, height=1, width=2, data=b"ab")),
     lambda d: load_lmdb(d / "db"), ValueError, "{d}/db: key b'00000001' has shape (1, 1, 2)"),
    ("lmdb-encoded-datum-not-an-image", lmdb_db(datum(encoded=True, data=b"GIF89a broken")),
     lambda d: load_lmdb(d / "db"), ValueError, "key b'00000000': encoded datum is not a readable image"),
    ("label-list-without-label", {"val.txt": b"a.JPEG 3\nb.JPEG\n"},
     lambda d: parse_labels((d / "val.txt").read_text().splitlines(), str(d / "val.txt")),
     ValueError, "{d}/val.txt line 2: expected '<file> <integer label>'"),
    ("label-list-with-word-label", {"val.txt": b"a.JPEG cat\n"},
     lambda d: parse_labels((d / "val.txt").read_text().splitlines(), str(d / "val.txt")),
     ValueError, "{d}/val.txt line 1"),
]


def _make(folder: Path, files: Any) -> dict[Path, bytes]:
    if callable(files):
        files(folder)
    else:
        for name, data in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case, files, call, error, words", FILE_CASES,
                         ids=[c[0] for c in FILE_CASES])
def test_a_bad_data_file_is_named(tmp_path, case, files, call, error, words):
    before = _make(tmp_path, files)
    with pytest.raises(error) as caught:
        call(tmp_path)
    assert words.format(d=tmp_path) in str(caught.value)
    assert {p: p.read_bytes() for p in before} == before   # nothing the user had is touched


# -- tar shards: bad members are skipped by name, never fatal -------------------------------------

def _tar(members: list[tuple[str, bytes]]) -> bytes:
    return synthetic.tar_bytes(members)


JPEG = synthetic.photo_jpeg(40, 30, 1)
TAR_CASES = [
    ("shard-not-a-tar", b"just some text, not a tar archive" * 40, "", "not a readable tar"),
    ("shard-cut-short", _tar([("a.jpg", JPEG), ("b.jpg", JPEG)])[:900], "", "truncated"),
    ("member-not-an-image", _tar([("a.jpg", JPEG), ("notes.txt", b"hello")]), "notes.txt", ""),
    ("member-cut-short-jpeg", _tar([("a.jpg", JPEG), ("half.jpg", JPEG[:200])]), "half.jpg", ""),
    ("member-without-label", _tar([("a.jpg", JPEG), ("stray.jpg", JPEG)]), "stray.jpg", ""),
]


@pytest.mark.parametrize("case, data, member, words", TAR_CASES, ids=[c[0] for c in TAR_CASES])
def test_a_bad_tar_member_is_skipped_and_named(tmp_path, caplog, case, data, member, words):
    path = tmp_path / "shard.tar"
    path.write_bytes(data)
    with caplog.at_level("WARNING", logger="sparknet.data.imagenet"):
        got = list(tar_examples(path, {"a.jpg": 0, "b.jpg": 1, "notes.txt": 2, "half.jpg": 3}))
    assert len(got) <= 2
    assert str(path) in caplog.text and member in caplog.text and words in caplog.text
    assert path.read_bytes() == data


# -- S3, on the loopback server ------------------------------------------------------------------

def _bucket_with(s3server: Any, objects: dict[str, bytes]) -> str:
    bucket = s3server.bucket()
    for key, body in objects.items():
        s3server.put(bucket, key, body)
    return bucket


S3_CASES = [
    ("imagenet-bucket-missing", {}, lambda b, o, sp: load_imagenet(sp, "no-such-bucket-x", options=o),
     NoSuchBucketError, "S3 bucket 'no-such-bucket-x' does not exist"),
    ("imagenet-prefix-empty", {"other/x.tar": b""},
     lambda b, o, sp: load_imagenet(sp, b, shard_prefix="train/", options=o),
     FileNotFoundError, "no tar shards under s3://{b}/train/"),
    ("imagenet-label-list-missing", {"ILSVRC2012_train/train.00000.tar": _tar([("a.jpg", JPEG)])},
     lambda b, o, sp: load_imagenet(sp, b, options=o), FileNotFoundError, "s3://{b}/train.txt"),
    ("imagenet-label-list-garbled", {"ILSVRC2012_train/train.00000.tar": _tar([("a.jpg", JPEG)]),
                                     "train.txt": b"a.jpg one\n"},
     lambda b, o, sp: load_imagenet(sp, b, options=o), ValueError, "train.txt line 1"),
    ("mnist-prefix-without-files", {"mnist/readme": b"x"},
     lambda b, o, sp: load_mnist(f"s3://{b}/mnist", s3=o), FileNotFoundError,
     "s3://{b}/mnist/train-images-idx3-ubyte"),
    ("mnist-object-cut-short", {"mnist/train-images-idx3-ubyte": IMAGES[:100],
                                "mnist/train-labels-idx1-ubyte": LABELS},
     lambda b, o, sp: load_mnist(f"s3://{b}/mnist", s3=o), ValueError,
     "s3://{b}/mnist/train-images-idx3-ubyte: truncated IDX file"),
    ("cifar-object-cut-short", {f"c/data_batch_{i}.bin": cifar()[:3000 if i == 4 else None]
                                for i in range(1, 6)},
     lambda b, o, sp: load_cifar10(f"s3://{b}/c", s3=o), ValueError,
     "s3://{b}/c/data_batch_4.bin: 3000 bytes"),
    ("cifar-bucket-missing", {}, lambda b, o, sp: load_cifar10("s3://no-such-bucket-y/c", s3=o),
     NoSuchBucketError, "'no-such-bucket-y'"),
    ("checkpoints-in-missing-bucket", {},
     lambda b, o, sp: train(sp, lenet.solver(16), sp.sparkContext.parallelize([1]), rounds=1,
                            checkpoint_dir="s3://no-such-bucket-z/run", resume=True,
                            s3_options=o, progress=False),
     NoSuchBucketError, "'no-such-bucket-z'"),
    ("init-weights-key-missing", {"w/other.caffemodel": b""},
     lambda b, o, sp: train(sp, lenet.solver(16), sp.sparkContext.parallelize([1]), rounds=1,
                            init_weights=f"s3://{b}/w/lenet.caffemodel", s3_options=o,
                            progress=False),
     FileNotFoundError, "s3://{b}/w/lenet.caffemodel"),
]


@pytest.mark.parametrize("case, objects, call, error, words", S3_CASES,
                         ids=[c[0] for c in S3_CASES])
def test_bad_s3_input_is_named(s3, spark, case, objects, call, error, words):
    bucket = _bucket_with(s3, objects)
    with pytest.raises(error) as caught:
        call(bucket, s3.options(), spark)
    assert words.format(b=bucket) in str(caught.value)
    assert sorted(s3.keys(bucket)) == sorted(objects)         # nothing written or deleted


# -- Spark data: wrong columns, sizes, label types ------------------------------------------------

def _digits(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    from sparknet.data import load_digits

    x, y = load_digits("train")
    return np.array(x[:n]), np.array(y[:n])


def _frame(spark: Any, **columns: Any) -> Any:
    return spark.createDataFrame(list(zip(*columns.values())), list(columns))


X, Y = _digits()
SPARK_CASES = [
    ("frame-without-label-column",
     lambda sp: _frame(sp, data=[[float(v) for v in r.ravel()] for r in X], target=[float(v) for v in Y]),
     DataError, "the DataFrame has no column 'label' for input blob 'label'"),
    ("frame-column-named-otherwise",
     lambda sp: _frame(sp, image=[[float(v) for v in r.ravel()] for r in X], label=[float(v) for v in Y]),
     DataError, "no column 'data'"),
    ("frame-image-of-wrong-size",
     lambda sp: _frame(sp, data=[[float(v) for v in r.ravel()[:700]] for r in X], label=[float(v) for v in Y]),
     DataError, "input blob 'data' takes (1, 28, 28)"),
    ("frame-label-as-words",
     lambda sp: _frame(sp, data=[[float(v) for v in r.ravel()] for r in X], label=[str(v) for v in Y]),
     DataError, "input blob 'label' (a column or item of that name) gets values of dtype <U3"),
    ("frame-labels-past-the-classes",
     lambda sp: _frame(sp, data=[[float(v) for v in r.ravel()] for r in X], label=[float(v) + 5 for v in Y]),
     DataError, "'label' has values from 5 to 14, but layer 'loss'"),
    ("rdd-three-items-for-two-blobs",
     lambda sp: sp.sparkContext.parallelize([(a, b, 0) for a, b in zip(X, Y)], 2),
     DataError, "an example of 3 items for 2 input blobs (data, label)"),
    ("rdd-dict-without-label",
     lambda sp: sp.sparkContext.parallelize([{"data": a} for a in X], 2),
     DataError, "no value for input blob 'label' (its keys: data)"),
    ("rdd-of-strings",
     lambda sp: sp.sparkContext.parallelize(["img.png"] * 4, 2),
     DataError, "got str"),
    ("rdd-images-of-another-size",
     lambda sp: sp.sparkContext.parallelize([(np.zeros((3, 32, 32), np.float32), 1.0)] * 4, 2),
     DataError, "input blob 'data' takes (1, 28, 28) per example (784 values), the data gives (3, 32, 32)"),
    ("rdd-negative-labels",
     lambda sp: sp.sparkContext.parallelize([(a, -1.0) for a in X], 2),
     DataError, "'label' has values from -1 to -1"),
    ("rdd-infinite-pixels",
     lambda sp: sp.sparkContext.parallelize([(np.full_like(a, np.inf), b) for a, b in zip(X, Y)],
                                            2),
     DataError, "input blob 'data' has NaN or infinite values"),
    ("rdd-text-pixels",
     lambda sp: sp.sparkContext.parallelize([(np.full((1, 28, 28), "x"), 1.0)] * 4, 2),
     DataError, "example 0: input blob 'data' (a column or item of that name) gets values of dtype <U1 (such as 'x')"),
    ("rdd-empty",
     lambda sp: sp.sparkContext.parallelize([], 2), DataError, "train_data is empty"),
    ("arrays-of-two-lengths",
     lambda sp: (X, Y[:10]), ValueError, "40"),
    ("a-python-list", lambda sp: list(zip(X, Y)), TypeError, "got list"),
]


@pytest.mark.parametrize("case, make, error, words", SPARK_CASES, ids=[c[0] for c in SPARK_CASES])
def test_bad_training_data_is_named_before_round_1(spark, case, make, error, words):
    rounds: list[dict] = []
    with pytest.raises(error) as caught:
        train(spark, lenet.solver(16), make(spark), workers=2, sync_interval=2, rounds=1,
              test_interval=0, progress=False, callback=rounds.append)
    assert words in str(caught.value)
    assert rounds == []
    assert spark.sparkContext.parallelize([1, 2]).sum() == 3   # the executors are still there


# -- checkpoints -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(spark, tmp_path_factory) -> Path:
    """A good one-round checkpoint folder (LeNet, batch 16, two workers)."""
    folder = tmp_path_factory.mktemp("ckpt") / "run"
    X2, Y2 = _digits(64)
    train(spark, lenet.solver(16), (X2, Y2), workers=2, sync_interval=2, rounds=1,
          test_interval=0, progress=False, checkpoint_dir=folder)
    return folder


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _old_format_cut(path: Path) -> None:  # a checkpoint written before sizes were recorded
    state = path / "state.json"
    s = json.loads(state.read_text())
    s.pop("files", None)
    state.write_text(json.dumps(s))
    _cut(path / "weights.caffemodel")


R1 = "round-000001"
CHECKPOINT_CASES = [
    ("state-cut-short", lambda c: _cut(c / R1 / "state.json"), CheckpointError,
     "{c}/round-000001/state.json is not valid JSON"),
    ("state-not-an-object", lambda c: (c / R1 / "state.json").write_text("[1, 2]"),
     CheckpointError, "{c}/round-000001/state.json holds no round number"),
    ("weights-missing", lambda c: (c / R1 / "weights.caffemodel").unlink(), CheckpointError,
     "{c}/round-000001/weights.caffemodel is missing"),
    ("weights-cut-short", lambda c: _cut(c / R1 / "weights.caffemodel"), CheckpointError,
     "{c}/round-000001/weights.caffemodel is"),
    ("weights-bit-flipped", lambda c: _flip(c / R1 / "weights.caffemodel"), CheckpointError,
     "{c}/round-000001/weights.caffemodel does not match its recorded checksum"),
    ("worker-state-cut-short", lambda c: _cut(c / R1 / "workers/part-00000.solverstate"),
     CheckpointError, "{c}/round-000001/workers/part-00000.solverstate is"),
    ("old-checkpoint-weights-cut-short", lambda c: _old_format_cut(c / R1), CheckpointError,
     "{c}/round-000001/weights.caffemodel"),
    ("checkpoint-of-another-run", lambda c: None, ValueError,
     "cannot resume from {c}/round-000001: it was written by a different configuration"),
]


@pytest.mark.parametrize("case, damage, error, words", CHECKPOINT_CASES,
                         ids=[c[0] for c in CHECKPOINT_CASES])
def test_a_damaged_checkpoint_is_named_on_resume(spark, checkpoint, tmp_path, case, damage,
                                                 error, words):
    folder = tmp_path / "run"
    shutil.copytree(checkpoint, folder)
    damage(folder)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    X2, Y2 = _digits(64)
    batch = 8 if case == "checkpoint-of-another-run" else 16
    with pytest.raises(error) as caught:
        train(spark, lenet.solver(batch), (X2, Y2), workers=2, sync_interval=2, rounds=1,
              test_interval=0, progress=False, checkpoint_dir=folder, resume=True)
    assert words.format(c=folder) in str(caught.value)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


# -- the command line --------------------------------------------------------------------------------

def _binary(d: Path) -> str:
    (d / "weights.bin").write_bytes(bytes(range(256)) * 8)
    return str(d / "weights.bin")


def _binary_prototxt(d: Path) -> str:
    (d / "net.prototxt").write_bytes(b"\x08\x96\x01\x00\xff" * 40)
    return str(d / "net.prototxt")


def _file(d: Path) -> str:
    (d / "plain").write_text("a file, not a folder")
    return str(d / "plain")


CLI_CASES = [
    ("info-of-a-binary-file", lambda d: ["info", _binary(d)], 2, "{d}/weights.bin: a binary file"),
    ("info-of-a-binary-prototxt", lambda d: ["info", _binary_prototxt(d)], 2,
     "{d}/net.prototxt: a binary file, not a text prototxt"),
    ("convert-into-a-file-as-folder", lambda d: ["convert", "lenet", "-o", _file(d) + "/x.prototxt"],
     1, "{d}/plain/x.prototxt"),
    ("train-s3-without-bucket", lambda d: ["train", "lenet", "--data", "s3://"], 2,
     "--data s3://: not an S3 URI"),
    ("train-mnist-folder-missing", lambda d: ["train", "lenet", "--data", f"mnist:{d}/nothing"], 2,
     "--data mnist:{d}/nothing: no such folder"),
    ("train-lmdb-without-path", lambda d: ["train", "lenet", "--data", "lmdb:"], 2,
     "--data lmdb: names no folder"),
    ("train-zero-workers", lambda d: ["train", "lenet", "--workers", "0"], 2,
     "argument --workers: expected a positive integer, got '0'"),
    ("train-negative-rounds", lambda d: ["train", "lenet", "--rounds", "-3"], 2,
     "argument --rounds: expected a positive integer, got '-3'"),
    ("train-bad-image-size", lambda d: ["train", "lenet", "--image-size", "big"], 2,
     "expected a size like 256 or 256x224, got 'big'"),
    ("test-weights-missing", lambda d: ["test", "lenet", "--weights", f"{d}/none.caffemodel"], 2,
     "--weights {d}/none.caffemodel: no such file"),
    ("featurize-weights-missing", lambda d: ["featurize", "lenet", "--weights", "x.caffemodel",
                                             "--blob", "ip1", "--output", "o"], 2,
     "--weights x.caffemodel: no such file"),
    ("train-solver-is-binary", lambda d: ["train", _binary_prototxt(d)], 2,
     "{d}/net.prototxt: a binary file"),
]


@pytest.mark.parametrize("case, args, status, words", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_a_command_line_mistake_is_one_line_naming_it(tmp_path, case, args, status, words):
    argv = args(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    done = subprocess.run([sys.executable, "-m", "sparknet", *argv], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == status, done.stderr[-2000:]
    assert words.format(d=tmp_path) in done.stderr
    assert "Traceback" not in done.stderr
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
