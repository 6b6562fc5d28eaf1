"""Batch inference throughput: sparknet.ml.caffe_udf vs predict() vs a plain forward loop.

LeNet (forward passes of 64 images, TEST phase, 1 BLAS thread per worker) over
the bundled digits replicated to --images rows of ``array<float>`` (784 values),
cached in Spark memory, 2 partitions on local[2]. In one Spark session:

* **caffe_udf**: ``df.select(udf("data"))`` written to Spark's ``noop`` sink
  (every row computed, nothing stored): the Arrow-batched pandas UDF;
* **predict**: ``sparknet.spark.predict(spark, solver, weights, df, ["ip2"])``,
  the same sink;
* **plain loop**: ``CaffeNet.forward`` over the same images in batches of 64 in
  this process, no Spark (what one worker could do at best).

Runs alternate and the best of --repeats is kept. Figures: images/s of each,
caffe_udf / predict (target >= 1), and caffe_udf per worker / plain loop.

Usage: ``python bench/inference.py [--images 40000] [--repeats 3] [--smoke]``

``--smoke``: the same paths and lines on 256 images, one repeat (a test, not a
measurement).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

BATCH = 64
WORKERS = 2


def plain_loop(x: np.ndarray, weights) -> float:
    from sparknet.engine import CaffeNet, set_blas_threads
    from sparknet.models import lenet

    set_blas_threads(1)
    net = CaffeNet(lenet.solver(BATCH))
    net.set_weights(weights)
    net.forward({"data": x[:BATCH]}, ["ip2"])  # warm up
    t = time.perf_counter()
    for i in range(0, len(x), BATCH):
        net.forward({"data": x[i:i + BATCH]}, ["ip2"])
    return len(x) / (time.perf_counter() - t)


def timed(frame) -> float:
    t = time.perf_counter()
    frame.write.format("noop").mode("overwrite").save()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=40000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true",
                    help="256 images, 1 repeat: a test of the paths, not a measurement")
    args = ap.parse_args(argv)
    if args.smoke:
        args.images, args.repeats = 4 * BATCH, 1
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    from pyspark.sql import SparkSession

    from sparknet.data import load_digits
    from sparknet.data.rdd import to_dataframe
    from sparknet.engine import CaffeNet
    from sparknet.ml import caffe_udf
    from sparknet.models import lenet
    from sparknet.spark import predict

    x, y = load_digits("all")
    reps = -(-args.images // len(x))
    x = np.concatenate([x] * reps)[:args.images]
    y = np.concatenate([y] * reps)[:args.images]
    weights = CaffeNet(lenet.solver(BATCH)).get_weights()  # throughput does not need training

    spark = (SparkSession.builder.master(f"local[{WORKERS}]")
             .appName("sparknet-bench-inference").config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    try:
        df = to_dataframe(spark, x, y, num_partitions=WORKERS).cache()
        print(f"{df.count()} images cached in {df.rdd.getNumPartitions()} partitions")
        solver = lenet.solver(BATCH)
        udf = caffe_udf((solver, weights), "ip2", batch_size=BATCH, blas_threads=1)
        best = {"udf": 0.0, "predict": 0.0, "plain": 0.0}
        timed(df.select(udf("data")))  # warm up: nets built, weights read, workers started
        timed(predict(spark, solver, weights, df, ["ip2"], batch_size=BATCH, blas_threads=1))
        for rep in range(args.repeats):
            ips = {
                "udf": len(x) / timed(df.select(udf("data"))),
                "predict": len(x) / timed(predict(spark, solver, weights, df, ["ip2"],
                                                  batch_size=BATCH, blas_threads=1)),
                "plain": plain_loop(x, weights),
            }
            for k, v in ips.items():
                best[k] = max(best[k], v)
            print(f"repeat {rep + 1} (load average {os.getloadavg()[0]:.1f}): "
                  + ", ".join(f"{k} {v:.0f} img/s" for k, v in ips.items()), flush=True)
    finally:
        spark.stop()
    print(f"caffe_udf over a DataFrame ({WORKERS} workers): {best['udf']:.0f} images/s")
    print(f"predict() on the same DataFrame: {best['predict']:.0f} images/s")
    print(f"plain CaffeNet.forward loop, one process: {best['plain']:.0f} images/s")
    print(f"caffe_udf per worker / plain loop: {best['udf'] / WORKERS / best['plain']:.2f}x")
    print(f"caffe_udf / predict(): {best['udf'] / best['predict']:.2f}x (target >= 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
