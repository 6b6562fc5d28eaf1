"""Caffe LMDB: what sparknet writes, Caffe's own Data layer reads (through the engine);
what convert_imageset writes (raw and encoded datums), sparknet reads."""
from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image

from sparknet.data import (
    DataError,
    Transformer,
    array_to_datum,
    compute_mean,
    datum_to_array,
    lmdb_rdd,
    load_digits,
    load_lmdb,
    read_lmdb,
    to_rdd,
    write_lmdb,
    write_mean,
)
from sparknet.data.caffe_lmdb import key_ranges
from sparknet.proto import caffe_pb2


def data_net(train_source, *, test_source=None, batch=8, transform=None, test_transform=None,
             classes=10):
    """Data layer(s) -> InnerProduct -> SoftmaxWithLoss, as a solver the engine runs."""
    net = caffe_pb2.NetParameter(name="lmdb_interop")
    for phase, source, tp, name in ((caffe_pb2.TRAIN, train_source, transform, "train_data"),
                                    (caffe_pb2.TEST, test_source, test_transform, "test_data")):
        if source is None:
            continue
        layer = net.layer.add(name=name, type="Data", top=["data", "label"])
        layer.include.add(phase=phase)
        layer.data_param.source = str(source)
        layer.data_param.backend = caffe_pb2.DataParameter.LMDB
        layer.data_param.batch_size = batch
        if tp is not None:
            layer.transform_param.CopyFrom(tp)
    ip = net.layer.add(name="ip", type="InnerProduct", bottom=["data"], top=["ip"])
    ip.inner_product_param.num_output = classes
    ip.inner_product_param.weight_filler.type = "xavier"
    net.layer.add(name="loss", type="SoftmaxWithLoss", bottom=["ip", "label"], top=["loss"])
    solver = caffe_pb2.SolverParameter(base_lr=0.01, lr_policy="fixed", max_iter=100,
                                       random_seed=1)
    solver.net_param.CopyFrom(net)
    return solver


def caffe_batches(solver, phase, count):
    from sparknet.engine import CaffeNet

    net = CaffeNet(solver)
    return net, [net.forward({}, ["data", "label"], phase=phase) for _ in range(count)]


def test_caffe_data_layer_reads_what_sparknet_wrote(tmp_path, spark):
    x, y = load_digits("train")
    pixels = np.round(x[:40] * 255).astype(np.uint8)  # byte datums, as convert_imageset writes
    labels = y[:40]
    db = tmp_path / "digits_lmdb"
    # written from an RDD, streamed to the driver partition by partition
    assert write_lmdb(db, to_rdd(spark, pixels, labels, 3, dtype=np.uint8)) == 40
    tp = caffe_pb2.TransformationParameter(scale=0.00390625)
    net, got = caffe_batches(data_net(db, transform=tp), "TRAIN", 3)
    assert net.blob_shapes("TRAIN")["data"] == (8, 1, 28, 28)
    for i, batch in enumerate(got):
        want = pixels[8 * i:8 * i + 8].astype(np.float32) * np.float32(0.00390625)
        np.testing.assert_array_equal(batch["data"], want)
        np.testing.assert_array_equal(batch["label"], labels[8 * i:8 * i + 8])
    # and Caffe trains from it
    losses = net.train(5)
    assert np.isfinite(losses).all() and losses[0] > 0
    # sparknet reads its own database back, byte for byte
    back_x, back_y = load_lmdb(db, dtype=np.uint8)
    np.testing.assert_array_equal(back_x, pixels)
    np.testing.assert_array_equal(back_y, labels)


def test_caffe_mean_file_crop_and_float_datums(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 3, 10, 12), dtype=np.uint8)
    y = rng.integers(0, 4, 16)
    write_lmdb(tmp_path / "bytes", zip(x, y))
    mean = compute_mean(iter(x))
    write_mean(tmp_path / "mean.binaryproto", mean)
    # TEST: centre crop of (x - mean) * scale, as Caffe computes it and as Transformer does
    tp = caffe_pb2.TransformationParameter(crop_size=6, scale=0.5,
                                           mean_file=str(tmp_path / "mean.binaryproto"))
    solver = data_net(tmp_path / "bytes", test_source=tmp_path / "bytes", transform=tp,
                      test_transform=tp, classes=4)
    _, got = caffe_batches(solver, "TEST", 2)
    ours = Transformer.from_proto(tp, "TEST")
    for i, batch in enumerate(got):
        np.testing.assert_allclose(batch["data"], ours(x[8 * i:8 * i + 8]), rtol=1e-6,
                                   atol=1e-5)
        np.testing.assert_array_equal(batch["label"], y[8 * i:8 * i + 8])
    # float_data datums (non-uint8 arrays) and per-channel mean values
    xf = (x.astype(np.float32) / 7.0)
    write_lmdb(tmp_path / "floats", zip(xf, y))
    tp2 = caffe_pb2.TransformationParameter(mean_value=[1.0, 2.0, 3.0])
    _, got = caffe_batches(data_net(tmp_path / "floats", transform=tp2, classes=4), "TRAIN", 1)
    np.testing.assert_allclose(got[0]["data"], Transformer(mean=[1.0, 2.0, 3.0])(xf[:8]),
                               rtol=1e-6)


