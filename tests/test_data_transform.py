"""Caffe-style batch preprocessing and mean.binaryproto, checked against Caffe's own formula."""
from __future__ import annotations

import numpy as np
import pytest

from sparknet.data import Transformer, compute_mean, read_mean, to_rdd, write_mean
from sparknet.data.transform import (
    blobproto_to_array,
    mean_to_blobproto,
    transform_batches,
)
from sparknet.proto import caffe_pb2


def caffe_reference(x, ys, xs, flips, crop, scale, mean_image=None, mean_values=None):
    """DataTransformer::Transform(Datum), one element at a time, for every image."""
    n, c, h, w = x.shape
    ch, cw = (crop, crop) if crop else (h, w)
    top = np.zeros((n, c, ch, cw), np.float64)
    for i in range(n):
        for k in range(c):
            for r in range(ch):
                for q in range(cw):
                    v = float(x[i, k, ys[i] + r, xs[i] + q])
                    if mean_image is not None:
                        v -= float(mean_image[k, ys[i] + r, xs[i] + q])
                    elif mean_values is not None:
                        v -= float(mean_values[k] if len(mean_values) > 1 else mean_values[0])
                    top[i, k, r, cw - 1 - q if flips[i] else q] = v * scale
    return top.astype(np.float32)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_train_crop_mirror_mean_image_scale(dtype):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 3, 9, 11)).astype(dtype)
    mean = rng.random((3, 9, 11), dtype=np.float32) * 255
    kw = {"crop_size": 5, "mirror": True, "scale": 0.017, "mean": mean, "phase": "TRAIN"}
    ys, xs, flips = Transformer(seed=7, **kw).offsets(6, 9, 11)
    out = Transformer(seed=7, **kw)(x)
    assert out.dtype == np.float32 and out.shape == (6, 3, 5, 5)
    np.testing.assert_allclose(out, caffe_reference(x, ys, xs, flips, 5, 0.017, mean_image=mean),
                               rtol=1e-6, atol=1e-5)
    # the same batch channels-last gives the same result
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(Transformer(seed=7, **kw)(nhwc, layout="NHWC"), out)
    # offsets cover the whole valid range over many draws
    many_y, many_x, many_f = Transformer(seed=1, **kw).offsets(2000, 9, 11)
    assert set(many_y) == set(range(5)) and set(many_x) == set(range(7))
    assert 0.4 < many_f.mean() < 0.6


def test_test_phase_centre_crop_and_mean_values():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (4, 3, 10, 8), dtype=np.uint8)
    t = Transformer(crop_size=6, mean=[104.0, 117.0, 123.0], phase="TEST")
    ys, xs = np.full(4, 2), np.full(4, 1)
    np.testing.assert_allclose(t(x), caffe_reference(x, ys, xs, np.zeros(4, bool), 6, 1.0,
                                                     mean_values=[104.0, 117.0, 123.0]),
                               atol=1e-5)
    one = Transformer(mean=[50.0], scale=2.0)
    np.testing.assert_allclose(one(x), (x.astype(np.float32) - 50) * 2)
    swapped = Transformer(swap_channels=True)(x)
    np.testing.assert_array_equal(swapped, x[:, ::-1].astype(np.float32))


