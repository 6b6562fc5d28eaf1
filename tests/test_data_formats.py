"""MNIST IDX files, CIFAR-10 batches, the bundled digits and DataFrames: real files, real Spark."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from sparknet.data import (
    DataError,
    cifar10_rdd,
    dataframe_to_rdd,
    digits_dataframe,
    digits_rdd,
    load_cifar10,
    load_digits,
    load_mnist,
    mnist_dataframe,
    mnist_rdd,
    to_rdd,
)
from sparknet.data.cifar import RECORD, write_cifar
from sparknet.data.mnist import CAFFE_SCALE, parse_idx, write_idx
from sparknet.io import CorruptFileError, uris


def make_mnist(folder, n_train=40, n_test=12, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for split, n, stem in (("train", n_train, "train"), ("test", n_test, "t10k")):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{stem}-images-idx3-ubyte{suffix}", x, gzip_level=6 if gz else None)
        write_idx(folder / f"{stem}-labels-idx1-ubyte{suffix}", y, gzip_level=6 if gz else None)
        out[split] = (x, y)
    return out


# -- MNIST ---------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_mnist_files_read_back(tmp_path, gz):
    truth = make_mnist(tmp_path, gz=gz)
    for split in ("train", "test"):
        x, y = load_mnist(tmp_path, split)
        assert x.dtype == np.float32 and x.shape == (len(truth[split][0]), 1, 28, 28)
        np.testing.assert_array_equal(x[:, 0], truth[split][0].astype(np.float32) * CAFFE_SCALE)
        np.testing.assert_array_equal(y, truth[split][1])
    # the header as the original IDX description has it (big-endian, magic 2051)
    raw = (tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))).read_bytes()
    raw = gzip.decompress(raw) if gz else raw
    assert struct.unpack(">IIII", raw[:16]) == (2051, 40, 28, 28)


def test_idx_bad_input_names_the_file(tmp_path):
    make_mnist(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte"
    good = images.read_bytes()

    images.write_bytes(good[:-100])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: truncated IDX file.*"
                                        r"need 31360 bytes of data, found 31260"):
        load_mnist(tmp_path, "train")

    images.write_bytes(good[:10])
    with pytest.raises(DataError, match="truncated IDX header"):
        load_mnist(tmp_path, "train")

    # labels where images belong: wrong magic
    images.write_bytes((tmp_path / "train-labels-idx1-ubyte").read_bytes())
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: wrong magic number 2049 "
                                        r"\(0x00000801\), expected 2051"):
        load_mnist(tmp_path, "train")

    images.write_bytes(good + b"\0")
    with pytest.raises(DataError, match="1 unexpected bytes after the data"):
        load_mnist(tmp_path, "train")

    images.write_bytes(gzip.compress(good)[:-20])
    with pytest.raises(CorruptFileError, match="corrupt or truncated gzip"):
        load_mnist(tmp_path, "train")

    images.unlink()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte or .*\\.gz"):
        load_mnist(tmp_path, "train")

    with pytest.raises(DataError, match="not an IDX file"):
        parse_idx(b"\x01\x02\x03\x04rest", "x.idx")


def test_mnist_count_mismatch(tmp_path):
    make_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(5, np.uint8))
    with pytest.raises(DataError, match="has 12 images but .*t10k-labels-idx1-ubyte has 5"):
        load_mnist(tmp_path, "test")


def test_mnist_from_s3_and_through_hadoop(tmp_path, s3, spark):
    truth = make_mnist(tmp_path, gz=True)
    bucket = s3.bucket()
    for f in tmp_path.iterdir():
        s3.put(bucket, f"mnist/{f.name}", f.read_bytes())
    x, y = load_mnist(f"s3://{bucket}/mnist", "test", s3=s3.options(), scale=1.0)
    np.testing.assert_array_equal(x[:, 0], truth["test"][0])
    np.testing.assert_array_equal(y, truth["test"][1])
    # any Hadoop file system (hdfs://...) goes through Spark; file:// takes the same path
    data = uris._read_hadoop(f"file://{tmp_path}/t10k-labels-idx1-ubyte.gz", spark)
    np.testing.assert_array_equal(parse_idx(data, "labels"), truth["test"][1])
    with pytest.raises(FileNotFoundError, match="nothere"):
        uris._read_hadoop(f"file://{tmp_path}/nothere", spark)
    with pytest.raises(FileNotFoundError, match=f"s3://{bucket}/elsewhere/t10k-images"):
        load_mnist(f"s3://{bucket}/elsewhere", "test", s3=s3.options())
    with pytest.raises(FileNotFoundError, match="S3 bucket 'no-such-bucket' does not exist"):
        load_mnist("s3://no-such-bucket/mnist", "test", s3=s3.options())


def test_mnist_rdd_and_dataframe(tmp_path, spark):
    truth = make_mnist(tmp_path)
    rdd = mnist_rdd(spark, tmp_path, "train", num_partitions=3)
    assert rdd.getNumPartitions() == 3
    pairs = rdd.collect()
    assert len(pairs) == 40
    a, label = pairs[7]
    assert a.dtype == np.float32 and a.shape == (1, 28, 28) and isinstance(label, float)
    np.testing.assert_array_equal(a[0], truth["train"][0][7] * np.float32(CAFFE_SCALE))
    assert [p[1] for p in pairs] == truth["train"][1].tolist()
    df = mnist_dataframe(spark, tmp_path, "test")
    assert df.columns == ["data", "label"]
    rows = df.collect()
    assert len(rows) == 12 and len(rows[0]["data"]) == 784
    np.testing.assert_allclose(np.asarray(rows[3]["data"]).reshape(28, 28),
                               truth["test"][0][3] * CAFFE_SCALE, rtol=1e-6)


# -- CIFAR-10 ------------------------------------------------------------------------------

def make_cifar(folder, per_file=7, seed=0):
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        x = rng.integers(0, 256, (per_file, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, per_file)
        write_cifar(folder / name, x, y)
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5]


def test_cifar_files_read_back(tmp_path):
    xtr, ytr, xte, yte = make_cifar(tmp_path)
    assert (tmp_path / "data_batch_1.bin").stat().st_size == 7 * 3073
    x, y = load_cifar10(tmp_path, "train")
    np.testing.assert_array_equal(x, xtr.astype(np.float32))
    np.testing.assert_array_equal(y, ytr)
    # record layout: label byte, then 1024 red, 1024 green, 1024 blue
    raw = (tmp_path / "test_batch.bin").read_bytes()
    assert raw[0] == yte[0] and raw[1 + 1024] == xte[0, 1, 0, 0]
    xs, ys = load_cifar10(tmp_path, "train", shuffle_seed=3)
    assert not np.array_equal(ys, y) or not np.array_equal(xs, x)
    perm = np.random.default_rng(3).permutation(35)  # the documented shuffle
    np.testing.assert_array_equal(xs, x[perm])
    np.testing.assert_array_equal(ys, y[perm])
    xs2, ys2 = load_cifar10(tmp_path, "train", shuffle_seed=3)
    np.testing.assert_array_equal(xs2, xs)  # the seed fixes it
    np.testing.assert_array_equal(ys2, ys)


def test_cifar_bad_files(tmp_path):
    make_cifar(tmp_path)
    f = tmp_path / "data_batch_3.bin"
    f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(DataError, match=r"data_batch_3.bin: 21506 bytes is not a whole number "
                                        r"of CIFAR-10 records"):
        load_cifar10(tmp_path, "train")
    bad = bytearray(RECORD * 2)
    bad[RECORD] = 42
    f.write_bytes(bytes(bad))
    with pytest.raises(DataError, match="record 1 has label 42"):
        load_cifar10(tmp_path, "train")
    f.unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3.bin"):
        load_cifar10(tmp_path, "train")


def test_cifar_rdd(tmp_path, spark):
    xtr, ytr, _, _ = make_cifar(tmp_path)
    rdd = cifar10_rdd(spark, tmp_path, "train", shuffle_seed=1, num_partitions=2)
    pairs = rdd.collect()
    assert len(pairs) == 35 and rdd.getNumPartitions() == 2
    assert all(a.dtype == np.float32 and a.shape == (3, 32, 32) for a, _ in pairs)
    perm = np.random.default_rng(1).permutation(35)
    np.testing.assert_array_equal(np.stack([a for a, _ in pairs]), xtr[perm].astype(np.float32))
    assert [p[1] for p in pairs] == ytr[perm].astype(float).tolist()


# -- digits and generic arrays -------------------------------------------------------------

def test_num_partitions_by_position_still_works_with_a_deprecation_warning(spark):
    """``digits_rdd(spark, "train", 2)`` as written before num_partitions became keyword-only."""
    with pytest.warns(DeprecationWarning, match=r"digits_rdd\(\): pass num_partitions by "
                      r"keyword \(num_partitions=2\); giving it by position is deprecated"):
        rdd = digits_rdd(spark, "test", 2)
    assert rdd.getNumPartitions() == 2 and rdd.count() == 360
    with pytest.warns(DeprecationWarning, match=r"digits_dataframe\(\): pass num_partitions"):
        assert digits_dataframe(spark, "test", 3).rdd.getNumPartitions() == 3
    with pytest.raises(TypeError, match=r"at most 3 positional arguments \(4 given\)"):
        digits_rdd(spark, "test", 2, 5)
    with pytest.raises(TypeError, match="multiple values for argument 'num_partitions'"):
        digits_rdd(spark, "test", 2, num_partitions=2)


def test_digits_rdd_and_dataframe(spark):
    x, y = load_digits("train")
    rdd = digits_rdd(spark, "train", num_partitions=4)
    assert rdd.getNumPartitions() == 4
    pairs = rdd.collect()
    assert len(pairs) == len(y) == 1437
    np.testing.assert_array_equal(np.stack([a for a, _ in pairs]), x)
    assert [p[1] for p in pairs] == y.tolist()
    df = digits_dataframe(spark, "test")
    assert df.count() == 360
    assert dict(df.dtypes) == {"data": "array<float>", "label": "float"}
    # and back: the DataFrame's columns become the trainer's dict batches
    back = dataframe_to_rdd(df, shapes={"data": (1, 28, 28)}).take(3)
    xt, yt = load_digits("test")
    for i, d in enumerate(back):
        np.testing.assert_array_equal(d["data"], xt[i])
        assert d["label"] == yt[i]


def test_the_digits_are_scikit_learns_read_without_importing_it():
    """The bundled digits are exactly scikit-learn's ``load_digits``, upscaled; loading them
    imports no scikit-learn (its datasets module costs every Spark worker 1.3 CPU-s)."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits as sk_digits

    from sparknet.data import digits

    images, labels = digits._packaged()
    theirs = sk_digits()
    np.testing.assert_array_equal(images, theirs.images)
    np.testing.assert_array_equal(labels, theirs.target)
    x, y = load_digits("all")
    assert x.shape == (1797, 1, 28, 28) and x.dtype == np.float32
    np.testing.assert_array_equal(y, theirs.target.astype(np.float32))
    # the 8x8 corners survive the upscaling: pixel (0, 0) of the 28x28 image is (0, 0)'s value
    np.testing.assert_allclose(x[:, 0, 0, 0], theirs.images[:, 0, 0] / 16.0, atol=1e-6)
    probe = ("import sys; from sparknet.data import load_digits; load_digits('all'); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_without_scikit_learn_the_digits_say_what_to_install(monkeypatch):
    import importlib.util

    from sparknet.data import digits

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "sklearn" else find_spec(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"^the sklearn package, which ships the "
                       r"bundled digits, is not installed: pip install scikit-learn "
                       r"\(requirements\.txt pins it\)$"):
        digits._packaged()


def test_to_rdd_ships_bytes_and_scales(spark):
    x = np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5)
    pairs = to_rdd(spark, x, [1, 2], scale=0.5).collect()
    np.testing.assert_array_equal(pairs[1][0], x[1].astype(np.float32) * 0.5)
    with pytest.raises(ValueError, match="2 examples but 3 labels"):
        to_rdd(spark, x, [1, 2, 3])


