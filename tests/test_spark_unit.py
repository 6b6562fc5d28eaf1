"""sparknet.spark pieces that need no Spark: sampling, example conversion, checkpoints, logs."""
from __future__ import annotations

import json
import pickle
import zlib

import numpy as np
import pytest

from sparknet.io import LocalStorage, S3Storage, open_storage
from sparknet.spark import _comm, _socket_exchange
from sparknet.spark._records import DataError, ExampleSpec, record_values
from sparknet.spark._runlog import RunLog, plot_history
from sparknet.spark._store import batch_indices
from sparknet.spark.checkpoint import Checkpoints

# -- minibatch sampling -------------------------------------------------------------------

def test_batches_are_a_pure_function_of_seed_partition_and_step():
    a = [batch_indices(100, 16, s, seed=3, partition=1) for s in range(20)]
    b = [batch_indices(100, 16, s, seed=3, partition=1) for s in range(20)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    other = batch_indices(100, 16, 0, seed=3, partition=2)
    assert not np.array_equal(a[0], other)


def test_each_epoch_visits_every_example_once():
    n, bs = 30, 10  # three steps per epoch
    for epoch in range(3):
        idx = np.concatenate([batch_indices(n, bs, epoch * 3 + s, seed=0, partition=0)
                              for s in range(3)])
        assert sorted(idx.tolist()) == list(range(n))


def test_partitions_smaller_than_a_batch_wrap_around():
    idx = batch_indices(5, 16, 7, seed=1, partition=0)
    assert idx.shape == (16,)
    assert idx.min() >= 0 and idx.max() < 5
    assert np.array_equal(batch_indices(5, 4, 2, seed=0, partition=0, shuffle=False),
                          [3, 4, 0, 1])


# -- examples ----------------------------------------------------------------------------------

SHAPES = {"data": (1, 28, 28), "label": (1,)}


def test_examples_as_tuples_dicts_rows_vectors_and_bytes():
    from pyspark.ml.linalg import DenseVector
    from pyspark.sql import Row

    spec = ExampleSpec(("data", "label"), SHAPES)
    img = np.arange(784, dtype=np.float32).reshape(1, 28, 28)
    for rec in [(img, 3.0), {"data": img, "label": 3}, Row(data=img.ravel().tolist(), label=3.0),
                (DenseVector(img.ravel()), 3), (img.astype(np.uint8).tobytes(), 3)]:
        out = spec.convert(rec, "example")
        assert out["data"].shape == (1, 28, 28) and out["label"].shape == (1,)
        assert float(out["label"][0]) == 3.0


def test_example_misfits_name_the_blob():
    spec = ExampleSpec(("data", "label"), SHAPES)
    with pytest.raises(DataError, match=r"input blob 'data' takes \(1, 28, 28\)"):
        spec.convert((np.zeros((3, 28, 28)), 1), "example 4")
    with pytest.raises(DataError, match="no value for input blob 'label'"):
        record_values({"data": 1}, ("data", "label"))
    with pytest.raises(DataError, match="3 items for 2 input blobs"):
        record_values((1, 2, 3), ("data", "label"))


def test_preprocess_runs_before_the_shape_check():
    spec = ExampleSpec(("data", "label"), SHAPES,
                       preprocess=lambda ex: {"data": ex["data"][:, 2:30, 2:30] - 0.5,
                                              "label": ex["label"]})
    out = spec.convert((np.ones((1, 32, 32), np.float32), 1.0), "example")
    assert out["data"].shape == (1, 28, 28) and np.allclose(out["data"], 0.5)


def test_the_signature_finds_inputs_outputs_and_the_class_count():
    from sparknet.engine import CaffeNet
    from sparknet.models import lenet

    sig = CaffeNet(lenet.solver(16).to_proto()).signature()
    assert sig.inputs == sig.test_inputs == ("data", "label")
    assert sig.shapes == {"data": (1, 28, 28), "label": (1,)} and sig.batch == 16
    assert sig.test_outputs == ("accuracy", "loss")
    assert [(r.blob, r.layer, r.classes) for r in sig.train_rules] == [("label", "loss", 10)]
    assert {r.layer for r in sig.test_rules} == {"accuracy", "loss"}
    assert (sig.label, sig.scores) == ("label", "ip2")
    assert sig.num_params == 431080 and sig.fed("TRAIN") == ("data", "label")


# -- the raw broadcast file ------------------------------------------------------------------

def test_raw_broadcast_file_is_a_small_pickle_then_the_floats(tmp_path):
    flat = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    path = tmp_path / "bc"

    class Fake(_comm._RawBroadcast):
        def __init__(self):  # no SparkContext: only the file format
            pass
    with open(path, "wb") as f:
        Fake().dump(flat, f)
    with open(path, "rb") as f:
        header = pickle.load(f)
    assert isinstance(header, _comm.FlatHeader) and header.size == 1000
    assert path.stat().st_size == _comm.HEADER_BYTES + flat.nbytes

    class Loaded:
        value = header
        _path = str(path)
    mapped = _comm.flat_from_broadcast(Loaded())
    assert np.array_equal(mapped, flat) and not mapped.flags.writeable  # read in place


def test_fold_adds_chunks_in_place_and_passes_the_rest():
    acc = np.zeros(300_000, np.float32)
    a = np.ones(300_000, np.float32)
    other = []
    n = _comm.fold([("m", 1), *_comm.chunks(a), *_comm.chunks(2 * a)], acc, other.append)
    assert n == 600_000 and np.all(acc == 3) and other == [("m", 1)]
    total = np.zeros_like(acc)
    _comm.fold(_comm._partial_sum(acc.size, [*_comm.chunks(a), ("m", 2), *_comm.chunks(a)]),
               total, other.append)
    assert np.all(total == 2) and other[-1] == ("m", 2)


# -- the driver's weight exchange -------------------------------------------------------------

@pytest.fixture
def exchange():
    with _comm.SocketExchange("127.0.0.1") as ex:
        yield ex


def _push_part(chan, partition, flat, nbytes, keep_open=False):
    """A task that dies (or stalls, ``keep_open``) after sending ``nbytes`` of its result."""
    import socket

    sock = socket.create_connection((chan.host, chan.port))
    sock.sendall(_comm._REQ.pack(_comm._MAGIC_X, chan.token, _comm.OP_PUSH, chan.key,
                                 partition, chan.size))
    status, offset = _comm._REP.unpack(_comm._recv_exact(sock, _comm._REP.size))
    assert status == _comm.ST_OK and offset == 0
    sock.sendall(_comm._FP.pack(0))
    sock.sendall(memoryview(flat[offset:]).cast("B")[:nbytes])
    if keep_open:
        return sock
    sock.close()
    return None


def _wait_progress(exchange, partition, floats):
    import time

    deadline = time.monotonic() + 10
    while exchange._progress.get(partition) != floats and time.monotonic() < deadline:
        time.sleep(0.01)
    assert exchange._progress.get(partition) == floats


def test_exchange_serves_the_published_weights_and_adds_each_result_once(exchange, monkeypatch):
    import threading

    monkeypatch.setattr(_socket_exchange, "PUSH_CHUNK", 1000)
    rng = np.random.default_rng(0)
    w = rng.standard_normal(10_000).astype(np.float32)
    chan = pickle.loads(pickle.dumps(exchange.publish(w)))  # as a task gets it
    got = chan.weights()
    assert np.array_equal(got, w) and chan.weights() is got  # fetched once per process
    acc = np.zeros_like(w)
    rchan = pickle.loads(pickle.dumps(exchange.accept(chan, acc)))
    a, b = rng.standard_normal((2, w.size)).astype(np.float32)
    # partition 0's first attempt dies a third of the way (mid-chunk); the retry resumes
    _push_part(rchan, 0, a, a.nbytes // 3 + 2)
    _wait_progress(exchange, 0, 3000)
    assert exchange.missing([0, 1]) == [0, 1]
    threads = [threading.Thread(target=lambda x, p: list(rchan.send(p, x)), args=(x, p))
               for p, x in ((0, a), (1, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert exchange.missing([0, 1]) == [] and exchange.spliced() == []
    assert np.array_equal(acc, a + b)
    assert list(rchan.send(1, b)) == [] and np.array_equal(acc, a + b)  # a duplicate task
    exchange.end()
    with pytest.raises(RuntimeError, match="no longer takes results"):
        rchan.send(0, a)
    # the next version replaces the previous one
    chan2 = exchange.publish(2 * w)
    assert np.array_equal(chan2.weights(), 2 * w)
    with pytest.raises(RuntimeError, match="no longer served"):
        _comm._FETCHED.clear()
        chan.weights()


def test_exchange_takes_over_a_stalled_push_and_tells_a_different_result(exchange, monkeypatch):
    import time

    monkeypatch.setattr(_socket_exchange, "PUSH_CHUNK", 1000)
    rng = np.random.default_rng(1)
    a, c = rng.standard_normal((2, 10_000)).astype(np.float32)
    acc = np.full(a.size, 7, np.float32)  # accept() zeroes it
    rchan = exchange.accept(exchange.publish(a), acc)
    # attempt 1 sends half of result a, then hangs with the connection open; attempt 2
    # has the same result: it takes over at once and the sum is exact
    stalled = _push_part(rchan, 0, a, a.nbytes // 2, keep_open=True)
    _wait_progress(exchange, 0, 5000)
    t = time.monotonic()
    rchan.send(0, a)
    assert time.monotonic() - t < 5  # not the exchange's timeout
    assert np.array_equal(acc, a) and exchange.spliced() == []
    stalled.close()
    # partition 1: attempt 2 computed another result (its executor lost the solver state)
    _push_part(rchan, 1, a, a.nbytes // 2)
    _wait_progress(exchange, 1, 5000)
    rchan.send(1, c)
    assert exchange.missing([0, 1]) == [] and exchange.spliced() == [1]
    # the next accumulation starts clean
    rchan = exchange.accept(rchan, acc)
    assert not acc.any() and exchange.spliced() == [] and exchange.missing([0]) == [0]


def test_exchange_takes_its_address_port_and_timeout_from_the_spark_conf():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = {"spark.driver.host": "127.0.0.1", "spark.sparknet.exchange.port": str(port),
            "spark.network.timeout": "45s"}

    class Context:
        def getConf(self):
            return type("Conf", (), {"get": lambda self, k, d=None: conf.get(k, d)})()

    with _comm.SocketExchange.for_context(Context()) as ex:
        assert ex.where() == f"127.0.0.1:{port}" and ex.timeout == 45.0
        ex.publish(np.ones(3, np.float32)).ping()


def test_spark_durations_for_the_exchange_timeout():
    assert [_comm._seconds(t, 9.0) for t in ("120s", "2min", "500ms", "90", "1h", None, "x")] \
        == [120.0, 120.0, 0.5, 90.0, 3600.0, 9.0, 9.0]


def test_exchange_refuses_strangers_and_names_an_unreachable_driver(exchange):
    chan = exchange.publish(np.zeros(10, np.float32))
    wrong = _comm.SocketChannel(chan.host, chan.port, b"x" * 16, chan.version, chan.size)
    with pytest.raises(ConnectionError, match="refused the request"):
        wrong.weights()
    exchange.close()
    with pytest.raises(ConnectionError, match=rf"{chan.host}:{chan.port}.*exchange='spark'"):
        chan.ping()


# -- checkpoints -------------------------------------------------------------------------------

def _commit(ck: Checkpoints, rnd: int) -> str:
    staged = ck.begin()
    (staged / "weights.caffemodel").write_bytes(b"w%d" % rnd)
    (staged / "workers").mkdir()
    (staged / "workers" / "part-00000.solverstate").write_bytes(b"s%d" % rnd)
    return ck.commit(rnd, staged, {"round": rnd})


def test_local_checkpoints_are_atomic_and_pruned(tmp_path):
    ck = Checkpoints(LocalStorage(tmp_path), keep=2)
    assert ck.latest() is None
    for r in (1, 2, 3):
        where = _commit(ck, r)
    assert where == str(tmp_path / "round-000003")
    assert ck.latest() == "round-000003"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "round-000002",
                                                         "round-000003"]
    # the state records each file's size and checksum, for resume to check them against
    assert ck.load_state("round-000003") == {"round": 3, "files": {
        "weights.caffemodel": {"bytes": 2, "crc32": zlib.crc32(b"w3")},
        "workers/part-00000.solverstate": {"bytes": 2, "crc32": zlib.crc32(b"s3")}}}
    # a checkpoint whose state.json never arrived does not count
    (tmp_path / "round-000004").mkdir()
    (tmp_path / "latest").write_text("round-000004\n")
    assert ck.latest() == "round-000003"


def test_s3_checkpoints(s3):
    bucket = s3.bucket()
    storage = open_storage(f"s3://{bucket}/runs/a", s3.options())
    assert isinstance(storage, S3Storage)
    ck = Checkpoints(storage, keep=1)
    for r in (1, 2):
        where = _commit(ck, r)
    assert where == f"s3://{bucket}/runs/a/round-000002"
    keys = s3.keys(bucket)
    assert sorted(keys) == ["runs/a/latest", "runs/a/round-000002/state.json",
                            "runs/a/round-000002/weights.caffemodel",
                            "runs/a/round-000002/workers/part-00000.solverstate"]
    assert ck.latest() == "round-000002"
    assert storage.read_bytes("round-000002/weights.caffemodel") == b"w2"
    assert json.loads(storage.read_bytes("round-000002/state.json"))["round"] == 2
    assert ck.read_file("round-000002", ck.load_state("round-000002"),
                        "workers/part-00000.solverstate") == b"s2"


# -- the run log ---------------------------------------------------------------------------------

def test_run_log_writes_lines_history_and_plot(tmp_path, caplog):
    history = [{"round": r, "time": r * 1.5, "loss": 1.0 / r, "images": 64,
                "images_per_second": 100.0, "seconds": {"round": 1.0},
                **({"test": {"accuracy": 0.5 + r / 10, "loss": 0.4}} if r % 2 == 0 else {})}
               for r in range(1, 5)]
    with caplog.at_level("INFO", logger="sparknet.spark"):
        run = RunLog(tmp_path, rounds=4, start_round=0, progress=False)
        run.event("round %d done", 1)
        for h in history:
            run.record(h)
        plot = run.plot(history)
        run.close()
    assert any(r.getMessage().endswith(": round 1 done") for r in caplog.records)
    line = (tmp_path / "training.log").read_text().splitlines()[0]
    assert float(line.split(":")[0]) >= 0 and line.endswith("round 1 done")
    assert [json.loads(x)["round"] for x in (tmp_path / "history.jsonl").read_text().splitlines()
            ] == [1, 2, 3, 4]
    assert plot == tmp_path / "history.png" and plot.read_bytes()[:4] == b"\x89PNG"
    assert plot_history(history, tmp_path / "again.png").stat().st_size > 1000


def test_progress_bar_shows_rounds_loss_accuracy_and_speed(capsys):
    run = RunLog(None, rounds=3, start_round=1, progress=True)
    run.record({"round": 2, "time": 1.0, "loss": 0.25, "images": 64,
                "images_per_second": 1234.0, "test": {"accuracy": 0.975}})
    run.close()
    err = capsys.readouterr().err
    assert "2/3" in err and "loss=0.2500" in err and "acc=0.9750" in err and "img/s=1234" in err


# -- the run's configuration ---------------------------------------------------------------------

class _Context:
    defaultParallelism = 3


@pytest.mark.parametrize("options, error, words", [
    ({"sync_interval": 0}, ValueError, "sync_interval must be >= 1, got 0"),
    ({"rounds": -1}, ValueError, "rounds must be >= 0, got -1"),
    ({"workers": -2}, ValueError, "workers must be >= 1, got -2"),
    ({"reduction": "ring"}, ValueError, "reduction must be 'auto', 'driver' or 'tree'"),
    ({"exchange": "mpi"}, ValueError, "exchange must be 'auto', 'socket', 'ring' or 'spark'"),
    ({"exchange": "socket", "reduction": "tree"}, ValueError, "needs exchange='spark'"),
    ({"strategy": "hogwild"}, ValueError, "strategy must be 'average', 'easgd'"),
    ({"strategy": "easgd", "workers": 1, "seed": 0,
      "transform": None, "test_transform": 3}, TypeError, "test_transform must be a callable"),
])
def test_train_options_are_checked_once_when_the_config_is_built(options, error, words):
    from sparknet.spark._config import TrainConfig

    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig.create(_Context(), **options)


def test_train_config_resolves_workers_and_is_frozen():
    import attrs

    from sparknet.spark import EASGD
    from sparknet.spark._config import TrainConfig

    config = TrainConfig.create(_Context(), strategy="easgd", test_interval=None,
                                checkpoint_dir=None)
    assert config.workers == 3 and config.strategy == EASGD() and config.test_interval == 0
    assert config.easgd_rate == pytest.approx(0.3)
    assert [r for r in range(100) if config.checkpoint_due(r)] == []
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.rounds = 5  # type: ignore[misc]


# -- weights given by the user: one loader for train(init_weights=) and predict(weights=) --------

@pytest.fixture(scope="module")
def lenet_weights():
    from sparknet.engine import CaffeNet
    from sparknet.models import lenet

    solver = lenet.solver(16).to_proto()
    net = CaffeNet(solver)
    rng = np.random.default_rng(3)
    w = net.get_weights()
    trained = {name: [rng.standard_normal(a.shape).astype(np.float32) for a in arrays]
               for name, arrays in w.items()}
    return solver, trained


def test_every_form_of_weights_loads_the_same(tmp_path, s3, lenet_weights):
    from sparknet.engine import CaffeNet, WeightCollection
    from sparknet.spark import TrainResult
    from sparknet.spark._model import load_weights

    solver, trained = lenet_weights
    want = WeightCollection(trained)
    result = TrainResult(want, [], solver, s3_options=s3.options())
    local = result.save(tmp_path / "w" / "lenet.caffemodel")
    bucket = s3.bucket()
    remote = result.save(f"s3://{bucket}/models/lenet.caffemodel")
    assert s3.keys(bucket) == ["models/lenet.caffemodel"]
    for form in (want, trained, result, local, tmp_path / "w" / "lenet.caffemodel", remote):
        net = CaffeNet(solver)
        load_weights(net, form, s3.options())
        assert net.get_weights() == want, type(form).__name__
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nothing.caffemodel")):
        load_weights(CaffeNet(solver), tmp_path / "nothing.caffemodel")
    with pytest.raises(FileNotFoundError, match=f"s3://{bucket}/models/nothing.caffemodel"):
        load_weights(CaffeNet(solver), f"s3://{bucket}/models/nothing.caffemodel",
                     s3.options())
    with pytest.raises(TypeError, match="got int"):
        load_weights(CaffeNet(solver), 7)


def test_train_result_load_reads_what_save_wrote(tmp_path, s3, lenet_weights):
    from sparknet.engine import WeightCollection
    from sparknet.spark import TrainResult

    solver, trained = lenet_weights
    result = TrainResult(WeightCollection(trained), [{"round": 1}], solver,
                         s3_options=s3.options())
    bucket = s3.bucket()
    for path in (str(tmp_path / "lenet.caffemodel"), f"s3://{bucket}/lenet.caffemodel"):
        back = TrainResult.load(result.save(path), solver, s3_options=s3.options())
        assert back.weights == result.weights and back.checkpoint == path
        assert back.history == [] and back.rounds == 0
