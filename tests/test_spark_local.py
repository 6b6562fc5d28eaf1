"""Training and inference on local[2] (the shared session): accuracy, exactness, errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sparknet.data import digits_dataframe, digits_rdd, load_digits
from sparknet.engine import CaffeNet, WeightCollection
from sparknet.models import lenet
from sparknet.spark import EASGD, DataError, TrainingDiverged, featurize, predict, train

SMALL = {"workers": 2, "sync_interval": 5, "test_interval": 0, "progress": False}


@pytest.fixture(scope="module")
def digits(spark):
    return digits_rdd(spark, "train", num_partitions=2), digits_rdd(spark, "test", num_partitions=2)


@pytest.fixture(scope="module")
def solver16():
    return lenet.solver(16)


@pytest.fixture(scope="module")
def plain(spark, digits, solver16):
    """``plain(n)``: ``train(spark, solver16, the train digits, rounds=n, **SMALL)``, run once
    per ``n`` for the module. Training with the same seed gives the same weights
    (test_same_seed_same_weights_and_resume_is_exact runs it twice to prove it), so the
    tests that compare a resumed, rerun or retried run with a plain one share that one."""
    runs = {}

    def run(rounds: int):
        if rounds not in runs:
            runs[rounds] = train(spark, solver16, digits[0], rounds=rounds, **SMALL)
        return runs[rounds]
    return run


@pytest.fixture(scope="module")
def trained(spark, digits, tmp_path_factory):
    """LeNet (batch 64) trained on the digits to 97%, once: (the result, its output folder)."""
    train_rdd, test_rdd = digits
    out = tmp_path_factory.mktemp("trained")
    return train(spark, lenet.solver(64), train_rdd, test_data=test_rdd, workers=2,
                 sync_interval=50, rounds=10, test_interval=5, output_dir=out,
                 progress=False), out


def test_two_workers_reach_97_percent(trained):
    result, tmp_path = trained
    h = result.history
    assert [r["round"] for r in h] == list(range(1, 11))
    assert result.test["accuracy"] >= 0.97, result.test
    assert "test" in h[4] and "test" not in h[5]
    first = h[0]
    for key in ("time", "loss", "images", "images_per_second", "seconds", "partitions"):
        assert key in first
    assert set(first["seconds"]) >= {"round", "broadcast", "compute", "save", "collect",
                                     "average"}
    assert first["images"] == 2 * 50 * 64
    assert h[-1]["loss"] < h[0]["loss"]
    # nets and data were built once, by the same two Python workers, reused every round: a
    # partition continues in memory, or from its snapshot when the workers swapped partitions
    assert {p["state"] for p in h[0]["partitions"]} == {"fresh"}
    later = [p for r in h[1:] for p in r["partitions"]]
    assert {p["state"] for p in later} <= {"memory", "file"}
    assert {p["pid"] for p in later} == {p["pid"] for p in h[0]["partitions"]}
    # files: the SparkNet-style log, JSON lines, the plot, the weights
    log = (tmp_path / "training.log").read_text().splitlines()
    assert any(": round 10/10: loss" in line for line in log)
    assert all(float(line.split(":", 1)[0]) >= 0 for line in log)
    lines = [json.loads(x) for x in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == list(range(1, 11))
    assert result.plot_path == tmp_path / "history.png"
    assert result.plot_path.read_bytes()[:4] == b"\x89PNG"
    saved = result.save(tmp_path / "lenet.caffemodel")
    net = CaffeNet(lenet.solver(64))
    net.load_weights(saved)
    assert net.get_weights() == result.weights
    x, y = load_digits("test")
    acc = net.test([(x[i:i + 100], y[i:i + 100]) for i in range(0, len(x), 100)])["accuracy"]
    assert acc == pytest.approx(result.test["accuracy"], abs=1e-6)


def test_same_seed_same_weights_and_resume_is_exact(spark, digits, solver16, plain, tmp_path):
    train_rdd, _ = digits
    a = plain(4)
    b = train(spark, solver16, train_rdd, rounds=4, **SMALL)
    assert a.weights == b.weights
    c = train(spark, solver16, train_rdd, rounds=4, seed=1, **SMALL)
    assert c.weights != a.weights
    ck = tmp_path / "ck"
    first = train(spark, solver16, train_rdd, rounds=2, checkpoint_dir=ck, checkpoint_interval=1,
                  **SMALL)
    assert first.checkpoint == str(ck / "round-000002")
    assert (ck / "latest").read_text().strip() == "round-000002"
    state = json.loads((ck / "round-000002" / "state.json").read_text())
    assert state["round"] == 2 and state["config"]["workers"] == 2
    assert set(state["partitions"]) == {"0", "1"}
    net = CaffeNet(solver16)
    net.load_weights(ck / "round-000002" / "weights.caffemodel")
    assert net.get_weights() == first.weights
    resumed = train(spark, solver16, train_rdd, rounds=4, checkpoint_dir=ck,
                    checkpoint_interval=1, resume=True, **SMALL)
    assert [h["round"] for h in resumed.history] == [1, 2, 3, 4]
    assert {p["state"] for p in resumed.history[2]["partitions"]} == {"file"}
    assert resumed.weights == a.weights
    with pytest.raises(ValueError, match="different configuration.*sync_interval"):
        train(spark, solver16, train_rdd, rounds=5, checkpoint_dir=ck, resume=True,
              **{**SMALL, "sync_interval": 6})


def test_easgd_trains_and_resumes_exactly(spark, digits, solver16, tmp_path):
    train_rdd, test_rdd = digits
    full = train(spark, solver16, train_rdd, rounds=4, strategy="easgd", **SMALL)
    train(spark, solver16, train_rdd, rounds=2, strategy=EASGD(), checkpoint_dir=tmp_path,
          checkpoint_interval=2, **SMALL)
    assert (tmp_path / "round-000002" / "workers" / "part-00001.caffemodel").is_file()
    resumed = train(spark, solver16, train_rdd, rounds=4, strategy="easgd",
                    checkpoint_dir=tmp_path, checkpoint_interval=2, resume=True, **SMALL)
    assert resumed.weights == full.weights
    good = train(spark, lenet.solver(64), train_rdd, test_data=test_rdd, rounds=6,
                 strategy=EASGD(moving_rate=0.3), workers=2, sync_interval=50,
                 test_interval=6, progress=False)
    assert good.test["accuracy"] >= 0.95, good.test
    other = train(spark, solver16, train_rdd, rounds=4, strategy=EASGD(moving_rate=0.2),
                  **SMALL)
    assert other.weights != full.weights


def test_easgd_follows_its_update_rule(spark, solver16):
    """Two rounds of EASGD on Spark against the rule computed with two local nets."""
    from sparknet.spark._store import batch_indices

    x, y = load_digits("train")
    parts = [np.arange(0, 200), np.arange(200, 330)]  # uneven: 200 and 130 examples
    rdd = spark.sparkContext.parallelize(
        [[(x[i], y[i]) for i in p] for p in parts], 2).flatMap(lambda part: part)
    rate, tau = 0.3, 5
    centre = train(spark, solver16, rdd, rounds=0, **SMALL).weights.flat.copy()
    got = train(spark, solver16, rdd, rounds=2, strategy=EASGD(moving_rate=rate), **SMALL)

    nets = [CaffeNet(solver16) for _ in parts]
    for net in nets:
        net.set_weights(centre)
    for rnd in range(2):
        total = np.zeros_like(centre)
        for p, (net, idx) in enumerate(zip(nets, parts)):
            batches = []
            for step in range(rnd * tau, (rnd + 1) * tau):
                j = idx[batch_indices(len(idx), 16, step, seed=0, partition=p)]
                batches.append({"data": x[j], "label": y[j].reshape(-1, 1)})
            net.train(tau, batches)
            diff = net.get_weights().flat - centre  # x_i - c
            total += diff
            net.set_weights(diff * np.float32(1 - rate) + centre)  # x_i -= a (x_i - c)
        centre = centre + total * np.float32(rate)  # c += a sum_i (x_i - c)
    assert np.allclose(got.weights.flat, centre, rtol=1e-5, atol=1e-7)
    assert not np.allclose(got.weights.flat, nets[0].get_weights().flat, rtol=1e-3)


def test_uneven_small_partitions_wrap_and_repartition(spark, solver16):
    x, y = load_digits("train")
    sizes = [10, 50, 200]  # 10 < sync_interval * batch: wraps around
    rdd = spark.sparkContext.parallelize(list(zip(x[:260], y[:260])), 3).mapPartitionsWithIndex(
        lambda i, it: list(it)[:sizes[i]])
    three = train(spark, solver16, rdd, rounds=2, **{**SMALL, "workers": 3, "sync_interval": 12})
    assert np.isfinite(three.history[-1]["loss"])
    two = train(spark, solver16, rdd, rounds=2, **SMALL)  # 3 partitions -> 2, once
    again = train(spark, solver16, rdd, rounds=2, **SMALL)
    assert two.weights == again.weights
    one = train(spark, solver16, rdd, rounds=2, **{**SMALL, "workers": 1})
    assert len(one.history[0]["partitions"]) == 1


def test_tuples_dicts_and_dataframes_train_identically(spark, digits, solver16, plain):
    tuples = digits[0]  # digits_rdd(spark, "train", num_partitions=2): plain(2) trained on it
    dicts = tuples.map(lambda p: {"label": p[1], "data": p[0], "extra": "ignored"})
    frame = digits_dataframe(spark, "train", num_partitions=2)
    results = [plain(2).weights] + [train(spark, solver16, d, rounds=2, **SMALL).weights
                                    for d in (dicts, frame)]
    assert results[0] == results[1] == results[2]


def test_image_and_vector_columns_and_preprocess_train_like_arrays(spark, solver16):
    import io

    from PIL import Image
    from pyspark.ml.linalg import Vectors

    x, y = load_digits("train")
    x8 = np.round(x * 255).astype(np.uint8)  # pixels
    idx = spark.sparkContext.parallelize(range(400), 2)

    def png(i):
        buf = io.BytesIO()
        Image.fromarray(x8[i, 0]).save(buf, "PNG")
        return bytearray(buf.getvalue())

    def scale(d):  # runs on the workers, once per example
        return {**d, "data": d["data"] / np.float32(255)}

    def run(data, **kw):
        return train(spark, solver16, data, rounds=2, **SMALL, **kw).weights

    arrays = run(idx.map(lambda i: (x8[i] / np.float32(255), y[i])))
    assert run(idx.map(lambda i: (x8[i], y[i])), preprocess=scale) == arrays
    schema = "data binary, label double"
    encoded = spark.createDataFrame(idx.map(lambda i: (png(i), float(y[i]))), schema)
    assert run(encoded, preprocess=scale) == arrays  # PNG bytes, decoded on the workers
    raw = spark.createDataFrame(idx.map(lambda i: (bytearray(x8[i].tobytes()), float(y[i]))),
                                schema)
    assert run(raw, preprocess=scale) == arrays  # raw uint8 pixels
    vectors = spark.createDataFrame(idx.map(lambda i: (
        Vectors.dense((x8[i] / np.float32(255)).ravel().tolist()), float(y[i]))),
        ["data", "label"])
    assert run(vectors) == arrays  # ML vectors, reshaped to the blob


def test_rounds_never_recompute_the_examples(spark, solver16):
    x, y = load_digits("train")
    sc = spark.sparkContext

    def computed(rounds):
        calls = sc.accumulator(0)

        def example(i):
            calls.add(1)
            return x[i], y[i]

        data = sc.parallelize(range(300), 2).map(example)
        train(spark, solver16, data, rounds=rounds, **SMALL)
        return calls.value

    one, six = computed(1), computed(6)
    assert 300 <= one <= 310  # each example once (and the driver's look at the first)
    assert six == one  # later rounds ship weights only


def test_every_exchange_and_reduction_gives_the_same_weights(spark, digits, solver16, tmp_path):
    train_rdd, _ = digits
    pushed = train(spark, solver16, train_rdd, rounds=2, exchange="socket",
                   output_dir=tmp_path, **SMALL)
    assert "through the driver's exchange at" in (tmp_path / "training.log").read_text()
    assert pushed.exchange == "socket"
    driver = train(spark, solver16, train_rdd, rounds=2, exchange="spark", reduction="driver",
                   **SMALL)
    assert driver.exchange == "spark"
    assert pushed.weights == driver.weights  # two workers: the sum is exact in any order
    tree = train(spark, solver16, train_rdd, rounds=2, reduction="tree", **SMALL)
    assert driver.weights.allclose(tree.weights, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="exchange must be"):
        train(spark, solver16, train_rdd, rounds=1, exchange="sockets", **SMALL)
    with pytest.raises(ValueError, match="reduction='tree' .* needs exchange='spark'"):
        train(spark, solver16, train_rdd, rounds=1, exchange="socket", reduction="tree",
              **SMALL)


def test_executors_that_cannot_reach_the_driver_fall_back_to_spark(spark, solver16, tmp_path,
                                                                   monkeypatch):
    from sparknet.spark import _comm

    # the exchange listens on 127.0.0.1 but tells the tasks to connect to 127.0.0.2
    monkeypatch.setattr(_comm.SocketExchange, "for_context", classmethod(
        lambda cls, sc: cls("127.0.0.2", bind="127.0.0.1")))
    rdd = digits_rdd(spark, "train", num_partitions=2)
    with pytest.raises(ConnectionError, match=r"cannot reach the driver's weight exchange at "
                                              r"127\.0\.0\.2:\d+"):
        train(spark, solver16, rdd, rounds=1, exchange="socket", **SMALL)
    result = train(spark, solver16, rdd, rounds=1, output_dir=tmp_path, **SMALL)
    assert result.exchange == "spark"
    assert "weights travel through Spark instead" in (tmp_path / "training.log").read_text()


def test_dropout_nets_give_the_same_weights_after_a_worker_crash(spark, digits):
    from enginehelp import dropout_solver

    from sparknet.spark._faults import Fault, inject

    train_rdd, _ = digits
    clean = train(spark, dropout_solver(16), train_rdd, rounds=3, **SMALL)
    # partition 1's Python worker dies mid-round 2; Spark reruns it in a fresh process, whose
    # Caffe random generator would otherwise be at another place than the dead one's
    with inject(spark, Fault(round=1, partition=1, after_steps=2, kind="exit")):
        crashed = train(spark, dropout_solver(16), train_rdd, rounds=3, **SMALL)
    assert crashed.history[1]["retried"] == [1]
    assert crashed.weights == clean.weights


@pytest.mark.parametrize("misses", [1, 4])
def test_tasks_that_miss_their_cached_data_are_rerun(spark, digits, solver16, plain, misses):
    from sparknet.spark._faults import Fault, inject

    train_rdd, _ = digits
    clean = plain(3)
    # 1 miss: partition 1 is rerun on its own; 4: three reruns miss too, the data is cached
    # again and the round redone
    with inject(spark, Fault(round=1, partition=1, after_steps=misses, kind="missing")):
        missed = train(spark, solver16, train_rdd, rounds=3, **SMALL)
    assert missed.history[1]["rerun"] == [1]
    assert missed.weights == clean.weights


def test_test_metrics_are_weighted_by_example(spark, solver16):
    x, y = load_digits("test")
    sizes = [7, 100, 253]  # uneven test partitions, a short last batch in each
    parts = np.split(np.arange(len(y)), np.cumsum(sizes)[:-1])
    test_rdd = spark.sparkContext.parallelize(
        [[(x[i], y[i]) for i in p] for p in parts], 3).flatMap(lambda part: part)
    result = train(spark, solver16, digits_rdd(spark, "train", num_partitions=2), test_data=test_rdd,
                   rounds=2, **SMALL)
    net = CaffeNet(solver16)
    net.set_weights(result.weights)
    local = net.test([(x[i:i + 16], y[i:i + 16]) for i in range(0, len(y), 16)])
    assert result.test["accuracy"] == pytest.approx(local["accuracy"], abs=1e-6)
    assert result.test["loss"] == pytest.approx(local["loss"], rel=1e-5)


def test_transforms_are_reproducible(spark, digits, solver16, plain):
    from sparknet.data import Transformer

    train_rdd, _ = digits
    runs = [train(spark, solver16, train_rdd, rounds=2,
                  transform=Transformer(mirror=True, seed=5), **SMALL) for _ in range(2)]
    assert runs[0].weights == runs[1].weights != plain(2).weights


def test_random_crops_are_drawn_per_minibatch_from_the_cached_images(spark):
    from sparknet.data import Transformer

    x, y = load_digits("train")
    xt, yt = load_digits("test")
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))  # 32x32: cached as given
    test_padded = np.pad(xt, ((0, 0), (0, 0), (2, 2), (2, 2)))
    result = train(spark, lenet.solver(64), (padded, y), test_data=(test_padded, yt),
                   transform=Transformer(crop_size=28), workers=2, sync_interval=50, rounds=4,
                   test_interval=4, test_transform=Transformer(crop_size=28, phase="TEST"),
                   progress=False)
    assert result.test["accuracy"] >= 0.93, result.test
    # a transform whose output does not fit the blob fails on the driver, naming both shapes
    with pytest.raises(DataError, match=r"the transform for 'data' turns a batch of shape "
                                        r"\(1, 1, 32, 32\) into \(1, 1, 24, 24\); input blob "
                                        r"'data' takes \(1, 1, 28, 28\)"):
        train(spark, lenet.solver(16), (padded, y), transform=Transformer(crop_size=24),
              rounds=1, **SMALL)
    # the examples a transform takes must share one shape: the error names the example
    mixed = spark.sparkContext.parallelize(
        [(padded[i] if i != 7 else padded[i][:, 1:-1, 1:-1], y[i]) for i in range(64)], 2)
    with pytest.raises(DataError, match=r"example 7: input blob 'data' gets an example of "
                                        r"shape \(1, 30, 30\) after examples of \(1, 32, 32\)"):
        train(spark, lenet.solver(16), mixed, transform=Transformer(crop_size=28), rounds=1,
              **SMALL)


@pytest.mark.parametrize("case", ["shape", "label", "fraction", "nan", "empty"])
def test_data_that_does_not_fit_fails_on_the_driver_first(spark, solver16, case):
    x, y = load_digits("train")
    sc = spark.sparkContext
    n = 40
    examples = {
        "shape": [(np.zeros((3, 28, 28), np.float32), 1.0)] * n,
        "label": [(x[i], 12.0 if i == 33 else y[i]) for i in range(n)],
        "fraction": [(x[i], 1.5) for i in range(n)],
        "nan": [(np.full((1, 28, 28), np.nan, np.float32) if i == 30 else x[i], y[i])
                for i in range(n)],
        "empty": [],
    }[case]
    message = {"shape": r"input blob 'data' takes \(1, 28, 28\).*gives \(3, 28, 28\)",
               "label": r"'label' has values from 0 to 12.*'loss'.*10 classes",
               "fraction": r"'label' has non-integer values",
               "nan": r"'data' has NaN or infinite values \(partition 1, example 10\)",
               "empty": r"train_data is empty"}[case]
    rounds = []
    with pytest.raises(DataError, match=message):
        train(spark, solver16, sc.parallelize(examples, 2), rounds=1, callback=rounds.append,
              **SMALL)
    assert rounds == []


def test_divergence_stops_with_the_round_and_keeps_the_last_checkpoint(spark, digits, tmp_path):
    train_rdd, _ = digits
    solver = lenet.solver(16).to_proto()
    solver.lr_policy = "multistep"  # the learning rate jumps 1e5x at iteration 10 (round 3)
    solver.gamma = 1e5
    solver.stepvalue.append(10)
    with pytest.raises(TrainingDiverged, match=r"diverged in round 3: the training loss "
                                               r"became nan.*Stopped; the last good "
                                               r"checkpoint is .*round-000002") as err:
        train(spark, solver, train_rdd, rounds=6, checkpoint_dir=tmp_path, checkpoint_interval=1,
              **SMALL)
    assert err.value.round == 3 and err.value.checkpoint == str(tmp_path / "round-000002")
    assert (tmp_path / "latest").read_text().strip() == "round-000002"
    net = CaffeNet(lenet.solver(16))
    net.load_weights(tmp_path / "round-000002" / "weights.caffemodel")
    assert np.isfinite(net.get_weights().flat).all()


def test_s3_checkpoints_and_resume(spark, digits, solver16, plain, s3):
    train_rdd, _ = digits
    bucket = s3.bucket()
    where = f"s3://{bucket}/lenet"
    full = plain(3)
    part = train(spark, solver16, train_rdd, rounds=2, checkpoint_dir=where,
                 checkpoint_interval=2, s3_options=s3.options(), **SMALL)
    assert part.checkpoint == f"{where}/round-000002"
    assert "lenet/round-000002/weights.caffemodel" in s3.keys(bucket)
    resumed = train(spark, solver16, train_rdd, rounds=3, checkpoint_dir=where, resume=True,
                    s3_options=s3.options(), **SMALL)
    assert resumed.weights == full.weights
    assert s3.keys(bucket, "lenet/latest")
    out = resumed.save(f"{where}/final.caffemodel")
    assert out.endswith("final.caffemodel") and "lenet/final.caffemodel" in s3.keys(bucket)


def test_callback_stops_and_init_weights_continue(spark, digits, solver16, plain, tmp_path):
    train_rdd, _ = digits
    seen = []
    stopped = train(spark, solver16, train_rdd, rounds=10, callback=lambda r: (
        seen.append(r["round"]), r["round"] < 2)[1], checkpoint_dir=tmp_path, **SMALL)
    assert seen == [1, 2] and stopped.rounds == 2
    assert stopped.checkpoint == str(tmp_path / "round-000002")
    cont = train(spark, solver16, train_rdd, rounds=1, init_weights=stopped, **SMALL)
    assert cont.history[0]["loss"] < plain(1).history[0]["loss"]
    from_file = train(spark, solver16, train_rdd, rounds=1, **SMALL,
                      init_weights=str(tmp_path / "round-000002" / "weights.caffemodel"))
    assert from_file.weights == cont.weights


def test_predict_and_featurize(spark, digits, trained, tmp_path):
    _, test_rdd = digits
    result, _ = trained  # LeNet at batch 64, trained on Spark
    x, y = load_digits("test")
    net = result.net()
    expected = net.forward({"data": x}, ["ip2", "ip1"])
    frame = predict(spark, lenet.solver(64), result, test_rdd, blobs=["ip2"])
    assert frame.columns == ["label", "ip2"]
    rows = frame.collect()
    assert len(rows) == len(y)
    got = np.array([r["ip2"] for r in rows], np.float32)
    assert np.allclose(got, expected["ip2"], atol=1e-4)
    assert [r["label"] for r in rows] == y.tolist()
    # a DataFrame in, features out as ML vectors, other columns kept, a net without labels
    deploy = lenet.net(32).to_proto()
    del deploy.layer[-2:]  # accuracy and loss
    del deploy.layer[1]  # the label input
    frame = featurize(spark, deploy, result.weights,
                      digits_dataframe(spark, "test", num_partitions=3), blobs=["ip1"])
    assert frame.columns == ["label", "ip1"]
    feats = np.array([r["ip1"].toArray() for r in frame.collect()], np.float32)
    assert np.allclose(feats, expected["ip1"], atol=1e-4)
    path = tmp_path / "w.caffemodel"
    result.save(path)
    dicts = test_rdd.map(lambda p: {"data": p[0], "id": int(p[1] * 10)})
    frame = predict(spark, lenet.net(64), str(path), dicts, blobs=("ip2",), output="array")
    assert frame.columns == ["id", "ip2"] and frame.count() == len(y)
    with pytest.raises(ValueError, match="no blob 'nope'.*ip1"):
        predict(spark, lenet.solver(64), result, test_rdd, blobs=["nope"])


def test_a_saved_result_loads_and_predicts_like_the_trained_one(spark, digits, solver16,
                                                                plain, tmp_path):
    from sparknet.spark import TrainResult

    train_rdd, test_rdd = digits
    result = plain(1)
    loaded = TrainResult.load(result.save(tmp_path / "w.caffemodel"), solver16)
    assert loaded.weights == result.weights
    want = predict(spark, solver16, result, test_rdd, blobs=["ip2"]).collect()
    got = loaded.predict(spark, test_rdd, ["ip2"]).collect()
    assert len(got) == len(want) > 0
    assert np.array_equal(np.array([r["ip2"] for r in got]), np.array([r["ip2"] for r in want]))
    # train(init_weights=) takes what predict(weights=) takes: here a dict of arrays
    as_dict = {name: [a.copy() for a in arrays] for name, arrays in result.weights.items()}
    assert (train(spark, solver16, train_rdd, rounds=1, init_weights=as_dict, **SMALL).weights
            == train(spark, solver16, train_rdd, rounds=1, init_weights=loaded, **SMALL).weights)


def test_results_are_weight_collections(solver16, plain):
    result = plain(1)
    assert isinstance(result.weights, WeightCollection)
    assert result.weights.layout == CaffeNet(solver16).get_weights().layout


@pytest.mark.parametrize("damage", ["state.json", "weights.caffemodel",
                                    "workers/part-00001.solverstate"])
def test_a_corrupt_newest_checkpoint_is_named_and_an_older_one_resumes_exactly(
        spark, digits, solver16, plain, tmp_path, caplog, damage):
    train_rdd, _ = digits
    whole = plain(3)
    ck = tmp_path / "ck"
    train(spark, solver16, train_rdd, rounds=2, checkpoint_dir=ck, checkpoint_interval=1,
          keep_checkpoints=3, **SMALL)
    bad = ck / "round-000002" / damage
    data = bad.read_bytes()
    bad.write_bytes(data[:len(data) * 2 // 3])         # cut short, as by a full disk
    with caplog.at_level("WARNING"):
        resumed = train(spark, solver16, train_rdd, rounds=3, checkpoint_dir=ck, resume=True,
                        checkpoint_interval=0, **SMALL)
    assert str(bad) in caplog.text                      # the checkpoint's file, not a copy
    assert f"resuming from {ck / 'round-000001'}" in caplog.text
    assert [h["round"] for h in resumed.history] == [1, 2, 3]
    assert resumed.weights == whole.weights             # round 1's checkpoint, resumed exactly


def test_resume_with_no_usable_checkpoint_names_them(spark, digits, solver16, tmp_path):
    from sparknet.spark.checkpoint import CheckpointError

    train_rdd, _ = digits
    ck = tmp_path / "ck"
    train(spark, solver16, train_rdd, rounds=1, checkpoint_dir=ck, **SMALL)
    (ck / "round-000001" / "state.json").write_text('{"round": 1, "config": ')
    with pytest.raises(CheckpointError, match=rf"no usable checkpoint in {ck}: "
                       rf"{ck / 'round-000001' / 'state.json'} is not valid JSON"):
        train(spark, solver16, train_rdd, rounds=2, checkpoint_dir=ck, resume=True, **SMALL)


def test_small_partitions_and_more_workers_than_slots_are_warned_about(spark, solver16,
                                                                        caplog):
    x, y = load_digits("train")
    data = spark.sparkContext.parallelize(list(zip(x[:30], y[:30])), 3)
    with caplog.at_level("WARNING", logger="sparknet.spark"):
        train(spark, solver16, data, rounds=1, **{**SMALL, "workers": 3})
    # 10 examples a partition, minibatches of 16; local[2,3] runs 2 tasks at once
    assert ("partition 0 holds 10 example(s), fewer than one minibatch of 16: every minibatch "
            "repeats each of them about 1.6 times") in caplog.text
    assert "workers=3 exceeds the 2 task slot(s) of master local[2,3]" in caplog.text
    assert "2 waves" in caplog.text


def test_a_disk_that_fills_up_names_the_file_and_keeps_the_last_checkpoint(
        spark, digits, solver16, tmp_path, file_size_limit):
    import contextlib

    train_rdd, _ = digits
    ck = tmp_path / "ck"
    full = contextlib.ExitStack()

    def after(rec: dict) -> None:
        if rec["round"] == 1:  # the disk is full from round 2 on
            full.enter_context(file_size_limit(64 << 10))

    try:
        with pytest.raises(OSError, match="File too large") as caught:
            train(spark, solver16, train_rdd, rounds=3, checkpoint_dir=ck, checkpoint_interval=1,
                  callback=after, **SMALL)
    finally:
        full.close()
    assert str(ck) in str(caught.value)                        # names what it was writing
    assert sorted(p.name for p in ck.iterdir()) == ["latest", "round-000001"]  # no leftovers
    resumed = train(spark, solver16, train_rdd, rounds=1, checkpoint_dir=ck, resume=True,
                    **SMALL)
    assert resumed.checkpoint == str(ck / "round-000001")

    # saving the weights over an older file: the old file stays whole
    target = tmp_path / "lenet.caffemodel"
    target.write_bytes(b"old weights")
    with file_size_limit(64 << 10), pytest.raises(OSError) as caught:
        resumed.save(target)
    assert str(target) in str(caught.value)
    assert target.read_bytes() == b"old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "lenet.caffemodel"]


def _solver_of(text: str):
    from google.protobuf import text_format

    from sparknet.proto import caffe_pb2

    net = text_format.Parse(text, caffe_pb2.NetParameter())
    return caffe_pb2.SolverParameter(net_param=net, base_lr=0.01, lr_policy="fixed",
                                     random_seed=1)


_INPUTS = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 16 dim: 1 dim: 28
        dim: 28 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 16 dim: 1 } } }
layer { name: "scores" type: "InnerProduct" bottom: "data" top: "scores"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
"""


