"""The Caffe engine: training, testing, weights, snapshots and Caffe-format files."""
from __future__ import annotations

import itertools
import subprocess

import numpy as np
import pytest
from enginehelp import ROOT, caffe_tool, digit_batches, held_out_batches, lenet_net, lenet_solver
from google.protobuf import text_format

from sparknet.engine import (
    CaffeError,
    CaffeNet,
    WeightCollection,
    blas_threads,
    cuda_build,
    set_blas_threads,
)
from sparknet.proto import caffe_pb2

STEPS = 300


@pytest.fixture(scope="module")
def trained():
    """LeNet trained 300 steps on the bundled digits (shared by several tests).

    300 steps score 0.978 on the held-out digits (last 50 losses 0.01): margin
    enough over the 0.95 and 0.1 asserted below; 600 added nothing but time.
    """
    set_blas_threads(1)
    net = CaffeNet(lenet_solver())
    losses = net.train(STEPS, digit_batches())
    return net, losses


def test_lenet_learns_the_digits(trained):
    net, losses = trained
    assert net.iteration == STEPS
    assert losses.shape == (STEPS,)
    assert losses[:20].mean() > 1.0 > 0.1 > losses[-50:].mean()
    scores = net.test(held_out_batches())
    assert set(scores) == {"accuracy", "loss"}
    assert scores["accuracy"] >= 0.95, scores


def test_structure_is_exposed():
    net = CaffeNet(lenet_solver(batch=32))
    assert net.input_names == ["data", "label"]
    assert net.input_shapes == {"data": (32, 1, 28, 28), "label": (32, 1)}
    assert net.output_names == ["loss"]
    assert net.test_output_names == ["accuracy", "loss"]
    assert net.blob_shapes("TRAIN")["ip1"] == (32, 500)
    assert net.iteration == 0
    assert net.mode == "cpu" and net.device is None
    assert not cuda_build()


def test_forward_returns_requested_blobs_any_batch_size(trained):
    net, _ = trained
    x = held_out_batches()[0]["data"]
    out = net.forward({"data": x[:10]}, ["ip2", "ip1"])
    assert out["ip2"].shape == (10, 10) and out["ip1"].shape == (10, 500)
    # Same images in a full batch give the same activations.
    full = net.forward({"data": x}, ["ip2"])["ip2"]
    np.testing.assert_allclose(full[:10], out["ip2"], rtol=1e-5, atol=1e-6)


def test_test_weights_a_short_last_batch_by_its_size(trained):
    net, _ = trained
    batches = held_out_batches()
    assert len(batches[-1]["label"]) < 64  # 360 = 5 * 64 + 40
    whole = net.test(batches)
    per = [net.test([b]) for b in batches]
    sizes = [len(b["label"]) for b in batches]
    expected = sum(p["accuracy"] * n for p, n in zip(per, sizes)) / sum(sizes)
    assert whole["accuracy"] == pytest.approx(expected, abs=1e-6)


def test_solver_dsl_objects_are_accepted():
    class Solver:  # what the DSL's SolverParam offers
        def to_proto(self):
            return lenet_solver(batch=8)

    assert CaffeNet(Solver()).input_shapes["data"] == (8, 1, 28, 28)
    with pytest.raises(TypeError, match="SolverParameter"):
        CaffeNet("lenet")