def test_spark_image_schema(tmp_path, spark):
    rng = np.random.default_rng(0)
    truth = {}
    for i in range(3):
        img = rng.integers(0, 256, (10 + i, 12, 3), dtype=np.uint8)
        Image.fromarray(img).save(tmp_path / f"cls{i}_{i}.png")
        truth[f"cls{i}_{i}.png"] = img
    Image.fromarray(rng.integers(0, 256, (6, 7), dtype=np.uint8)).save(tmp_path / "grey.png")
    df = spark.read.format("image").load(str(tmp_path))
    from pyspark.sql import functions as F

    df = df.withColumn("label", F.length(F.col("image.origin")).cast("double"))
    out = dataframe_to_rdd(df, {"data": "image", "label": "label"}).collect()
    origins = [r.image.origin for r in df.select("image").collect()]
    assert len(out) == 4
    for origin, ex in zip(origins, out):
        name = origin.rsplit("/", 1)[1]
        assert ex["label"] == float(len(origin))
        if name == "grey.png":
            assert ex["data"].shape == (1, 6, 7)
            continue
        rgb = truth[name]
        np.testing.assert_array_equal(ex["data"], rgb[:, :, ::-1].transpose(2, 0, 1))  # BGR
    rgb_out = dataframe_to_rdd(df, {"data": "image"}, channel_order="RGB",
                               size=(8, 8)).collect()
    assert all(e["data"].shape[1:] == (8, 8) for e in rgb_out)