def convert_imageset_datum(image_bytes, label):
    """What Caffe's convert_imageset --encoded stores: the file's bytes, no dimensions."""
    d = caffe_pb2.Datum(label=label, encoded=True)
    d.data = image_bytes
    return d


def test_reads_convert_imageset_databases(tmp_path):
    import lmdb

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (7, 5), dtype=np.uint8)
    png, gpng = io.BytesIO(), io.BytesIO()
    Image.fromarray(rgb).save(png, "PNG")
    Image.fromarray(grey).save(gpng, "PNG")
    raw_chw = rng.integers(0, 256, (3, 4, 6), dtype=np.uint8)
    raw = caffe_pb2.Datum(channels=3, height=4, width=6, label=5, data=raw_chw.tobytes())
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 24)
    with env.begin(write=True) as txn:  # keys as convert_imageset makes them
        txn.put(b"00000000_a/rgb.png", convert_imageset_datum(png.getvalue(), 2)
                .SerializeToString())
        txn.put(b"00000001_b/grey.png", convert_imageset_datum(gpng.getvalue(), 3)
                .SerializeToString())
        txn.put(b"00000002_c/raw", raw.SerializeToString())
    env.close()
    got = list(read_lmdb(tmp_path / "db"))
    assert [k for k, _, _ in got] == [b"00000000_a/rgb.png", b"00000001_b/grey.png",
                                      b"00000002_c/raw"]
    assert [lab for _, _, lab in got] == [2, 3, 5]
    np.testing.assert_array_equal(got[0][1], rgb[:, :, ::-1].transpose(2, 0, 1))  # BGR, as Caffe
    np.testing.assert_array_equal(got[1][1], grey[None])
    np.testing.assert_array_equal(got[2][1], raw_chw)


def test_encoded_roundtrip_and_datum_errors(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (5, 3, 8, 9), dtype=np.uint8)
    write_lmdb(tmp_path / "enc", zip(x, range(5)), encoded=True)
    d = caffe_pb2.Datum()
    import lmdb

    env = lmdb.open(str(tmp_path / "enc"), readonly=True, lock=False)
    with env.begin() as txn:
        d.ParseFromString(txn.get(b"00000003"))
    env.close()
    assert d.encoded and d.data[:4] == b"\x89PNG" and d.label == 3
    back, _labels = load_lmdb(tmp_path / "enc", dtype=np.uint8)
    np.testing.assert_array_equal(back, x)  # PNG is lossless, channel order kept
    with pytest.raises(ValueError, match="int32"):
        array_to_datum(x[0], 1.5)
    with pytest.raises(DataError, match="not a Caffe Datum"):
        datum_to_array(b"\xff\xff\xff\xff", name="k1")
    bad = caffe_pb2.Datum(channels=1, height=2, width=2, data=b"abc")
    with pytest.raises(DataError, match=r"3 bytes of data for shape \(1, 2, 2\)"):
        datum_to_array(bad)
    with pytest.raises(FileExistsError, match="enc already exists"):
        write_lmdb(tmp_path / "enc", zip(x, range(5)))
    assert write_lmdb(tmp_path / "enc", zip(x[:2], range(2)), overwrite=True) == 2
    assert len(load_lmdb(tmp_path / "enc")[1]) == 2
    with pytest.raises(FileNotFoundError, match="no such LMDB"):
        load_lmdb(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no data.mdb"):
        load_lmdb(tmp_path / "empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "enc"]  # no temporaries


def test_lmdb_rdd_key_ranges(tmp_path, spark):
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (103, 1, 4, 4), dtype=np.uint8)
    y = rng.integers(0, 10, 103)
    # grows past the initial map size: small commits, many of them
    write_lmdb(tmp_path / "db", zip(x, y), commit_every=7)
    ranges = key_ranges(tmp_path / "db", 4)
    assert len(ranges) == 4 and ranges[0][0] is None and ranges[-1][1] is None
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    rdd = lmdb_rdd(spark, tmp_path / "db", 4, scale=0.5)
    assert rdd.getNumPartitions() == 4
    sizes = rdd.glom().map(len).collect()
    assert sum(sizes) == 103 and max(sizes) - min(sizes) <= 26
    pairs = rdd.collect()
    np.testing.assert_array_equal(np.stack([a for a, _ in pairs]), x.astype(np.float32) * 0.5)
    assert [lab for _, lab in pairs] == y.astype(float).tolist()


def test_large_database_grows_its_map(tmp_path):
    from sparknet.data import caffe_lmdb

    x = np.zeros((3, 3, 1024, 1024), np.uint8)  # 9 MiB, past a 4 MiB starting map
    old = caffe_lmdb._INITIAL_MAP_SIZE
    caffe_lmdb._INITIAL_MAP_SIZE = 4 << 20
    try:
        assert write_lmdb(tmp_path / "big", zip(x, [0, 1, 2])) == 3
    finally:
        caffe_lmdb._INITIAL_MAP_SIZE = old
    assert load_lmdb(tmp_path / "big", dtype=np.uint8)[0].shape == (3, 3, 1024, 1024)
