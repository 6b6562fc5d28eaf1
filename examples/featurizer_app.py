"""SparkNet's FeaturizerApp: a trained net's blobs as features, written to Parquet.

Every image of the data set goes through the net (TEST phase) on the Spark
workers with the weights of a .caffemodel; the requested blobs (--blob, one
or more; for example ip1 of LeNet or CIFAR-10 quick, fc7 of CaffeNet) become
columns of a DataFrame (ML vectors, or arrays with --arrays), next to the
image's label, which is written as a Parquet file (a folder, as Spark
writes it).

The net is a shipped model (lenet, cifar10_quick, caffenet, googlenet) or a
net prototxt, whose data layers are replaced by inputs of the data's shape.

examples:
  python examples/featurizer_app.py --weights runs/lenet/lenet.caffemodel \\
      --blob ip1 --output runs/features.parquet
  python examples/featurizer_app.py --net cifar10_quick --weights runs/cifar/cifar10_quick.caffemodel \\
      --data cifar10:~/data/cifar-10-batches-bin --split train --blob ip1 --blob prob \\
      --mean runs/cifar/mean.binaryproto --output runs/cifar_ip1.parquet
"""
from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence

from sparknet import frontend

log = logging.getLogger("sparknet.examples.featurizer")


def build_parser() -> argparse.ArgumentParser:
    """The app's options, with its docstring as ``--help``."""
    p = frontend.parser(__doc__, prog="featurizer_app.py")
    p.add_argument("--weights", required=True, metavar="CAFFEMODEL",
                   help="trained weights for the net")
    p.add_argument("--net", default="lenet", metavar="MODEL|PROTOTXT",
                   help="the net (default lenet)")
    frontend.add_data_options(p, help="the images to featurize")
    p.add_argument("--split", default="test", choices=("train", "test"),
                   help="which split to featurize (default test)")
    p.add_argument("--blob", action="append", required=True, metavar="NAME",
                   help="a blob to extract (repeat for several)")
    p.add_argument("--mean", metavar="BINARYPROTO",
                   help="subtract this mean image first (as the net was trained)")
    p.add_argument("--batch-size", type=frontend.positive_int, metavar="N", default=100,
                   help="images per forward pass (default 100)")
    p.add_argument("--arrays", action="store_true",
                   help="write array<float> columns instead of ML vectors")
    p.add_argument("--output", required=True, metavar="PARQUET",
                   help="where to write the features (overwritten)")
    frontend.add_spark_options(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Write the blobs' features of every image to Parquet; print where."""
    args = build_parser().parse_args(argv)
    frontend.check_uri(args.data, f"--data {args.data}")
    frontend.check_files(weights=args.weights, mean=args.mean)

    from sparknet.data import read_mean
    from sparknet.spark import featurize

    mean = read_mean(args.mean) if args.mean else None
    spark = frontend.spark_session("sparknet-featurizer", args.master, args.workers,
                                   args.driver_memory)
    try:
        data = frontend.load_data(spark, args.data, args.split, args.workers,
                                  size=args.image_size, color=args.color)
        solver = frontend.load_solver(args.net, batch_size=args.batch_size,
                                      test_batch_size=args.batch_size, data=data)
        preprocess = None
        if mean is not None:
            image, _ = data.first()
            if mean.shape != tuple(image.shape):
                raise frontend.UsageError(f"{args.mean}: a {mean.shape} mean image for "
                                          f"{tuple(image.shape)} images")

            def preprocess(example: dict) -> dict:  # on the workers, once per image
                return {**example, "data": example["data"] - mean}

        t0 = time.perf_counter()
        # The weights are loaded and the blob names checked on the driver first.
        frame = featurize(spark, solver, args.weights, data, blobs=args.blob,
                          output="array" if args.arrays else "vector", preprocess=preprocess)
        frame.write.mode("overwrite").parquet(args.output)
        written = spark.read.parquet(args.output)
        rows, columns = written.count(), written.columns
        seconds = time.perf_counter() - t0
    finally:
        spark.stop()

    print(f"featurized {rows} images ({args.data} {args.split}) in {seconds:.1f} s; "
          f"columns: {', '.join(columns)}")
    frontend.print_outputs({"features (Parquet)": args.output})
    return 0


if __name__ == "__main__":
    frontend.run(main)
