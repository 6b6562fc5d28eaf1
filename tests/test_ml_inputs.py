"""sparknet.ml input forms: every form of featuresCol trains to exactly the weights of arrays.

ML vectors, array<float>, array<double>, PNG bytes, raw pixel bytes and the
struct of Spark's image data source, all of the same 400 digits in the same
order, scaled on the workers by ``inputScale``; and the fitted model scores a
Parquet file of image bytes back into Parquet.
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


def test_every_input_form_trains_to_the_weights_of_the_equivalent_arrays(
        spark, pixels, tmp_path):
    from PIL import Image
    from pyspark.ml.linalg import Vectors
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    x8, y = pixels
    scaled = x8.astype(np.float32) * np.float32(SCALE)  # what inputScale computes
    idx = spark.sparkContext.parallelize(range(N), 2)

    def png(i):
        buf = io.BytesIO()
        Image.fromarray(x8[i, 0]).save(buf, "PNG")
        return bytearray(buf.getvalue())

    arrays = fit(spark.createDataFrame(idx.map(lambda i: (scaled[i].ravel().tolist(),
                                                          float(y[i]))),
                                       "f array<float>, label double")).weights
    doubles = spark.createDataFrame(idx.map(lambda i: (scaled[i].ravel().astype(float).tolist(),
                                                       float(y[i]))),
                                    "f array<double>, label double")
    assert fit(doubles).weights == arrays
    vectors = spark.createDataFrame(idx.map(lambda i: (Vectors.dense(scaled[i].ravel()
                                                                     .astype(float)),
                                                       float(y[i]))), ["f", "label"])
    assert fit(vectors).weights == arrays
    encoded = spark.createDataFrame(idx.map(lambda i: (png(i), float(y[i]))),
                                    "f binary, label double")
    assert fit(encoded, inputScale=SCALE).weights == arrays
    raw = spark.createDataFrame(idx.map(lambda i: (bytearray(x8[i].tobytes()), float(y[i]))),
                                "f binary, label double")
    assert fit(raw, inputScale=SCALE).weights == arrays

    # Spark's image data source: its own file order, so compare with arrays in that order
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

    same_order = images.select(plain("f").alias("f"), "label")
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
