"""The flows of tests/test_connect.py, run as a Spark Connect client in a process of its own.

``python tests/connect_client.py URL OUT FLOW...`` connects to the Spark Connect
server at ``URL`` (``sc://host:port``) and runs each FLOW, writing what it saw into
folder ``OUT``: ``FLOW.json`` (figures, messages; ``{"error": traceback}`` when the
flow failed) and ``.npy`` arrays. A process of its own because a Python process
that opened a Connect session is a Connect process from then on (pyspark's
``is_remote()``), and the test process holds a classic session; and because this
one must never start a JVM: every flow ends by checking that no SparkContext
exists here.

The settings are those of the classic runs in tests/test_connect.py, so the two
can be compared exactly.
"""
from __future__ import annotations

import json
import shutil
import sys
import traceback
from pathlib import Path

import numpy as np

#: LeNet on the digits: shared with the classic baseline in tests/test_connect.py.
TRAIN = {"workers": 2, "sync_interval": 25, "rounds": 6, "test_interval": 3, "seed": 0}
#: The seed is set: HasSeed's default is hash() of the class name, which differs from one
#: Python process to the next (string hashing is salted), and the two fits run in two.
PIPELINE = {"workers": 2, "syncInterval": 25, "rounds": 4, "seed": 7}


def _no_spark_context() -> None:
    from pyspark import SparkContext

    assert SparkContext._active_spark_context is None, "the client started a SparkContext"


def flow_train(spark, out: Path) -> dict:
    """train (with checkpoints), resume, predict and featurize."""
    from sparknet.data import digits_dataframe, load_digits
    from sparknet.models import lenet
    from sparknet.spark import featurize, predict, train
    from sparknet.spark.checkpoint import LATEST, round_name

    train_df, test_df = digits_dataframe(spark, "train"), digits_dataframe(spark, "test")
    solver = lenet.solver(batch_size=64)
    full = train(spark, solver, train_df, test_data=test_df, progress=False,
                 checkpoint_dir=out / "ckpt-full", checkpoint_interval=3,
                 output_dir=out / "run", **TRAIN)
    np.save(out / "train_weights.npy", full.weights.flat)
    # interrupted after round 3, resumed to round 6: the uninterrupted run's weights; fed
    # as (x, y) arrays, cut into the same two partitions as the DataFrame's. What a run
    # stopped after round 3 leaves is the full run's round-3 checkpoint with `latest`
    # naming it: copied, it spares training those three rounds a second time.
    shutil.copytree(out / "ckpt-full" / round_name(3), out / "ckpt" / round_name(3))
    (out / "ckpt" / LATEST).write_text(round_name(3) + "\n")
    arrays = load_digits("train")
    options = {k: v for k, v in TRAIN.items() if k != "test_interval"}
    resumed = train(spark, solver, arrays, progress=False, checkpoint_dir=out / "ckpt",
                    resume=True, checkpoint_interval=3, **options)
    np.save(out / "resumed_weights.npy", resumed.weights.flat)
    scores = predict(spark, solver, full, test_df, blobs=["ip2"]).collect()
    np.save(out / "predict_ip2.npy", np.asarray([r.ip2 for r in scores], np.float32))
    feats = featurize(spark, solver, full, test_df, blobs=["ip1"])
    first = feats.first()
    return {"history": full.history, "test": full.history[-1]["test"],
            "exchange": full.exchange, "predict_labels": [r.label for r in scores],
            "featurize_schema": feats.schema.simpleString(),
            "featurize_first": np.asarray(first.ip1.toArray(), np.float32).tolist(),
            "checkpoint": str(full.checkpoint),
            # rounds 1-3 as the checkpoint recorded them (timings too): resumed, not rerun
            "resumed_history": resumed.history,
            "log": (out / "run" / "training.log").read_text()}