def test_nhwc_uint8_matches_the_float32_formula_exactly():
    """Crop, mirror and mean as the per-image float32 code computes them, bit for bit."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (8, 12, 10, 3), dtype=np.uint8)
    mean = (rng.random((3, 12, 10), dtype=np.float32) * 40 + 100).astype(np.float32)
    kw = {"crop_size": 7, "mirror": True, "mean": mean, "phase": "TRAIN"}
    ys, xs, flips = Transformer(seed=5, **kw).offsets(8, 12, 10)
    assert flips.any() and not flips.all()
    out = Transformer(seed=5, **kw)(x, layout="NHWC")
    for i in range(8):
        a = x[i].astype(np.float32) - mean.transpose(1, 2, 0)
        a = a[ys[i]:ys[i] + 7, xs[i]:xs[i] + 7]
        if flips[i]:
            a = a[:, ::-1]
        np.testing.assert_array_equal(out[i], a.transpose(2, 0, 1))


def test_output_batches_recycled_only_once_released(monkeypatch):
    from sparknet.data import transform

    monkeypatch.setattr(transform, "_RECYCLE_MIN_BYTES", 0)
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (4, 3, 9, 9), dtype=np.uint8)
    other = rng.integers(0, 256, (4, 3, 9, 9), dtype=np.uint8)
    kw = {"crop_size": 5, "mirror": True, "mean": rng.random((3, 9, 9), dtype=np.float32)}
    t, fresh = Transformer(seed=2, **kw), Transformer(seed=2, **kw)
    a = t(x)
    kept = a.copy()
    np.testing.assert_array_equal(a, fresh(x))
    b = t(other)  # a is held: b is another buffer, a unchanged
    b_kept = b.copy()
    assert not np.shares_memory(a, b)
    np.testing.assert_array_equal(a, kept)
    np.testing.assert_array_equal(b, fresh(other))
    view = a[1:]
    where = a.ctypes.data
    del a  # a view still holds it
    c = t(x)
    assert c.ctypes.data != where and not np.shares_memory(c, view)
    np.testing.assert_array_equal(view, kept[1:])
    np.testing.assert_array_equal(c, fresh(x))
    del view, c  # now nobody holds it: recycled, with the right values
    d = t(other)
    assert d.ctypes.data == where
    np.testing.assert_array_equal(d, fresh(other))
    np.testing.assert_array_equal(b, b_kept)  # b (still held) untouched by the reuse
    # the usual loop needs two buffers, whatever its length; a list keeps fresh ones
    t = Transformer(seed=2, **kw)
    seen = set()
    for xb, _ in transform_batches(zip(np.concatenate([x] * 5), range(20)), t, 4):
        seen.add(xb.ctypes.data)
    assert len(seen) <= 2
    got = list(transform_batches(zip(np.concatenate([x] * 5), range(20)), t, 4))
    assert len({b[0].ctypes.data for b in got}) == 5
    ref = Transformer(seed=3, **kw)
    t.rng = np.random.default_rng(3)
    again = list(transform_batches(zip(np.concatenate([x] * 5), range(20)), t, 4))
    for xb, _ in again:
        np.testing.assert_array_equal(xb, ref(x))


def test_transformer_errors():
    x = np.zeros((2, 3, 8, 8), np.uint8)
    with pytest.raises(ValueError, match="crop_size 9 is larger than the input"):
        Transformer(crop_size=9)(x)
    with pytest.raises(ValueError, match=r"mean image has shape \(3, 4, 4\).*\(3, 8, 8\)"):
        Transformer(mean=np.zeros((3, 4, 4)))(x)
    with pytest.raises(ValueError, match="2 mean values for 3 channels"):
        Transformer(mean=[1.0, 2.0])(x)
    with pytest.raises(ValueError, match="phase must be"):
        Transformer(phase="VAL")
    p = caffe_pb2.TransformationParameter(mean_file="m.binaryproto", mean_value=[1.0])
    with pytest.raises(ValueError, match="either mean_file or mean_value"):
        Transformer.from_proto(p)


def test_mean_binaryproto_roundtrip_and_distributed_mean(tmp_path, spark):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (50, 3, 6, 7), dtype=np.uint8)
    rdd = to_rdd(spark, x, np.zeros(50), num_partitions=3)
    mean = compute_mean(rdd)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(compute_mean(iter(x)), x.mean(0), rtol=1e-6)
    path = tmp_path / "mean.binaryproto"
    write_mean(path, mean)
    blob = caffe_pb2.BlobProto()
    blob.ParseFromString(path.read_bytes())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 6, 7)
    np.testing.assert_array_equal(read_mean(path), mean)
    # the newer BlobShape form reads too
    shaped = caffe_pb2.BlobProto()
    shaped.shape.dim.extend([1, 3, 6, 7])
    shaped.data.extend(mean.reshape(-1).tolist())
    (tmp_path / "shaped.binaryproto").write_bytes(shaped.SerializeToString())
    np.testing.assert_array_equal(read_mean(tmp_path / "shaped.binaryproto"), mean)
    np.testing.assert_array_equal(blobproto_to_array(mean_to_blobproto(mean))[0], mean)
    (tmp_path / "junk.binaryproto").write_bytes(b"\xff\xff\xff")
    with pytest.raises(ValueError, match="junk.binaryproto: not a BlobProto"):
        read_mean(tmp_path / "junk.binaryproto")
    with pytest.raises(FileNotFoundError, match="nothere.binaryproto"):
        read_mean(tmp_path / "nothere.binaryproto")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic writes


PROTOTXT = """
name: "net"
layer {
  name: "data" type: "Data" top: "data" top: "label"
  include { phase: TRAIN }
  transform_param { mirror: true crop_size: 4 mean_file: "mean.binaryproto" scale: 0.5 }
  data_param { source: "train_lmdb" batch_size: 8 backend: LMDB }
}
layer {
  name: "data" type: "Data" top: "data" top: "label"
  include { phase: TEST }
  transform_param { crop_size: 4 mean_value: 10 mean_value: 20 mean_value: 30 }
  data_param { source: "test_lmdb" batch_size: 8 backend: LMDB }
}
"""


def test_from_prototxt_data_layer(tmp_path):
    mean = np.arange(3 * 6 * 6, dtype=np.float32).reshape(3, 6, 6)
    write_mean(tmp_path / "mean.binaryproto", mean)
    (tmp_path / "net.prototxt").write_text(PROTOTXT)
    train = Transformer.from_prototxt(tmp_path / "net.prototxt", "TRAIN", root=tmp_path)
    assert (train.crop_size, train.mirror, train.scale, train.phase) == (4, True, 0.5, "TRAIN")
    np.testing.assert_array_equal(train.mean_image, mean)
    test = Transformer.from_prototxt(PROTOTXT, "TEST")
    assert test.mean_values.tolist() == [10, 20, 30] and not test.mirror
    assert test.output_shape((8, 3, 6, 6)) == (8, 3, 4, 4)
    with pytest.raises(FileNotFoundError, match="mean.binaryproto"):
        Transformer.from_prototxt(PROTOTXT, "TRAIN", root=tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        Transformer.from_prototxt(PROTOTXT, layer="nope")
    with pytest.raises(ValueError, match=r"<text>: .*"):
        Transformer.from_prototxt("layer { name: \n")


def test_transform_batches():
    x = np.arange(5 * 1 * 2 * 2, dtype=np.float32).reshape(5, 1, 2, 2)
    got = list(transform_batches(zip(x, range(5)), Transformer(scale=2.0), 2))
    assert [len(b[1]) for b in got] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in got]), x * 2)


def test_pickled_transformer_leaves_recycled_batches_behind(monkeypatch):
    import pickle

    from sparknet.data import transform

    monkeypatch.setattr(transform, "_RECYCLE_MIN_BYTES", 0)
    rng = np.random.default_rng(6)
    x = rng.integers(0, 256, (4, 9, 9, 3), dtype=np.uint8)
    t = Transformer(crop_size=5, mirror=True, mean=rng.random((3, 9, 9), dtype=np.float32),
                    seed=1)
    t(x, layout="NHWC")
    assert t._pool and t._flipped is not None
    copy = pickle.loads(pickle.dumps(t))
    assert copy._pool == [] and copy._flipped is None
    np.testing.assert_array_equal(copy(x, layout="NHWC"), t(x, layout="NHWC"))


@pytest.mark.parametrize("with_mean", [True, False])
def test_compiled_path_equals_the_numpy_path(with_mean):
    """uint8 NHWC batches take the compiled one-pass kernel; floats take numpy."""
    from sparknet.data import transform

    assert transform._kernels is not None
    rng = np.random.default_rng(5)
    batch = rng.integers(0, 256, (9, 40, 36, 3), dtype=np.uint8)
    mean = rng.random((3, 40, 36), dtype=np.float32) * 100 if with_mean else None
    fast = Transformer(crop_size=31, mirror=True, mean=mean, seed=3)(batch, layout="NHWC")
    slow = Transformer(crop_size=31, mirror=True, mean=mean, seed=3)(
        batch.astype(np.float32), layout="NHWC")
    np.testing.assert_array_equal(fast, slow)


class _CountingKernels:
    """The compiled kernels module, counting the calls into it."""

    def __init__(self, real):
        self.real = real
        self.calls: list[str] = []

    def __getattr__(self, name):
        fn = getattr(self.real, name)

        def counted(*args, **kwargs):
            self.calls.append((name, kwargs))
            return fn(*args, **kwargs)
        return counted


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
@pytest.mark.parametrize("mean_kind", ["file", "values", None])
def test_cached_nchw_batches_take_the_kernel_and_match_the_per_image_loop(
        tmp_path, monkeypatch, dtype, phase, mean_kind):
    """What the trainer's worker transforms (NCHW examples drawn from its cache) runs compiled,
    bit for bit as the per-image loop: crop, mirror, mean file or values, scale, both phases."""
    from sparknet.data import transform

    if transform._kernels is None:
        pytest.skip("the compiled kernels are not built")
    rng = np.random.default_rng(11)
    cache = rng.integers(0, 256, (40, 3, 13, 11)).astype(dtype)  # the worker's store
    batch = np.take(cache, rng.permutation(40)[:9], axis=0)  # as Store.batch draws it
    mean = None
    if mean_kind == "file":
        write_mean(tmp_path / "mean.binaryproto",
                   (rng.random((3, 13, 11), dtype=np.float32) * 60 + 90).astype(np.float32))
        mean = read_mean(tmp_path / "mean.binaryproto")
    elif mean_kind == "values":
        mean = [104.0, 117.0, 123.0]
    kw = {"crop_size": 7, "mirror": True, "mean": mean, "scale": 0.017, "phase": phase}
    counting = _CountingKernels(transform._kernels)
    monkeypatch.setattr(transform, "_kernels", counting)
    fast = Transformer(seed=4, **kw)(batch)
    assert counting.calls == [("crop_mirror_mean", {"planar": True})]
    monkeypatch.setattr(transform, "_kernels", None)
    loop = Transformer(seed=4, **kw)(batch)
    assert fast.dtype == loop.dtype == np.float32 and fast.shape == (9, 3, 7, 7)
    np.testing.assert_array_equal(fast, loop)
    ys, xs, flips = Transformer(seed=4, **kw).offsets(9, 13, 11)
    assert flips.any() and not flips.all()
    m = mean if mean_kind == "file" else None
    values = mean if mean_kind == "values" else None
    np.testing.assert_allclose(fast, caffe_reference(batch, ys, xs, flips, 7, 0.017, m, values),
                               rtol=1e-6, atol=1e-5)