def test_the_trainer_checks_labels_by_the_engines_own_rules(spark):
    x, y = load_digits("train")
    sc = spark.sparkContext
    # HingeLoss on scores of shape (16, 5, 2): Caffe counts count / num = 10 classes (the
    # trainer used to count shape[1] = 5 and refused the labels 5..9)
    hinge = _solver_of(_INPUTS + """
        layer { name: "grid" type: "Reshape" bottom: "scores" top: "grid"
                reshape_param { shape { dim: 0 dim: 5 dim: 2 } } }
        layer { name: "loss" type: "HingeLoss" bottom: "grid" bottom: "label" }""")
    assert [r.classes for r in CaffeNet(hinge).label_rules()] == [10]
    digits = sc.parallelize([(x[i], y[i]) for i in range(64)], 2)
    assert set(y[:64]) == set(range(10))
    trained = train(spark, hinge, digits, rounds=1, **SMALL)
    assert np.isfinite(trained.weights.flat).all()
    # a label the loss reads through a Reshape: refused on the driver, before any round,
    # naming the input blob (the trainer used to miss it and let the workers fail)
    flat = _solver_of(_INPUTS + """
        layer { name: "flat_label" type: "Reshape" bottom: "label" top: "flat_label"
                reshape_param { shape { dim: 0 } } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "scores" bottom: "flat_label" }""")
    bad = sc.parallelize([(x[i], 12.0 if i == 33 else y[i]) for i in range(64)], 2)
    rounds = []
    with pytest.raises(DataError, match=r"input blob 'label' has values from 0 to 12, but "
                                        r"layer 'loss' \(SoftmaxWithLoss\) reads it as a class "
                                        r"index of 'scores', which has 10 classes"):
        train(spark, flat, bad, rounds=1, callback=rounds.append, **SMALL)
    assert rounds == []


