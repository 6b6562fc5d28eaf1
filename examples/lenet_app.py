"""Train LeNet on Spark with parameter averaging: the bundled digits, or MNIST.

LeNet is defined in sparknet's Python DSL (sparknet.models.lenet). Each round
the driver broadcasts the weights, each of --workers Spark workers runs
--sync-interval steps of Caffe's solver on its own partition, and the driver
averages the results. Without --mnist the bundled handwritten digits are used
(1437 training and 360 test images, nothing to download).

examples:
  python examples/lenet_app.py --workers 2
  spark-submit examples/lenet_app.py --workers 2 --rounds 10
  python examples/lenet_app.py --mnist ~/data/mnist --rounds 200 --workers 4
"""
from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import appkit

log = logging.getLogger("sparknet.examples.lenet")


def build_parser() -> argparse.ArgumentParser:
    p = appkit.parser(__doc__, prog="lenet_app.py")
    p.add_argument("--mnist", metavar="DIR",
                   help="folder (or s3://, hdfs:// URI) with the four MNIST IDX files, "
                   "gzipped or not (default: the bundled digits)")
    p.add_argument("--batch-size", type=appkit.positive_int, metavar="N", default=64,
                   help="minibatch size per worker (default 64)")
    appkit.add_spark_options(p)
    appkit.add_training_options(p, sync_interval=50, rounds=12, test_interval=3,
                                output="runs/lenet")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    appkit.check_training_options(args)
    if args.mnist and "://" not in args.mnist and not Path(args.mnist).is_dir():
        raise appkit.UsageError(f"--mnist {args.mnist}: no such folder")

    from sparknet.data import digits_rdd, mnist_rdd
    from sparknet.models import lenet
    from sparknet.spark import train

    spark = appkit.spark_session("sparknet-lenet", args.master, args.workers,
                                 args.driver_memory)
    try:
        if args.mnist:
            train_rdd = mnist_rdd(spark, args.mnist, "train", num_partitions=args.workers)
            test_rdd = mnist_rdd(spark, args.mnist, "test", num_partitions=args.workers)
            source = f"MNIST ({args.mnist})"
        else:
            train_rdd = digits_rdd(spark, "train", num_partitions=args.workers)
            test_rdd = digits_rdd(spark, "test", num_partitions=args.workers)
            source = "the bundled digits"
        solver = appkit.apply_solver_options(lenet.solver(batch_size=args.batch_size), args)
        log.info("LeNet on %s: %d workers, tau %d, %d rounds, batch %d", source, args.workers,
                 args.sync_interval, args.rounds, args.batch_size)
        t0 = time.perf_counter()
        result = train(spark, solver, train_rdd, test_data=test_rdd, workers=args.workers,
                       sync_interval=args.sync_interval, rounds=args.rounds,
                       test_interval=args.test_interval, output_dir=args.output,
                       checkpoint_dir=args.checkpoint_dir, resume=args.resume, seed=args.seed)
        seconds = time.perf_counter() - t0
        weights = Path(args.output) / "lenet.caffemodel"
        result.save(weights)
    finally:
        spark.stop()

    return appkit.report_training(
        f"trained LeNet on {source} in {seconds:.1f} s ({len(result.history)} rounds)", result,
        {"weights": weights})


if __name__ == "__main__":
    appkit.run(main)
