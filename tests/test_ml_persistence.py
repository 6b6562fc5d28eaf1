"""Saving and loading sparknet.ml stages through Spark's own readers and writers.

The model of ``tests/fixtures/caffemodel-format1`` was saved by the code before
format 2 (see ``caffemodel-format1.md``): a tiny net (one InnerProduct of 16
inputs into 3 classes), so these tests need no training. Real Spark (the suite's
local session), real Caffe.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from sparknet.engine import CaffeNet

pytestmark = pytest.mark.timeout(600)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "caffemodel-format1"


@pytest.fixture(scope="module")
def old_model(spark):
    from sparknet.ml import CaffeModel

    return CaffeModel.load(str(FIXTURE))


def rows_of(spark, n: int = 6):
    """``n`` rows: ``id`` and ``pixels`` (16 values, array<float>), and the same as arrays."""
    x = np.random.default_rng(1).random((n, 1, 4, 4), dtype=np.float32)
    df = spark.createDataFrame([(i, x[i].ravel().tolist()) for i in range(n)],
                               "id int, pixels array<float>")
    return df, x


def test_a_model_saved_in_format_1_loads_with_its_params_and_weights_and_scores(
        spark, old_model):
    """Models saved before Spark-only persistence still load, and score as the engine does."""
    engine = CaffeNet(old_model._effective_solver())
    engine.load_weights(FIXTURE / "weights.caffemodel")  # the file itself, read by Caffe
    assert old_model.weights == engine.get_weights()
    assert old_model.weights != CaffeNet(old_model._effective_solver()).get_weights()
    assert old_model.uid == "CaffeModel_8193cdfdd8ea"
    assert (old_model.getFeaturesCol(), old_model.getInputScale(), old_model.getOutputBlob()) \
        == ("pixels", 0.5, "ip")
    assert old_model.getRawPredictionCol() == "rawPrediction"  # a Param format 1 did not have

    df, x = rows_of(spark)
    got = {r.id: r for r in old_model.transform(df).collect()}
    assert sorted(got) == list(range(6))
    raw = engine.forward({"data": x * np.float32(0.5)}, ["ip"])["ip"].astype(np.float64)
    for i, r in got.items():  # rawPrediction: the output blob; probability: its softmax
        np.testing.assert_allclose(r.rawPrediction.toArray(), raw[i], rtol=1e-6, atol=1e-7)
        e = np.exp(r.rawPrediction.toArray() - r.rawPrediction.toArray().max())
        np.testing.assert_allclose(r.probability.toArray(), e / e.sum(), rtol=1e-12)
        assert r.prediction == float(np.argmax(r.rawPrediction.toArray()))


def test_format_2_round_trips_without_ever_asking_for_a_spark_context(
        spark, old_model, tmp_path, monkeypatch):
    """A Spark Connect client has no SparkContext (nor JVM): saving and loading need neither."""
    from pyspark.sql import SparkSession

    from sparknet.ml import CaffeEstimator, CaffeModel
    from sparknet.ml.persistence import FORMAT

    def no_context(self):
        raise AssertionError("persistence asked for SparkSession.sparkContext")

    monkeypatch.setattr(SparkSession, "sparkContext", property(no_context))
    path = str(tmp_path / "m")
    old_model.write().save(path)
    again = CaffeModel.load(path)
    est_path = str(tmp_path / "est")
    CaffeEstimator(solver=old_model.getSolver(), rounds=3).setBatchSize(2).save(est_path)
    est = CaffeEstimator.load(est_path)
    monkeypatch.undo()

    assert FORMAT == 2 and (tmp_path / "m" / "data").is_dir()
    assert not (tmp_path / "m" / "weights.caffemodel").exists()  # no plain files any more
    assert again.uid == old_model.uid and again.weights == old_model.weights
    assert again.getSolver() == old_model.getSolver()
    assert again.getInputScale() == 0.5 and again.getOutputBlob() == "ip"
    assert (est.getRounds(), est.getBatchSize()) == (3, 2)
    with pytest.raises(Exception, match="already exists"):
        old_model.write().save(path)  # Spark's rule: overwrite() to replace
    old_model.write().overwrite().save(path)
    assert CaffeModel.load(path).weights == old_model.weights


def test_export_files_gives_what_caffe_reads(spark, old_model, tmp_path):
    from sparknet.ml.persistence import export_files
    from sparknet.proto import ProtoLoader

    old_model.write().save(str(tmp_path / "m"))
    files = export_files(spark, str(tmp_path / "m"), tmp_path / "caffe")
    assert sorted(files) == ["net.prototxt", "solver.prototxt", "weights.caffemodel"]
    net = CaffeNet(ProtoLoader.load_solver_prototxt_with_net(
        files["solver.prototxt"], ProtoLoader.load_net_prototxt(files["net.prototxt"])))
    net.load_weights(files["weights.caffemodel"])
    assert net.get_weights() == old_model.weights
    # the format-1 fixture exports the same files it holds
    old = export_files(spark, str(FIXTURE), tmp_path / "old")
    assert old["weights.caffemodel"].read_bytes() == (FIXTURE / "weights.caffemodel").read_bytes()


def replace_file(spark, model_dir: Path, name: str, data: bytes) -> None:
    """Put ``data`` in place of the file ``name`` in a format-2 model's ``data/`` table."""
    from sparknet.ml.persistence import SCHEMA

    rows = [(r.file, r.offset, bytes(r.bytes))
            for r in spark.read.parquet(str(model_dir / "data")).collect() if r.file != name]
    spark.createDataFrame(rows + [(name, 0, data)], SCHEMA).write.mode("overwrite").parquet(
        str(model_dir / "data.new"))
    shutil.rmtree(model_dir / "data")
    (model_dir / "data.new").rename(model_dir / "data")