def test_batch_that_does_not_fit_names_blob_and_shapes():
    net = CaffeNet(lenet_solver(batch=8))
    good = {"data": np.zeros((8, 1, 28, 28), np.float32), "label": np.zeros(8, np.int64)}
    net.train(1, [good])  # an integer (8,) label feeds the (8, 1) blob
    bad = dict(good, data=np.zeros((8, 1, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"'data' has shape \(8, 1, 28, 28\).*\(8, 1, 32, 32\)"):
        net.train(1, [bad])
    with pytest.raises(ValueError, match="'data'.*dtype <U1"):
        net.train(1, [dict(good, data=np.full((8, 1, 28, 28), "x"))])
    with pytest.raises(ValueError, match="no input blob named 'images'"):
        net.train(1, [{"images": good["data"], "label": good["label"]}])
    with pytest.raises(ValueError, match="no array for input blob 'label'"):
        net.train(1, [{"data": good["data"]}])
    with pytest.raises(ValueError, match="ran out after 1 of 2 steps"):
        net.train(2, [good])
    assert net.iteration == 2  # the rejected batches ran nothing; the last good one did


def test_weights_save_and_load_bit_identical(trained, tmp_path):
    net, _ = trained
    path = tmp_path / "lenet.caffemodel"
    net.save_weights(path)
    fresh = CaffeNet(lenet_solver(seed=7))
    assert not fresh.get_weights().allclose(net.get_weights())
    fresh.load_weights(path)
    assert fresh.get_weights() == net.get_weights()
    # The file is a real Caffe NetParameter with the blobs in it.
    param = caffe_pb2.NetParameter()
    param.ParseFromString(path.read_bytes())
    ip1 = next(layer for layer in param.layer if layer.name == "ip1")
    np.testing.assert_array_equal(np.array(ip1.blobs[0].data, np.float32).reshape(500, 800),
                                  net.get_weights()["ip1"][0])
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically


def test_set_weights_round_trip_and_mismatch():
    a, b = CaffeNet(lenet_solver(seed=1)), CaffeNet(lenet_solver(seed=2))
    b.set_weights(a.get_weights())
    assert b.get_weights() == a.get_weights()
    other = CaffeNet(_solver_with(lenet_net(), ip1_outputs=300))
    with pytest.raises(ValueError, match=r"layer 'ip1' blob 0 has shape \(500, 800\).*\(300, 800\)"):
        a.set_weights(other.get_weights())


def test_use_weights_takes_every_form_sparknet_accepts(tmp_path):
    source = CaffeNet(lenet_solver(seed=1))
    path = tmp_path / "lenet.caffemodel"
    source.save_weights(path)
    data = path.read_bytes()
    expected = source.get_weights()

    class Result:  # a TrainResult holds its weights as .weights
        weights = expected

    for form in (expected, dict(expected), Result(), expected.flat, data, path, str(path)):
        net = CaffeNet(lenet_solver(seed=2))
        assert net.use_weights(form)
        assert net.get_weights() == expected, type(form).__name__
    fetched = []
    net = CaffeNet(lenet_solver(seed=2))
    assert net.use_weights("s3://models/lenet.caffemodel",
                           fetch=lambda uri: fetched.append(uri) or data)
    assert fetched == ["s3://models/lenet.caffemodel"] and net.get_weights() == expected
    before = CaffeNet(lenet_solver(seed=3))
    assert not before.use_weights(None)  # the fillers stay
    assert before.get_weights() == CaffeNet(lenet_solver(seed=3)).get_weights()
    with pytest.raises(FileNotFoundError, match="nowhere.caffemodel: no such .caffemodel"):
        net.use_weights(tmp_path / "nowhere.caffemodel")
    with pytest.raises(ValueError, match="s3://b/k.caffemodel: a URI, and no way to read it"):
        net.use_weights("s3://b/k.caffemodel")
    with pytest.raises(TypeError, match="weights must be .* got int"):
        net.use_weights(3)
    with pytest.raises(CaffeError, match="the .caffemodel given as bytes"):
        net.load_weights(b"not a caffemodel")
    assert net.get_weights() == expected  # nothing changed


def test_test_input_names_are_the_test_nets_inputs_in_blob_order():
    solver = caffe_pb2.SolverParameter(base_lr=0.1, lr_policy="fixed")
    text_format.Parse("""
        layer { name: "y" type: "Input" top: "y" include { phase: TEST }
                input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "sum" type: "Eltwise" bottom: "x" bottom: "y" top: "sum"
                include { phase: TEST } }""", solver.net_param)
    net = CaffeNet(solver)
    assert net.input_names == ["x"]
    assert net.test_input_names == ["y", "x"]
    assert set(net.test_input_shapes) == set(net.test_input_names)
    assert CaffeNet(lenet_solver()).test_input_names == ["data", "label"]


def _solver_with(net: caffe_pb2.NetParameter, ip1_outputs: int) -> caffe_pb2.SolverParameter:
    for layer in net.layer:
        if layer.name == "ip1":
            layer.inner_product_param.num_output = ip1_outputs
    return caffe_pb2.SolverParameter(base_lr=0.01, lr_policy="fixed", net_param=net,
                                     random_seed=1)


def test_snapshot_then_restore_continues_exactly(tmp_path):
    def batches():
        return digit_batches(seed=3)

    straight = CaffeNet(lenet_solver())
    straight.train(40, batches())

    first = CaffeNet(lenet_solver())
    feed = batches()
    first.train(20, feed)
    model, state = first.snapshot(tmp_path / "ckpt" / "lenet")
    assert model.name == "lenet_iter_20.caffemodel" and model.exists()
    assert state.name == "lenet_iter_20.solverstate" and state.exists()

    resumed = CaffeNet(lenet_solver(seed=99))  # different init: restore must overwrite it
    resumed.restore(state)
    assert resumed.iteration == 20
    resumed.train(20, feed)
    assert resumed.get_weights() == straight.get_weights()


def test_restore_finds_a_moved_snapshot(tmp_path):
    net = CaffeNet(lenet_solver())
    net.train(3, digit_batches())
    model, state = net.snapshot(tmp_path / "a" / "lenet")
    moved = tmp_path / "b"
    moved.mkdir()
    model.rename(moved / model.name)
    state.rename(moved / state.name)
    other = CaffeNet(lenet_solver(seed=5))
    other.restore(moved / state.name)
    assert other.get_weights() == net.get_weights() and other.iteration == 3


def _save_trainresult(net, path):
    from sparknet.spark import TrainResult

    return TrainResult(net.get_weights(), [], net.solver_param).save(path)


def _save_caffemodel_stage(net, path):
    from sparknet.ml import CaffeModel

    CaffeModel(solver=net.solver_param, weights=net.get_weights()).save_caffemodel(str(path))


#: Every way sparknet writes a .caffemodel: name -> (write(net, path), the file it writes)
CAFFEMODEL_WRITERS = {
    "CaffeNet.save_weights": (lambda net, path: net.save_weights(path), "w.caffemodel"),
    "CaffeNet.snapshot": (lambda net, path: net.snapshot(path.parent / "w"),
                          "w_iter_2.caffemodel"),
    "TrainResult.save": (_save_trainresult, "w.caffemodel"),
    "CaffeModel.save_caffemodel": (_save_caffemodel_stage, "w.caffemodel"),
}


@pytest.mark.parametrize("writer", CAFFEMODEL_WRITERS)
def test_every_caffemodel_writer_is_atomic_and_names_the_file_on_a_full_disk(
        writer, tmp_path, file_size_limit):
    write, name = CAFFEMODEL_WRITERS[writer]
    net = CaffeNet(lenet_solver(batch=4))
    net.train(2, digit_batches(4))
    target = tmp_path / "out" / name
    target.parent.mkdir()
    target.write_bytes(b"old weights")
    with file_size_limit(64 << 10), pytest.raises(OSError) as caught:  # LeNet: 1.7 MB
        write(net, target)
    assert caught.value.filename == str(target), caught.value
    assert "File too large" in str(caught.value)
    assert target.read_bytes() == b"old weights"             # the old file is whole
    assert [p.name for p in target.parent.iterdir()] == [name]  # and no temporary stays

    write(net, target)                                     # with room: Caffe's format
    again = CaffeNet(lenet_solver(batch=4, seed=7))
    again.load_weights(target)
    assert again.get_weights() == net.get_weights()


def test_caffe_tool_model_loads_and_ours_loads_in_caffe(tmp_path, trained):
    tool = caffe_tool()
    solver = caffe_pb2.SolverParameter(
        net=str(ROOT / "tests" / "engine_nets" / "lenet_dummy.prototxt"), base_lr=0.01,
        lr_policy="fixed", max_iter=3, snapshot_prefix=str(tmp_path / "tool"), random_seed=4)
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text(text_format.MessageToString(solver))
    done = subprocess.run([str(tool), "train", f"--solver={solver_file}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    written = tmp_path / "tool_iter_3.caffemodel"
    assert written.exists()

    net = CaffeNet(lenet_solver())
    net.load_weights(written)
    param = caffe_pb2.NetParameter()
    param.ParseFromString(written.read_bytes())
    weights = net.get_weights()
    for layer in param.layer:
        for i, blob in enumerate(layer.blobs):
            np.testing.assert_array_equal(np.array(blob.data, np.float32),
                                          weights[layer.name][i].ravel())

    # The other direction: Caffe's tool scores a .caffemodel sparknet wrote.
    ours = tmp_path / "ours.caffemodel"
    trained[0].save_weights(ours)
    done = subprocess.run([str(tool), "test", f"--model={solver.net}", f"--weights={ours}",
                           "--iterations=1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Loaded" in done.stderr or "loss" in done.stderr


def test_blas_threads_are_settable():
    set_blas_threads(2)
    assert blas_threads() == 2
    set_blas_threads(1)
    assert blas_threads() == 1
    with pytest.raises(ValueError):
        set_blas_threads(0)


def test_gpu_on_a_cpu_build_is_a_clear_error():
    with pytest.raises(ValueError, match="built without CUDA"):
        CaffeNet(lenet_solver(), gpu=0)


def test_nets_without_inputs_train_without_batches():
    net = caffe_pb2.NetParameter()
    text_format.Parse((ROOT / "tests" / "engine_nets" / "lenet_dummy.prototxt").read_text(), net)
    with pytest.raises(ValueError, match="lr_policy is ''"):
        CaffeNet(caffe_pb2.SolverParameter(base_lr=0.01, net_param=net))
    engine = CaffeNet(caffe_pb2.SolverParameter(base_lr=0.01, lr_policy="fixed", net_param=net,
                                                random_seed=1))
    assert engine.input_names == []
    losses = engine.train(2)
    assert np.isfinite(losses).all() and engine.iteration == 2
    with pytest.raises(ValueError, match="give batches"):
        CaffeNet(lenet_solver()).train(1)


# -- WeightCollection ----------------------------------------------------------------


def _wc(seed: float) -> WeightCollection:
    return WeightCollection({"conv": [np.full((2, 3), seed), np.full(2, -seed)],
                             "ip": [np.arange(4.0).reshape(2, 2) * seed]})


def test_weight_collection_arithmetic():
    a, b = _wc(1.0), _wc(3.0)
    assert (a + b)["conv"][0][0, 0] == 4.0
    assert ((a + b) / 2).allclose(_wc(2.0))
    assert WeightCollection.mean([a, b, _wc(5.0)]).allclose(_wc(3.0))
    assert sum([a, b]).allclose(a + b)
    assert (a * 3.0) == b and (3.0 * a) == b
    c = a.copy()
    c += b
    c /= 4
    assert c.allclose(_wc(1.0)) and a == _wc(1.0)  # in-place ops leave a alone
    assert list(a) == ["conv", "ip"] and len(a) == 2 and a.num_params == 12
    assert a.flat.dtype == np.float32 and a.nbytes == 48
    with pytest.raises(ZeroDivisionError):
        a / 0
    with pytest.raises(KeyError, match="no layer named 'fc'"):
        a["fc"]


def test_weight_collection_mismatch_names_layer_and_shape():
    a = _wc(1.0)
    with pytest.raises(ValueError, match=r"layer 'ip' blob 0 has shape \(2, 2\) here and \(4,\)"):
        a + WeightCollection({"conv": [np.zeros((2, 3)), np.zeros(2)], "ip": [np.zeros(4)]})
    with pytest.raises(ValueError, match="layer 'ip' is missing"):
        a.allclose(WeightCollection({"conv": [np.zeros((2, 3)), np.zeros(2)]}))
    with pytest.raises(ValueError, match="layer 'conv' has 2 blobs here and 1"):
        WeightCollection.mean([a, WeightCollection({"conv": [np.zeros((2, 3))],
                                                     "ip": [np.zeros((2, 2))]})])


def test_weight_collection_pickles_as_one_buffer():
    import pickle

    big = WeightCollection({"ip": [np.random.default_rng(0).random((1000, 1000))]})
    data = pickle.dumps(big, protocol=5)
    assert big.nbytes <= len(data) < big.nbytes + 1000
    back = pickle.loads(data)
    assert back == big and back.flat.flags.writeable
    # Out-of-band: the payload is the flat buffer itself, not a copy.
    buffers = []
    pickle.dumps(big, protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == 1 and buffers[0].raw().nbytes == big.nbytes
    assert np.shares_memory(np.frombuffer(buffers[0].raw(), np.float32), big.flat)


@pytest.mark.parametrize("steps", [1, 4])
def test_iteration_counts_steps(steps):
    net = CaffeNet(lenet_solver(batch=4))
    net.train(steps, itertools.islice(digit_batches(4), steps))
    assert net.iteration == steps


def test_a_data_reader_shared_by_both_phases_is_refused_not_hung():
    def net_with(*phases):
        net = caffe_pb2.NetParameter(name="shared")
        for phase in phases:
            layer = net.layer.add(name="data", type="Data", top=["data", "label"])
            layer.data_param.source = "/nonexistent/lmdb"
            layer.data_param.batch_size = 4
            if phase is not None:
                layer.include.add(phase=phase)
        return caffe_pb2.SolverParameter(base_lr=0.1, lr_policy="fixed", net_param=net)

    for solver in (net_with(None), net_with(caffe_pb2.TRAIN, caffe_pb2.TEST)):
        with pytest.raises(ValueError, match="Data layer 'data' reads '/nonexistent/lmdb' in both"):
            CaffeNet(solver)


# -- weights through caller buffers -------------------------------------------------------


def test_set_weights_reads_read_only_buffers_in_place(tmp_path):
    a, b = CaffeNet(lenet_solver(seed=1, batch=4)), CaffeNet(lenet_solver(seed=2, batch=4))
    flat = a.get_weights().flat.copy()
    flat.flags.writeable = False
    b.set_weights(flat)  # a flat array, read-only
    assert b.get_weights() == a.get_weights()
    path = tmp_path / "weights.f32"
    (a.get_weights().flat * 2).tofile(path)
    mapped = np.memmap(path, np.float32, mode="r", shape=(a.num_params,))
    b.set_weights(mapped)
    np.testing.assert_array_equal(b.get_weights().flat, mapped)
    b.set_weights(WeightCollection.from_flat(b.weight_layout, flat))  # a read-only collection
    assert b.get_weights() == a.get_weights()
    b._engine.write_params(mapped)  # the binding itself takes const buffers
    np.testing.assert_array_equal(b.get_weights().flat, mapped)
    b.set_weights(flat.astype(np.float64))  # other real dtypes are converted
    assert b.get_weights() == a.get_weights()


def test_set_weights_flat_array_of_the_wrong_size_names_both_sizes():
    net = CaffeNet(lenet_solver(batch=4))
    n = net.num_params
    assert n == net.get_weights().num_params == 431080
    before = net.get_weights()
    with pytest.raises(ValueError, match=rf"1-d with {n} values .*got shape \({n - 1},\)"):
        net.set_weights(np.zeros(n - 1, np.float32))
    with pytest.raises(ValueError, match=rf"got shape \(2, {n // 2}\)"):
        net.set_weights(np.zeros((2, n // 2), np.float32))
    with pytest.raises(ValueError, match="real numbers, got dtype complex64"):
        net.set_weights(np.zeros(n, np.complex64))
    with pytest.raises(ValueError, match=f"flat buffer has {n + 1} values, the net {n}"):
        net._engine.write_params(np.zeros(n + 1, np.float32))
    assert net.get_weights() == before  # nothing was copied


def test_get_weights_into_a_caller_buffer():
    net = CaffeNet(lenet_solver(batch=4))
    net.train(2, digit_batches(4))
    out = np.full(net.num_params, np.nan, np.float32)
    weights = net.get_weights(out=out)
    assert weights.flat is out
    assert weights == net.get_weights() and weights.layout == net.weight_layout
    assert weights["ip1"][0].shape == (500, 800) and np.shares_memory(weights["ip1"][0], out)
    # A WeightCollection of the net's layout is filled and returned itself.
    collection = WeightCollection.from_flat(net.weight_layout, np.zeros(net.num_params,
                                                                        np.float32))
    assert net.get_weights(out=collection) is collection and collection == weights
    frozen = np.zeros(net.num_params, np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="got a read-only array"):
        net.get_weights(out=frozen)
    small = CaffeNet(_solver_with(lenet_net(batch=4), ip1_outputs=300))
    with pytest.raises(ValueError, match=r"layer 'ip1' blob 0 has shape \(500, 800\)"):
        net.get_weights(out=small.get_weights())


@pytest.mark.parametrize("out, got", [
    (np.zeros(431080, np.float64), "dtype float64"),
    (np.zeros(431081, np.float32), r"shape \(431081,\)"),
    (np.zeros((1, 431080), np.float32), r"shape \(1, 431080\)"),
    (np.zeros(2 * 431080, np.float32)[::2], "a non-contiguous array"),
    ([0.0] * 3, "list"),
])
def test_get_weights_out_that_does_not_fit_names_expected_and_got(out, got):
    net = CaffeNet(lenet_solver(batch=4))
    error = TypeError if isinstance(out, list) else ValueError
    with pytest.raises(error, match=rf"out must be a writable C-contiguous 1-d float32 "
                                         rf"array of 431080 values, got {got}"):
        net.get_weights(out=out)


def test_seed_makes_dropout_steps_the_same_in_any_net():
    from enginehelp import dropout_solver

    batches = list(itertools.islice(digit_batches(16), 8))
    solver = dropout_solver(momentum=0.0)  # no solver history: only the random numbers differ
    a = CaffeNet(solver)
    w0 = a.get_weights().flat.copy()
    a.seed(7)
    a.train(5, batches[:5])
    seeded = CaffeNet(solver)
    seeded.train(3, batches[5:8])  # its generator has moved on
    seeded.set_weights(w0)
    seeded.seed(7)
    seeded.train(5, batches[:5])
    assert seeded.get_weights() == a.get_weights()
    unseeded = CaffeNet(solver)
    unseeded.train(3, batches[5:8])
    unseeded.set_weights(w0)
    unseeded.train(5, batches[:5])
    assert unseeded.get_weights() != a.get_weights()  # dropout masks did matter
    with pytest.raises(ValueError, match="seed must be in"):
        a.seed(2**32)


def test_raw_solver_state_continues_exactly_and_refuses_another_solver(tmp_path):
    batches = list(itertools.islice(digit_batches(16), 10))
    a = CaffeNet(lenet_solver(16))
    a.train(5, batches[:5])
    path = a.save_state(tmp_path / "deep" / "a.state")  # atomic, folders made
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.state"]
    b = CaffeNet(lenet_solver(16))
    b.set_weights(a.get_weights())
    b.load_state(path)  # iteration and momentum history, not the weights
    assert b.iteration == 5
    a.train(5, batches[5:])
    b.train(5, batches[5:])
    assert a.get_weights() == b.get_weights()
    fresh = CaffeNet(lenet_solver(16))
    fresh.set_weights(b.get_weights())
    fresh.train(1, batches[:1])
    b.train(1, batches[:1])
    assert fresh.get_weights() != b.get_weights()  # the history did matter
    other = CaffeNet(lenet_solver(16, type="Adam", momentum2=0.999))  # two history sets
    with pytest.raises(ValueError, match=r"a\.state: 8 history blobs, this solver has 16"):
        other.load_state(path)
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ValueError, match="truncated"):
        b.load_state(path)
    assert b.iteration == 11
