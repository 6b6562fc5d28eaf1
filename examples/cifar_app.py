"""SparkNet's CifarApp: the CIFAR-10 "quick" net trained on Spark.

The net is loaded from caffe/models/cifar10_quick/train_val.prototxt with
ProtoLoader, its data layers are replaced by inputs sparknet feeds, and the
solver comes from caffe/models/cifar10_quick/solver.prototxt. The data are
the CIFAR-10 binary batches (data_batch_1.bin ... data_batch_5.bin,
test_batch.bin) in DATA_DIR, from https://www.cs.toronto.edu/~kriz/cifar.html
("CIFAR-10 binary version"). As in SparkNet, the training images are
shuffled, the mean image is computed on the workers and subtracted from every
image, and the weights are averaged every --sync-interval steps (10).

examples:
  python examples/cifar_app.py ~/data/cifar-10-batches-bin --workers 2
  spark-submit --master spark://host:7077 examples/cifar_app.py \\
      s3://bucket/cifar-10-batches-bin --workers 8 --rounds 500
"""
from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from sparknet import frontend

log = logging.getLogger("sparknet.examples.cifar")
ROOT = Path(__file__).resolve().parent.parent  # the shipped prototxt are under caffe/models/

def build_parser() -> argparse.ArgumentParser:
    """The app's options, with its docstring as ``--help``."""
    p = frontend.parser(__doc__, prog="cifar_app.py")
    p.add_argument("data", metavar="DATA_DIR",
                   help="folder (or s3://, hdfs:// URI) holding the CIFAR-10 binary batches")
    frontend.add_prototxt_options(p, "cifar10_quick", ROOT)
    p.add_argument("--batch-size", type=frontend.positive_int, metavar="N", default=100,
                   help="training minibatch per worker (default 100, as SparkNet)")
    p.add_argument("--test-batch-size", type=frontend.positive_int, metavar="N", default=100,
                   help="test minibatch (default 100)")
    p.add_argument("--train-files", nargs="+", metavar="FILE",
                   help="training batch files (default data_batch_1.bin ... data_batch_5.bin)")
    frontend.add_spark_options(p)
    frontend.add_training_options(p, sync_interval=10, rounds=100, test_interval=5,
                                  output="runs/cifar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Train CIFAR-10 quick on the binary batches; print the last test and the files written."""
    args = build_parser().parse_args(argv)
    frontend.check_training_options(args)
    frontend.check_uri(f"cifar10:{args.data}", args.data)
    frontend.check_files(net=args.net, solver=args.solver)

    from sparknet.data import cifar10_rdd, compute_mean, write_mean
    from sparknet.proto import ProtoLoader
    from sparknet.spark import train

    # The net and solver as SparkNet's CifarApp built them, fed by sparknet.
    net = ProtoLoader.load_net_prototxt(args.net)
    net = ProtoLoader.replace_data_layers(net, args.batch_size, args.test_batch_size, 3, 32, 32)
    solver = ProtoLoader.load_solver_prototxt_with_net(args.solver, net)
    solver = frontend.apply_solver_options(solver, args)

    spark = frontend.spark_session("sparknet-cifar", args.master, args.workers,
                                   args.driver_memory)
    try:
        train_rdd = cifar10_rdd(spark, args.data, "train", shuffle_seed=args.seed,
                                num_partitions=args.workers, files=args.train_files).cache()
        test_rdd = cifar10_rdd(spark, args.data, "test", shuffle_seed=None,
                               num_partitions=args.workers)
        log.info("computing the mean image on the workers")
        mean = compute_mean(train_rdd)
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        mean_file = out / "mean.binaryproto"
        write_mean(mean_file, mean)

        def subtract_mean(example: dict) -> dict:  # on the workers, once per image
            return {**example, "data": example["data"] - mean}

        log.info("CIFAR-10 quick: %d workers, tau %d, %d rounds, batch %d", args.workers,
                 args.sync_interval, args.rounds, args.batch_size)
        t0 = time.perf_counter()
        result = train(spark, solver, train_rdd, test_data=test_rdd, preprocess=subtract_mean,
                       **frontend.training_arguments(args))
        seconds = time.perf_counter() - t0
        weights = out / "cifar10_quick.caffemodel"
        result.save(weights)
    finally:
        spark.stop()

    return frontend.report_training(
        f"trained CIFAR-10 quick in {seconds:.1f} s ({len(result.history)} rounds)", result,
        {"weights": weights, "mean image": mean_file})


if __name__ == "__main__":
    frontend.run(main)