@pytest.mark.parametrize("fmt", [1, 2])
def test_files_that_are_not_this_models_are_refused_naming_them(spark, old_model, tmp_path,
                                                                 fmt):
    from sparknet.ml import CaffeModel, ModelDirectoryError

    mine = tmp_path / "mine"
    if fmt == 1:
        shutil.copytree(FIXTURE, mine)
        where = {n: f"{mine}/{n}" for n in ("weights.caffemodel", "net.prototxt")}

        def put(name: str, data: bytes) -> None:
            (mine / name).write_bytes(data)
    else:
        old_model.write().save(str(mine))
        where = {n: f"{mine}/data ({n})" for n in ("weights.caffemodel", "net.prototxt")}

        def put(name: str, data: bytes) -> None:
            replace_file(spark, mine, name, data)
    original = (FIXTURE / "weights.caffemodel").read_bytes()
    untrained = tmp_path / "untrained.caffemodel"
    CaffeNet(old_model._effective_solver()).save_weights(untrained)  # same layers
    put("weights.caffemodel", untrained.read_bytes())
    with pytest.raises(ModelDirectoryError, match=re.escape(where["weights.caffemodel"]) + " is not the "
                       r"file saved with this model \(its SHA-1 differs\)"):
        CaffeModel.load(str(mine))
    put("weights.caffemodel", original)
    assert CaffeModel.load(str(mine)).weights == old_model.weights
    put("net.prototxt", b'name: "Other"\n')
    with pytest.raises(ModelDirectoryError, match=re.escape(where["net.prototxt"]) + " is another net "
                       "than the one its metadata describes"):
        CaffeModel.load(str(mine))
    put("net.prototxt", b'layer { nme: "x" }\n')
    with pytest.raises(ModelDirectoryError, match=re.escape(where["net.prototxt"]) + ":1:9: field 'nme' "
                       "is unknown"):
        CaffeModel.load(str(mine))


def test_directories_that_hold_no_model_are_refused_naming_the_path(spark, old_model,
                                                                   tmp_path):
    from sparknet.ml import CaffeEstimator, CaffeModel, ModelDirectoryError

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelDirectoryError, match=f"{empty}: not a saved Spark ML model"):
        CaffeModel.load(str(empty))
    with pytest.raises(ModelDirectoryError, match=f"{tmp_path / 'nowhere'}: no such directory"):
        CaffeModel.load(str(tmp_path / "nowhere"))
    est_dir = tmp_path / "estimator"
    CaffeEstimator(solver=old_model.getSolver()).write().save(str(est_dir))
    with pytest.raises(ModelDirectoryError, match=f"{est_dir}: holds a "
                       r"sparknet.ml.stages.CaffeEstimator, not a sparknet.ml.stages.CaffeModel"):
        CaffeModel.load(str(est_dir))
    no_data = tmp_path / "no-data"
    shutil.copytree(FIXTURE / "metadata", no_data / "metadata")  # format 2's metadata alone
    [part] = (no_data / "metadata").glob("part-*")
    part.write_text(part.read_text().replace('"format":1', '"format":2'))
    for crc in (no_data / "metadata").glob(".part-*.crc"):
        crc.unlink()  # the text changed: Hadoop would refuse the old checksum
    with pytest.raises(ModelDirectoryError, match=f"{no_data}: data/ is missing"):
        CaffeModel.load(str(no_data))


def test_a_path_spark_cannot_write_is_refused_before_anything_is_written(spark, old_model):
    from sparknet.ml import ModelDirectoryError
    from sparknet.ml.persistence import check_output_path, filesystem

    with pytest.raises(ModelDirectoryError, match="s3a://bucket/m: Spark has no S3A filesystem"):
        old_model.write().save("s3a://bucket/m")
    with pytest.raises(ModelDirectoryError, match="nowhere://x/y: Spark cannot open a "
                       "filesystem for 'nowhere://'"):
        check_output_path(spark, "nowhere://x/y")
    with pytest.warns(DeprecationWarning, match="use check_output_path"), \
            pytest.raises(ModelDirectoryError, match="nowhere://x/y"):
        filesystem(spark, "nowhere://x/y")


def test_an_estimators_default_seed_is_the_same_in_every_process():
    """Without ``seed=``, a fit in another process (a saved pipeline refitted, a Connect
    client) draws the same minibatches: the default seed is not a salted hash."""
    import os
    import subprocess
    import sys

    code = "from sparknet.ml import CaffeEstimator; print(CaffeEstimator().getSeed())"
    seeds = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, env={**os.environ, "PYTHONHASHSEED": salt}).stdout
             for salt in ("1", "2")}
    assert seeds == {"0\n"}