def test_binary_and_array_columns(spark):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    import io

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    raw = rng.integers(0, 256, (2, 3, 4), dtype=np.uint8)
    df = spark.createDataFrame([(bytearray(buf.getvalue()), bytearray(raw.tobytes()),
                                 [1.0, 2.0, 3.0, 4.0], 7)],
                               "png binary, raw binary, vec array<double>, label int")
    ex = dataframe_to_rdd(df, shapes={"raw": (2, 3, 4), "vec": (2, 2)},
                          channel_order="RGB").first()
    np.testing.assert_array_equal(ex["png"], img.transpose(2, 0, 1))
    np.testing.assert_array_equal(ex["raw"], raw)
    np.testing.assert_array_equal(ex["vec"], [[1, 2], [3, 4]])
    assert ex["label"] == 7.0
    with pytest.raises(ValueError, match="no column 'nope'"):
        dataframe_to_rdd(df, {"data": "nope"})


@pytest.mark.parametrize("writer", ["idx", "cifar", "lmdb"])
def test_a_failed_write_names_the_file_leaves_no_temporary_and_keeps_the_old_one(
        tmp_path, file_size_limit, writer):
    from sparknet.data.caffe_lmdb import load_lmdb, write_lmdb

    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (2, 3, 32, 32)).astype(np.uint8)
    large = rng.integers(0, 255, (200, 3, 32, 32)).astype(np.uint8)   # ~600 kB
    labels = np.zeros(200, np.uint8)

    def write(path, images):
        if writer == "idx":
            write_idx(path, images)
        elif writer == "cifar":
            write_cifar(path, images, labels[:len(images)])
        else:
            write_lmdb(path, zip(images, labels[:len(images)].tolist()), overwrite=True)

    path = tmp_path / {"idx": "images-idx4-ubyte", "cifar": "data_batch_1.bin",
                       "lmdb": "train_lmdb"}[writer]
    write(path, small)
    old = sorted((p.relative_to(tmp_path), p.read_bytes()) for p in tmp_path.rglob("*")
                 if p.is_file())
    with file_size_limit(64 << 10), pytest.raises(OSError) as caught:  # the disk fills up
        write(path, large)
    assert str(path) in str(caught.value)
    now = sorted((p.relative_to(tmp_path), p.read_bytes()) for p in tmp_path.rglob("*")
                 if p.is_file())
    assert now == old                                # the old file whole, nothing left over
    if writer == "lmdb":
        assert load_lmdb(path)[0].shape == (2, 3, 32, 32)


