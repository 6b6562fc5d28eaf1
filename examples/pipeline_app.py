"""LeNet as a Spark ML pipeline: fit, save, load, transform, and (optionally) tune.

A Pipeline of a feature stage (MaxAbsScaler, pixels to [0, 1]) and a
sparknet CaffeEstimator is fitted on the bundled digits, saved with the
pipeline to --output (a local path, file://, hdfs://, or s3a:// where Spark
has the S3A connector), loaded back as a PipelineModel, and scores the test
digits, which are written as Parquet (probability and prediction next to the
inputs). With --tune, TrainValidationSplit first picks the learning rate from
--lr values.

examples:
  python examples/pipeline_app.py --output runs/pipeline
  python examples/pipeline_app.py --tune --lr 0.001 --lr 0.01 --rounds 6
"""
from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence

from sparknet import frontend

log = logging.getLogger("sparknet.examples.pipeline")


def digits_frame(spark, split: str):
    """The digits as ``id``, ``pixels`` (an ML vector of 0..255 values) and ``label``."""
    import numpy as np
    from pyspark.ml.linalg import Vectors

    from sparknet.data import load_digits

    x, y = load_digits(split)
    rows = [(i, Vectors.dense((x[i].ravel() * 255).astype(np.float64)), float(y[i]))
            for i in range(len(y))]
    return spark.createDataFrame(rows, ["id", "pixels", "label"])


def build_parser() -> argparse.ArgumentParser:
    """The app's options, with its docstring as ``--help``."""
    p = frontend.parser(__doc__, prog="pipeline_app.py")
    frontend.add_spark_options(p)
    p.add_argument("--rounds", type=frontend.positive_int, default=8,
                   help="rounds of parameter averaging (default 8)")
    p.add_argument("--sync-interval", type=frontend.positive_int, default=25,
                   help="solver steps per worker per round (default 25)")
    p.add_argument("--output", default="runs/pipeline",
                   help="where the fitted PipelineModel and the predictions go "
                   "(default runs/pipeline)")
    p.add_argument("--tune", action="store_true",
                   help="pick the learning rate with TrainValidationSplit first")
    p.add_argument("--lr", type=float, action="append", metavar="RATE",
                   help="a learning rate to try with --tune (repeat; default 0.001, 0.01)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Fit (or tune), save, load and score the pipeline; print the accuracy and paths."""
    args = build_parser().parse_args(argv)
    spark = frontend.spark_session("sparknet-pipeline", args.master, args.workers)
    try:
        from pyspark.ml import Pipeline, PipelineModel
        from pyspark.ml.evaluation import MulticlassClassificationEvaluator
        from pyspark.ml.feature import MaxAbsScaler
        from pyspark.ml.tuning import ParamGridBuilder, TrainValidationSplit

        from sparknet.ml import CaffeEstimator
        from sparknet.ml.persistence import check_output_path
        from sparknet.models import lenet

        check_output_path(spark, args.output)  # a path Spark cannot write: say so before training

        train_df, test_df = digits_frame(spark, "train"), digits_frame(spark, "test")
        scaler = MaxAbsScaler(inputCol="pixels", outputCol="features")
        est = CaffeEstimator(solver=lenet.solver(batch_size=64), featuresCol="features",
                             labelCol="label", workers=args.workers,
                             syncInterval=args.sync_interval, rounds=args.rounds)
        pipeline = Pipeline(stages=[scaler, est])
        evaluator = MulticlassClassificationEvaluator(metricName="accuracy")
        t0 = time.perf_counter()
        if args.tune:
            rates = args.lr or [0.001, 0.01]
            grid = ParamGridBuilder().addGrid(est.baseLr, rates).build()
            tvs = TrainValidationSplit(estimator=pipeline, estimatorParamMaps=grid,
                                       evaluator=evaluator, trainRatio=0.8, seed=1)
            tuned = tvs.fit(train_df)
            for rate, acc in zip(rates, tuned.validationMetrics):
                print(f"baseLr {rate:g}: validation accuracy {acc:.4f}")
            model = tuned.bestModel
            print(f"best baseLr: {model.stages[-1].getBaseLr():g}")
        else:
            model = pipeline.fit(train_df)
        print(f"fitted in {time.perf_counter() - t0:.1f} s")

        saved = f"{args.output.rstrip('/')}/model"
        model.write().overwrite().save(saved)
        again = PipelineModel.load(saved)
        scored = again.transform(test_df)
        predictions = f"{args.output.rstrip('/')}/predictions.parquet"
        scored.select("id", "label", "prediction", "probability").write.mode(
            "overwrite").parquet(predictions)
        acc = evaluator.evaluate(spark.read.parquet(predictions))
        print(f"test accuracy of the reloaded pipeline: {acc:.4f}")
        print(f"model: {saved}")
        print(f"predictions: {predictions}")
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    frontend.run(main)
