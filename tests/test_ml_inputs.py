"""Input forms: every form of a feature column gives exactly what arrays give, everywhere.

ML vectors (dense and sparse), array<float>, array<double>, PNG bytes, raw
pixel bytes and the struct of Spark's image data source, all of the same 400
digits in the same order, scaled on the workers by ``inputScale``, through
every entry point that converts a column value (training, ``transform``,
``caffe_udf``, ``predict``); and the fitted model scores a Parquet file of image
bytes back into Parquet.
"""
from __future__ import annotations

import io

import numpy as np
import pytest

from sparknet.data import load_digits
from sparknet.models import lenet

pytestmark = pytest.mark.timeout(600)

N = 400
SCALE = 1 / 255
PARAMS = {"workers": 2, "syncInterval": 5, "rounds": 1, "testInterval": 0, "seed": 7}


@pytest.fixture(scope="module")
def pixels():
    x, y = load_digits("train")
    return np.round(x[:N] * 255).astype(np.uint8), y[:N]


def fit(df, **params):
    from sparknet.ml import CaffeEstimator

    est = CaffeEstimator(solver=lenet.solver(16), featuresCol="f", **{**PARAMS, **params})
    return est.fit(df)


def _png(pixels: np.ndarray) -> bytearray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels[0]).save(buf, "PNG")
    return bytearray(buf.getvalue())


#: Every form of a feature column the README lists, as (Spark SQL type, one image's value)
#: from its uint8 pixels (1, 28, 28): the same values, as Spark would hold them.
FORMS = {
    "array<float>": ("array<float>", lambda x: x.ravel().astype(np.float32).tolist()),
    "array<double>": ("array<double>", lambda x: x.ravel().astype(float).tolist()),
    "dense vector": (None, lambda x: _vectors().dense(x.ravel().astype(float))),
    "sparse vector": (None, lambda x: _vectors().sparse(
        x.size, np.flatnonzero(x.ravel()).tolist(), x.ravel()[x.ravel() > 0].astype(float))),
    "PNG bytes": ("binary", _png),
    "raw bytes": ("binary", lambda x: bytearray(x.tobytes())),
    "image struct": ("struct<origin:string, height:int, width:int, nChannels:int, mode:int, "
                     "data:binary>",
                     lambda x: (f"mem://{x.sum()}.png", 28, 28, 1, 0, bytearray(x.tobytes()))),
}


def _vectors():
    from pyspark.ml.linalg import Vectors

    return Vectors


def _frame(spark, pixels, form):
    """``id``, ``f`` (the images in ``form``), ``label``: the same rows and partitions."""
    x8, y = pixels
    sql_type, value = FORMS[form]
    rows = spark.sparkContext.parallelize([(i, value(x8[i]), float(y[i])) for i in range(N)], 2)
    if sql_type is None:  # an ML vector: Spark infers its VectorUDT
        return spark.createDataFrame(rows, ["id", "f", "label"])
    return spark.createDataFrame(rows, f"id int, f {sql_type}, label double")


def _through_every_entry_point(spark, df):
    """Training, ``transform``, ``caffe_udf`` and ``predict`` of one feature column."""
    from pyspark.sql import functions as F

    from sparknet.ml import caffe_udf
    from sparknet.spark import predict

    model = fit(df, inputScale=SCALE)  # uint8 pixels and 0..255 numbers, scaled on the workers
    transformed = model.transform(df).orderBy("id").collect()
    udf = df.select("id", caffe_udf(model)("f").alias("ip2")).orderBy("id").collect()

    def scale(example):  # what inputScale does, for predict
        return {**example, "data": example["data"].astype(np.float32) * np.float32(SCALE)}

    predicted = predict(spark, lenet.solver(16), model, df.select("id", F.col("f").alias("data")),
                        ["ip2"], preprocess=scale).orderBy("id").collect()
    return {"weights": model.weights.flat,
            "transform": np.array([r.probability.toArray() for r in transformed]),
            "prediction": np.array([r.prediction for r in transformed]),
            "caffe_udf": np.array([r.ip2 for r in udf], np.float32),
            "predict": np.array([r.ip2 for r in predicted], np.float32)}


@pytest.fixture(scope="module")
def from_arrays(spark, pixels):
    return _through_every_entry_point(spark, _frame(spark, pixels, "array<float>"))


@pytest.mark.parametrize("form", [f for f in FORMS if f != "array<float>"])
def test_every_input_form_gives_what_arrays_give_at_every_entry_point(
        spark, pixels, from_arrays, form):
    got = _through_every_entry_point(spark, _frame(spark, pixels, form))
    for entry, expected in from_arrays.items():  # the same floats reach Caffe: exactly equal
        np.testing.assert_array_equal(got[entry], expected, err_msg=f"{form} via {entry}")
    # the UDF and predict run the same scorer over the same batches
    np.testing.assert_array_equal(got["caffe_udf"], got["predict"])


def test_spark_image_data_source_trains_like_its_pixels(spark, pixels, tmp_path):
    from PIL import Image
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    x8, y = pixels
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(N):
        Image.fromarray(x8[i, 0]).save(folder / f"{i:04d}_{int(y[i])}.png")
    images = (spark.read.format("image").load(str(folder))
              .withColumn("label", F.regexp_extract("image.origin", r"_(\d)\.png$", 1)
                          .cast("double"))
              .withColumnRenamed("image", "f"))

    @F.udf(T.ArrayType(T.FloatType()))
    def plain(img):  # the test's own reading: HWC bytes of one channel
        return (np.frombuffer(bytes(img.data), np.uint8).astype(np.float32)
                * np.float32(SCALE)).tolist()

    same_order = images.select(plain("f").alias("f"), "label")  # its own file order
    assert fit(images, inputScale=SCALE).weights == fit(same_order).weights


def test_a_model_scores_parquet_of_image_bytes_into_parquet(spark, pixels, tmp_path):
    from PIL import Image

    x8, y = pixels

    def png(i):
        buf = io.BytesIO()
        Image.fromarray(x8[i, 0]).save(buf, "PNG")
        return bytearray(buf.getvalue())

    rows = [(i, png(i), float(y[i])) for i in range(N)]
    spark.createDataFrame(rows, "id int, f binary, label double").write.parquet(
        str(tmp_path / "in.parquet"))
    df = spark.read.parquet(str(tmp_path / "in.parquet"))
    model = fit(df, inputScale=SCALE, rounds=6, syncInterval=20)
    model.transform(df).write.parquet(str(tmp_path / "out.parquet"))
    out = spark.read.parquet(str(tmp_path / "out.parquet"))
    assert out.columns == ["id", "f", "label", "rawPrediction", "probability", "prediction"]
    got = out.where("prediction = label").count() / N
    assert got > 0.8  # trained on these very images