_LENET = Path(__file__).resolve().parent.parent / "caffe" / "models" / "lenet"
#: (edit of the shipped LeNet prototxt, the line it is on, what the DSL says about it)
IMPOSSIBLE = {
    "kernel larger than its input": (
        ("kernel_size: 5", "kernel_size: 40"), 18,
        "layer 'conv1' (Convolution), field 'kernel': kernel 40 is larger than the padded "
        "input on spatial axis 0: 28 + 2 * 0 = 28"),
    "zero dimension": (
        ("dim: 64 dim: 1 dim: 28", "dim: 64 dim: 0 dim: 28"), 6,
        "layer 'data' (Input), field 'shape': dimensions must be positive, got (64, 0, 28, 28)"),
}


def _entry(name: str, spark, path: Path):
    """Run the sparknet entry point ``name`` on the net of the prototxt at ``path``."""
    from sparknet import frontend
    from sparknet.ml import CaffeEstimator, caffe_udf
    from sparknet.proto import ProtoLoader

    net = ProtoLoader.load_net_prototxt(path)
    solver = ProtoLoader.load_solver_prototxt_with_net(_LENET / "lenet_solver.prototxt", net)
    digits = digits_rdd(spark, "test", num_partitions=2)
    return {
        "train": lambda: train(spark, solver, digits, rounds=1, **SMALL),
        "predict": lambda: predict(spark, path, None, digits, ["ip2"]),
        "featurize": lambda: featurize(spark, net, None, digits, ["ip1"]),
        "caffe_udf": lambda: caffe_udf((solver, None)),
        "CaffeEstimator.fit": lambda: CaffeEstimator(solver=solver).fit(
            digits_dataframe(spark, "test")),
        "the command line's loader": lambda: frontend.load_solver(str(path)),
    }[name]()


@pytest.mark.parametrize("entry", ["train", "predict", "featurize", "caffe_udf",
                                   "CaffeEstimator.fit", "the command line's loader"])
@pytest.mark.parametrize("mistake", IMPOSSIBLE)
def test_a_prototxt_with_an_impossible_shape_gets_the_dsls_message_before_caffe(
        spark, tmp_path, entry, mistake):
    from sparknet.dsl import NetDefinitionError

    (old, new), line, says = IMPOSSIBLE[mistake]
    text = (_LENET / "lenet_train_test.prototxt").read_text()
    path = tmp_path / "net.prototxt"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(NetDefinitionError) as caught:
        _entry(entry, spark, path)
    message = str(caught.value)
    assert says in message and "Check failed" not in message
    if entry in ("predict", "the command line's loader"):  # given the file: it is named
        assert message.startswith(f"{path}:{line}: "), message
