"""sparknet.ml: Caffe nets as pyspark.ml stages, their persistence, and the Arrow UDF.

Real Spark (the suite's local session), real Caffe, the bundled digits.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sparknet.data import load_digits
from sparknet.engine import CaffeNet, WeightCollection
from sparknet.ml import ParamError
from sparknet.models import lenet
from sparknet.spark import DataError

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parent.parent
FAST = {"workers": 2, "syncInterval": 25, "rounds": 7, "testInterval": 0}


def vector_frame(spark, split, scale=255.0):
    """The digits with ``id``, ``pixels`` (an ML vector, 0..scale) and ``label`` columns."""
    from pyspark.ml.linalg import Vectors

    x, y = load_digits(split)
    rows = [(i, Vectors.dense((x[i].ravel() * scale).astype(np.float64)), float(y[i]))
            for i in range(len(y))]
    return spark.createDataFrame(rows, ["id", "pixels", "label"]).repartition(2, "id")


@pytest.fixture(scope="module")
def frames(spark):
    return vector_frame(spark, "train").cache(), vector_frame(spark, "test").cache()


@pytest.fixture(scope="module")
def fitted(spark, frames):
    """A Pipeline of a feature stage (MaxAbsScaler) and the estimator, fitted once."""
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import MaxAbsScaler

    from sparknet.ml import CaffeEstimator

    train_df, _ = frames
    est = CaffeEstimator(solver=lenet.solver(batch_size=32), featuresCol="features",
                         labelCol="label", **FAST)
    scaler = MaxAbsScaler(inputCol="pixels", outputCol="features")
    return Pipeline(stages=[scaler, est]).fit(train_df)


@pytest.fixture(scope="module")
def scored(frames, fitted):
    """The fitted Pipeline's output on the test digits, collected once: id -> Row.

    The tests that only read it share one scoring job instead of running their own.
    """
    _, test_df = frames
    out = fitted.transform(test_df).select("id", "label", "prediction", "probability",
                                           "rawPrediction")
    return {r.id: r for r in out.collect()}


def accuracy(rows) -> float:
    """The fraction of rows whose prediction is their label."""
    return sum(r.prediction == r.label for r in rows) / len(rows)


# -- (1) Pipeline fit/transform, (2) persistence ------------------------------------------------

def test_pipeline_reaches_95_percent_and_predicts_the_same_after_loading_in_a_new_process(
        spark, frames, fitted, scored, tmp_path):
    from pyspark.ml.linalg import DenseVector

    from sparknet.ml import CaffeModel

    _, test_df = frames
    assert len(scored) == 360
    assert accuracy(scored.values()) >= 0.95
    for row in scored.values():
        assert isinstance(row.probability, DenseVector) and len(row.probability) == 10
        assert abs(row.probability.toArray().sum() - 1) < 1e-6
        assert row.prediction == float(np.argmax(row.probability.toArray()))
    caffe_model = fitted.stages[-1]
    assert isinstance(caffe_model, CaffeModel)
    assert caffe_model.getWorkers() == 2 and caffe_model.getRounds() == 7

    test_df.write.parquet(str(tmp_path / "test.parquet"))
    saved = tmp_path / "lenet-pipeline"
    fitted.write().overwrite().save(saved.as_uri())  # a file:// URI, through Spark's writers
    [stage] = [p for p in (saved / "stages").iterdir() if "CaffeModel" in p.name]
    assert sorted(p.name for p in stage.iterdir() if not p.name.startswith(".")) == [
        "data", "metadata"]
    # the .caffemodel it holds is Caffe's own: exported, a plain CaffeNet reads it
    from sparknet.ml.persistence import export_files

    weights = export_files(spark, str(stage), tmp_path / "export")["weights.caffemodel"]
    net = CaffeNet(lenet.solver(32))
    net.load_weights(weights)
    assert net.get_weights() == caffe_model.weights

    script = textwrap.dedent(f"""
        from pyspark.sql import SparkSession
        from pyspark.ml import PipelineModel
        spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
                 .getOrCreate())
        model = PipelineModel.load({str(saved)!r})
        df = spark.read.parquet({str(tmp_path / "test.parquet")!r})
        model.transform(df).select("id", "prediction", "probability").write.parquet(
            {str(tmp_path / "out.parquet")!r})
        spark.stop()
    """)
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    here = {i: (r.prediction, r.probability.toArray().tolist()) for i, r in scored.items()}
    there = {r.id: (r.prediction, r.probability.toArray().tolist())
             for r in spark.read.parquet(str(tmp_path / "out.parquet")).collect()}
    assert there == here  # exactly the same numbers


def test_a_caffe_model_saves_and_loads_alone_with_its_params_and_weights(fitted, tmp_path):
    from sparknet.ml import CaffeModel

    model = fitted.stages[-1]
    model.write().save(str(tmp_path / "m"))
    again = CaffeModel.load(str(tmp_path / "m"))
    assert again.uid == model.uid
    assert again.weights == model.weights
    assert again.getSolver() == model.getSolver()
    assert again.getFeaturesCol() == "features" and again.getSyncInterval() == 25
    with pytest.raises(Exception, match="already exists"):
        model.write().save(str(tmp_path / "m"))  # Spark's rule: overwrite() to replace


def test_s3a_without_sparks_connector_is_a_clear_error_before_anything_is_written(fitted):
    with pytest.raises(ValueError, match="s3a://bucket/m: Spark has no S3A filesystem"):
        fitted.stages[-1].write().save("s3a://bucket/m")


# -- (3) the UDF, and bad Params ------------------------------------------------------------

def test_caffe_udf_agrees_with_transform_in_select_and_sql(spark, frames, fitted, scored):
    from pyspark.ml.functions import vector_to_array

    from sparknet.ml import caffe_udf

    _, test_df = frames
    model = fitted.stages[-1]
    scaled = fitted.stages[0].transform(test_df)
    scores = caffe_udf(model, batch_size=50)
    got = scaled.select("id", scores(vector_to_array("features", "float32")).alias("ip2"))
    mine = {r.id: np.asarray(r.ip2) for r in got.collect()}
    assert all(v.shape == (10,) for v in mine.values())
    theirs = {i: (r.prediction, r.probability.toArray(), r.rawPrediction.toArray())
              for i, r in scored.items()}
    assert set(mine) == set(theirs)
    for i, (pred, prob, raw) in theirs.items():
        assert pred == float(np.argmax(mine[i]))
        # the blob, as is: batches of 50 here and of the net's size there run other GEMM
        # shapes, whose sums round apart by a few float32 ulps of the row's largest score
        # (up to about 4 seen: 1.1e-6 on a score of 0.04 beside one of 8.5)
        tol = 16 * float(np.spacing(np.float32(np.abs(raw).max())))
        np.testing.assert_allclose(raw, mine[i], rtol=0, atol=tol)
        # so each probability differs by up to twice that, relatively (its score's error
        # and the normaliser's)
        e = np.exp(mine[i] - mine[i].max())
        np.testing.assert_allclose(prob, e / e.sum(), rtol=2 * tol, atol=1e-9)
    # registered for SQL; several blobs give a struct with one field per blob
    spark.udf.register("lenet_ip2", scores)
    scaled.select("id", vector_to_array("features", "float32").alias("f")) \
        .createOrReplaceTempView("digits_test")
    sql = {r.id: np.asarray(r.s) for r in
           spark.sql("SELECT id, lenet_ip2(f) AS s FROM digits_test").collect()}
    assert all(np.array_equal(sql[i], mine[i]) for i in mine)
    both = caffe_udf(model, blob=["ip1", "ip2"])
    feats = scaled.select(both(vector_to_array("features")).alias("b")).select("b.*")
    assert feats.columns == ["ip1", "ip2"]
    first = feats.first()
    assert len(first.ip1) == 500 and len(first.ip2) == 10
    # every UDF of a model (and its transform) reads the model's one broadcast of its weights
    assert both._sparknet_broadcast is scores._sparknet_broadcast is model._broadcast()
    # a (solver, weights) pair works as well as a model
    pair = caffe_udf((lenet.solver(32), model.weights), batch_size=50)
    again = scaled.select("id", pair(vector_to_array("features")).alias("s")).collect()
    assert all(np.array_equal(np.asarray(r.s), mine[r.id]) for r in again)


def _no_job_runs(spark, fn):
    """Call ``fn`` (which must raise) and return the exception, checking no Spark job ran."""
    sc = spark.sparkContext
    group = f"bad-params-{os.getpid()}-{id(fn)}"
    sc.setJobGroup(group, "must not run")
    try:
        with pytest.raises(Exception) as info:
            fn()
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    assert sc.statusTracker().getJobIdsForGroup(group) == []
    return info.value


def test_bad_params_are_refused_before_any_spark_job_naming_column_and_size(spark, frames):
    from pyspark.sql import functions as F

    from sparknet.ml import CaffeEstimator

    train_df, _ = frames
    est = CaffeEstimator(solver=lenet.solver(16), featuresCol="pixels", **FAST)
    err = _no_job_runs(spark, lambda: est.copy({est.featuresCol: "pixles"}).fit(train_df))
    assert isinstance(err, DataError) and "column 'pixles'" in str(err)
    assert "columns: id, pixels, label" in str(err)
    short = train_df.select("label", F.col("pixels").alias(
        "pixels", metadata={"ml_attr": {"num_attrs": 64}}))
    err = _no_job_runs(spark, lambda: est.fit(short))
    assert "column 'pixels' holds vectors of size 64" in str(err)
    assert "takes (1, 28, 28) per example (784 values)" in str(err)
    strings = train_df.withColumn("label", F.col("label").cast("string"))
    err = _no_job_runs(spark, lambda: est.fit(strings))
    assert "label column 'label' holds string values" in str(err)
    err = _no_job_runs(spark, lambda: est.copy({est.workers: 0}).fit(train_df))
    assert isinstance(err, ParamError) and "Param workers must be >= 1, got 0" in str(err)
    err = _no_job_runs(spark, lambda: est.copy({est.patience: 2}).fit(train_df))
    assert "patience needs validation data" in str(err)
    with pytest.raises(TypeError):
        CaffeEstimator(solver=lenet.solver(16), rounds="many")


# -- (4) tuning -----------------------------------------------------------------------------------

def test_train_validation_split_over_two_learning_rates_picks_the_better(spark, frames):
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.ml.tuning import ParamGridBuilder, TrainValidationSplit

    from sparknet.ml import CaffeEstimator

    train_df, _ = frames
    scaled = train_df.withColumn("features", train_df.pixels)
    est = CaffeEstimator(solver=lenet.solver(32), inputScale=1 / 255, workers=2,
                         syncInterval=25, rounds=3, testInterval=0)
    grid = ParamGridBuilder().addGrid(est.baseLr, [1e-6, 0.01]).build()
    tvs = TrainValidationSplit(estimator=est, estimatorParamMaps=grid, trainRatio=0.75,
                               evaluator=MulticlassClassificationEvaluator(
                                   metricName="accuracy"), seed=3)
    tuned = tvs.fit(scaled)
    low, high = tuned.validationMetrics
    assert high > 0.9 and low < high
    assert tuned.bestModel.getBaseLr() == 0.01


# -- (8) early stopping ---------------------------------------------------------------------------

def test_patience_stops_training_when_the_validation_metric_stops_improving(spark, frames):
    from sparknet.ml import CaffeEstimator

    train_df, _ = frames
    est = CaffeEstimator(solver=lenet.solver(32), featuresCol="pixels", inputScale=1 / 255,
                         workers=2, syncInterval=5, rounds=30, testInterval=1,
                         validationFraction=0.2, patience=2, baseLr=0.0)
    model = est.fit(train_df)  # nothing learns at a learning rate of 0: never improves
    assert model.stoppedRound == 3
    assert [h["round"] for h in model.history] == [1, 2, 3]
    assert all("accuracy" in h["test"] for h in model.history)
    learning = est.copy({est.baseLr: 0.01, est.rounds: 3}).fit(train_df)
    assert learning.stoppedRound is None and len(learning.history) == 3


# -- pyspark.ml's conventions: keyword constructors, a setter and a getter per Param ----------

#: A value for every Param, and how its getter gives it back.
def _param_values():
    from sparknet.ml._params import solver_text
    from sparknet.spark import Outer, TauSchedule

    solver = lenet.solver(16)
    nesterov, post_local = Outer.nesterov(lr=0.7, momentum=0.9), TauSchedule.post_local(
        rounds=3, tau=1)
    return {"outer": (nesterov, nesterov), "tauSchedule": (post_local, post_local),
            "solver": (solver, solver_text(solver)), "featuresCol": ("f", "f"),
            "labelCol": ("y", "y"), "predictionCol": ("p", "p"), "probabilityCol": ("q", "q"),
            "rawPredictionCol": ("r", "r"), "inputCols": ({"hint": "aux"}, {"hint": "aux"}),
            "outputBlob": ("ip1", "ip1"), "workers": (3, 3), "syncInterval": (7, 7),
            "rounds": (4, 4), "testInterval": (2, 2), "batchSize": (8, 8), "baseLr": (0.5, 0.5),
            "momentum": (0.8, 0.8), "weightDecay": (0.01, 0.01), "seed": (11, 11),
            "inputScale": (0.25, 0.25), "validationIndicatorCol": ("v", "v"),
            "validationFraction": (0.1, 0.1), "patience": (3, 3),
            "stoppingMetric": ("loss", "loss")}


def _getter(stage, name):
    return getattr(stage, "get" + name[0].upper() + name[1:])


def test_every_param_is_a_constructor_keyword_with_its_default_and_has_a_setter():
    import inspect

    from sparknet.ml import CaffeEstimator

    est = CaffeEstimator()
    keywords = inspect.signature(CaffeEstimator.__init__).parameters
    values = _param_values()
    assert {p.name for p in est.params} == set(keywords) - {"self"} == set(values)
    defaults = est.extractParamMap()  # nothing set yet: the defaults
    for p in est.params:  # the signature documents the defaults the Params have
        # None for a default that is not a plain value: inputCols' (a dict), outer's and
        # tauSchedule's (their description as a dict); and seed's, 0 (train()'s own, checked
        # below), which the signature leaves None
        plain = p.name not in ("seed", "inputCols", "outer", "tauSchedule")
        assert keywords[p.name].default == (defaults.get(p) if plain else None), p.name
    assert defaults[est.seed] == 0
    for name, (value, got) in values.items():
        setter = getattr(est, "set" + name[0].upper() + name[1:])
        assert setter(value) is est, name
        assert _getter(est, name)() == got, name
    again = CaffeEstimator(**{name: value for name, (value, _) in values.items()})
    assert {n: _getter(again, n)() for n in values} == {n: g for n, (_, g) in values.items()}
    assert again.setParams(rounds=5, workers=None).getRounds() == 5  # None: left as it was
    assert again.getWorkers() == 3
    with pytest.raises(TypeError, match="unexpected keyword argument 'rouns'"):
        CaffeEstimator(rouns=3)
    with pytest.raises(TypeError, match=r"CaffeEstimator.setParams\(\) got an unexpected "
                       "keyword argument 'rouns'"):
        est.setParams(rouns=3)
    with pytest.raises(TypeError, match="forces keyword arguments"):
        CaffeEstimator(lenet.solver(16))


def test_a_model_has_setters_for_what_transform_produces_and_warns_on_training_params():
    from sparknet.ml import CaffeModel

    values = _param_values()
    model = CaffeModel(solver=lenet.solver(16), featuresCol="pixels", rawPredictionCol="")
    assert model.getFeaturesCol() == "pixels" and model.getRawPredictionCol() == ""
    scoring = ("featuresCol", "predictionCol", "probabilityCol", "rawPredictionCol",
               "inputCols", "outputBlob", "batchSize", "inputScale")
    for name in scoring:
        value, got = values[name]
        assert getattr(model, "set" + name[0].upper() + name[1:])(value) is model
        assert _getter(model, name)() == got
    assert not hasattr(model, "setRounds") and not hasattr(model, "setSolver")
    with pytest.warns(DeprecationWarning, match=r"CaffeModel\(rounds=\.\.\.\): training Params "
                      "are set on CaffeEstimator"):
        old = CaffeModel(solver=lenet.solver(16), rounds=3)
    assert old.getRounds() == 3  # the old spelling still works
    with pytest.raises(TypeError, match="unexpected keyword argument 'rounds'"):
        model.setParams(rounds=3)


def test_weights_of_a_model_are_a_weight_collection(fitted):
    assert isinstance(fitted.stages[-1].weights, WeightCollection)


# -- (8) several inputs -------------------------------------------------------------------------

def two_input_solver(batch: int = 16):
    from sparknet.dsl import (
        AccuracyLayer,
        ConcatLayer,
        FlattenLayer,
        InnerProductLayer,
        InputLayer,
        LrPolicy,
        NetParam,
        Phase,
        SoftmaxWithLoss,
        SolverParam,
    )

    net = NetParam(
        "TwoInputs",
        InputLayer("data", shape=(batch, 1, 28, 28)),
        InputLayer("hint", shape=(batch, 4)),
        InputLayer("label", shape=(batch, 1)),
        FlattenLayer("flat", ["data"]),
        ConcatLayer("both", ["flat", "hint"]),
        InnerProductLayer("ip", ["both"], num_output=10, weight_filler="xavier"),
        AccuracyLayer("accuracy", ["ip", "label"], include=Phase.TEST),
        SoftmaxWithLoss("loss", ["ip", "label"]))
    return SolverParam(net, base_lr=0.05, momentum=0.9, lr_policy=LrPolicy.fixed(),
                       random_seed=1)


def test_input_cols_feed_a_second_input_blob_in_training_and_scoring(spark):
    from pyspark.sql import functions as F

    from sparknet.ml import CaffeEstimator
    from sparknet.spark import train

    x, y = load_digits("train")
    rows = [(x[i].ravel().tolist(), [float(y[i] % 2), 0.0, 1.0, float(y[i] > 4)], float(y[i]))
            for i in range(300)]
    df = spark.createDataFrame(rows, "pixels array<float>, aux array<float>, label double")
    df = df.repartition(2).cache()
    est = CaffeEstimator(solver=two_input_solver(), featuresCol="pixels",
                         inputCols={"hint": "aux"}, workers=2, syncInterval=5, rounds=1,
                         testInterval=0, seed=5)
    model = est.fit(df)
    by_blob = df.select(F.col("pixels").alias("data"), F.col("aux").alias("hint"), "label")
    direct = train(spark, two_input_solver(), by_blob, workers=2, sync_interval=5, rounds=1,
                   test_interval=0, seed=5, progress=False)
    assert model.weights == direct.weights  # the column fed the blob it was mapped to
    scored = model.transform(df).select("prediction").collect()
    assert len(scored) == 300
    with pytest.raises(ValueError, match="inputCols: 'hnt' is not an input blob of the net "
                       r"\(data, hint, label\)"):
        est.copy({est.inputCols: {"hnt": "aux"}}).fit(df)
    with pytest.raises(ValueError, match="input blob 'hint' has no column"):
        est.copy({est.inputCols: {}}).fit(df)


def test_a_model_reads_its_caffemodel_from_s3(s3, monkeypatch, tmp_path):
    from sparknet.ml import CaffeModel

    solver = lenet.solver(batch_size=8)
    trained = CaffeNet(solver)
    trained.train(3, [{"data": np.full((8, 1, 28, 28), 0.5, np.float32),
                       "label": np.arange(8, dtype=np.float32)}] * 3)
    trained.save_weights(tmp_path / "w.caffemodel")
    bucket = s3.bucket()
    s3.client().put_object(Bucket=bucket, Key="models/w.caffemodel",
                           Body=(tmp_path / "w.caffemodel").read_bytes())
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint_url)  # the default S3Options' endpoint
    model = CaffeModel(solver=solver, weights=f"s3://{bucket}/models/w.caffemodel")
    assert model.weights == trained.get_weights()
    assert model.weights != CaffeNet(solver).get_weights()
    with pytest.raises(FileNotFoundError, match="missing.caffemodel"):
        CaffeModel(solver=solver, weights=f"s3://{bucket}/models/missing.caffemodel")