def flow_pipeline(spark, out: Path) -> dict:
    """Pipeline fit, save, load in this session, transform; caffe_udf in SQL."""
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.feature import SQLTransformer

    from sparknet.data import digits_dataframe
    from sparknet.ml import CaffeEstimator, caffe_udf
    from sparknet.models import lenet

    train_df, test_df = digits_dataframe(spark, "train"), digits_dataframe(spark, "test")
    features = SQLTransformer(statement="SELECT data AS features, label FROM __THIS__")
    est = CaffeEstimator(solver=lenet.solver(batch_size=64), featuresCol="features",
                         labelCol="label", **PIPELINE)
    model = Pipeline(stages=[features, est]).fit(train_df)
    np.save(out / "pipeline_weights.npy", model.stages[-1].weights.flat)
    path = str(out / "lenet-pipeline")
    model.write().overwrite().save(path)
    again = PipelineModel.load(path)
    rows = again.transform(test_df).select("label", "prediction", "probability").collect()
    before = model.transform(test_df).select("prediction").collect()
    scores = caffe_udf(again.stages[-1])
    spark.udf.register("lenet_scores", scores)
    test_df.createOrReplaceTempView("digits")
    sql = spark.sql("SELECT label, lenet_scores(data) AS ip2 FROM digits").collect()
    np.save(out / "sql_ip2.npy", np.asarray([r.ip2 for r in sql], np.float32))
    return {"labels": [r.label for r in rows],
            "predictions": [r.prediction for r in rows],
            "predictions_before_save": [r.prediction for r in before],
            "probability_sums": [float(np.sum(r.probability.toArray())) for r in rows],
            "sql_argmax": [int(np.argmax(r.ip2)) for r in sql],
            "saved": sorted(p.name for p in Path(path).iterdir())}


def flow_refusals(spark, out: Path) -> dict:
    """What cannot work on Connect says so in one line, naming the alternative."""
    from sparknet.data import digits_dataframe
    from sparknet.data.digits import digits_rdd
    from sparknet.models import lenet
    from sparknet.spark import train

    seen = {}
    try:
        digits_rdd(spark, "train")
    except Exception as e:  # noqa: BLE001 - recorded for the test
        seen["digits_rdd"] = f"{type(e).__name__}: {e}"
    try:
        train(spark, lenet.solver(batch_size=64), digits_dataframe(spark, "train"), workers=2,
              rounds=1, exchange="socket", progress=False)
    except Exception as e:  # noqa: BLE001 - recorded for the test
        seen["socket"] = f"{type(e).__name__}: {e}"
    try:
        train(spark, lenet.solver(batch_size=64), digits_dataframe(spark, "train"), workers=2,
              rounds=1, exchange="ring", progress=False)
    except Exception as e:  # noqa: BLE001 - recorded for the test
        seen["ring"] = f"{type(e).__name__}: {e}"
    from sparknet.dsl import (
        InnerProductLayer,
        LrPolicy,
        NetParam,
        RDDLayer,
        SoftmaxWithLoss,
        SolverParam,
    )
    big = SolverParam(NetParam(
        "big", RDDLayer("data", shape=(64, 1, 28, 28)), RDDLayer("label", shape=(64, 1)),
        InnerProductLayer("ip1", ["data"], num_output=6000),
        InnerProductLayer("ip2", ["ip1"], num_output=10),
        SoftmaxWithLoss("loss", ["ip2", "label"])), base_lr=0.01, lr_policy=LrPolicy.fixed())
    try:
        train(spark, big, digits_dataframe(spark, "train"), workers=2, rounds=1, progress=False)
    except Exception as e:  # noqa: BLE001 - recorded for the test
        seen["big"] = f"{type(e).__name__}: {e}"
    return seen


def main() -> None:
    url, out = sys.argv[1], Path(sys.argv[2])
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.remote(url).getOrCreate()
    for flow in sys.argv[3:]:
        folder = out / flow
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        try:
            result = globals()[f"flow_{flow}"](spark, folder)
            _no_spark_context()
        except BaseException:  # noqa: BLE001 - the test shows it
            result = {"error": traceback.format_exc()}
        (folder / f"{flow}.json").write_text(json.dumps(result))
    spark.stop()


if __name__ == "__main__":
    main()