def test_to_array_converts_each_kind_of_value_as_trainer_and_dataframes_do():
    """One conversion by value: arrays, ML vectors, raw or encoded bytes, image structs."""
    import io

    from pyspark.ml.linalg import Vectors
    from pyspark.sql import Row

    from sparknet.data.images import ImageDecodeError
    from sparknet.data.rdd import to_array

    rng = np.random.default_rng(2)
    a = rng.random((2, 3), dtype=np.float32)
    assert to_array(a) is a
    np.testing.assert_array_equal(to_array(Vectors.dense([1.0, 2.0])), [1.0, 2.0])
    raw = rng.integers(0, 256, (2, 3, 4), dtype=np.uint8)
    got = to_array(bytes(raw.tobytes()), (2, 3, 4), "data")
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, raw.reshape(-1))
    img = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    png = buf.getvalue()
    np.testing.assert_array_equal(to_array(png, (3, 5, 6)), img[:, :, ::-1].transpose(2, 0, 1))
    np.testing.assert_array_equal(to_array(png, channel_order="RGB"), img.transpose(2, 0, 1))
    assert to_array(png, (1, 4, 3)).shape == (1, 4, 3)  # one channel, resized, as the blob
    with pytest.raises(ImageDecodeError, match="'data'"):
        to_array(b"\x00" * 7, (2, 3, 4), "data")
    struct = Row(origin="x.png", height=5, width=6, nChannels=3, mode=16,
                 data=bytearray(img[:, :, ::-1].tobytes()))  # Spark stores BGR
    np.testing.assert_array_equal(to_array(struct), img[:, :, ::-1].transpose(2, 0, 1))
    np.testing.assert_array_equal(to_array(struct, channel_order="RGB"), img.transpose(2, 0, 1))
    assert to_array(struct, size=(3, 2)).shape == (3, 2, 3)
    np.testing.assert_array_equal(to_array([[1, 2], [3, 4]]), [[1, 2], [3, 4]])
