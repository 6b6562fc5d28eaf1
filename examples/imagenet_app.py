"""SparkNet's ImageNetApp: CaffeNet trained on Spark from tar shards of JPEGs on S3.

The bucket has the layout SparkNet used, which the upload tool writes
(python -m sparknet.data.imagenet_to_s3): training shards
ILSVRC2012_train/train.00000.tar ..., validation shards
ILSVRC2012_val/val.00000.tar ..., and the label lists train.txt and val.txt
at the bucket root. Each worker streams its shards from S3 and decodes them
(one partition per shard, never through the driver). The net is CaffeNet from
caffe/models/caffenet/train_val.prototxt; its transform_param gives the
227x227 crops: the workers keep the decoded 256x256 images (uint8) and draw
fresh random, mirrored crops for every minibatch, as Caffe does; centred for
testing). As in SparkNet the mean image of the
training set is subtracted (computed on the workers, or read with --mean), and
the weights are averaged every 50 steps.

S3 credentials come from boto3's standard chain (environment, profile, role);
Spark's executors need them too (for example spark.executorEnv.AWS_*).

examples:
  python examples/imagenet_app.py 2 my-imagenet-bucket --rounds 100
  spark-submit --master spark://host:7077 examples/imagenet_app.py 16 my-bucket
  python examples/imagenet_app.py 2 test-bucket --endpoint-url http://127.0.0.1:9000 \\
      --image-size 72 --crop 67 --batch-size 8 --rounds 2 --base-lr 0.001
"""
from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from sparknet import frontend

log = logging.getLogger("sparknet.examples.imagenet")
ROOT = Path(__file__).resolve().parent.parent  # the shipped prototxt are under caffe/models/
(SHARDS, LABELS), (VAL_SHARDS, VAL_LABELS) = (frontend.S3_LAYOUT[s] for s in ("train", "test"))

def build_parser() -> argparse.ArgumentParser:
    """The app's options, with its docstring as ``--help``."""
    p = frontend.parser(__doc__, prog="imagenet_app.py")
    p.add_argument("workers", type=frontend.positive_int, help="Spark workers K")
    p.add_argument("bucket", help="S3 bucket in the upload tool's layout")
    s3 = p.add_argument_group("data")
    s3.add_argument("--endpoint-url", metavar="URL", help="S3-compatible endpoint (default: AWS)")
    s3.add_argument("--region", help="S3 region (default: boto3's chain)")
    s3.add_argument("--shard-prefix", metavar="PREFIX", default=SHARDS,
                    help="key prefix of the training shards (default %(default)s)")
    s3.add_argument("--labels", default=LABELS, metavar="KEY",
                    help="key of the training label list (default %(default)s)")
    s3.add_argument("--val-prefix", metavar="PREFIX", default=VAL_SHARDS,
                    help="key prefix of the validation shards (default %(default)s)")
    s3.add_argument("--val-labels", default=VAL_LABELS, metavar="KEY",
                    help="key of the validation label list (default %(default)s)")
    s3.add_argument("--no-val", action="store_true", help="do not test on validation shards")
    s3.add_argument("--max-shards", type=frontend.positive_int, metavar="N",
                    help="use only the first N training shards (a trial run)")
    s3.add_argument("--mean", metavar="BINARYPROTO",
                    help="mean image to subtract (default: compute it from the training "
                    "shards and write OUTPUT/mean.binaryproto)")
    net = p.add_argument_group("net")
    frontend.add_prototxt_options(net, "caffenet", ROOT)
    net.add_argument("--image-size", type=frontend.positive_int, default=256, metavar="N",
                     help="decode and resize images to NxN (default 256)")
    net.add_argument("--crop", type=frontend.positive_int, metavar="N",
                     help="crop size (default: the net's transform_param, 227)")
    net.add_argument("--batch-size", type=frontend.positive_int, default=256, metavar="N",
                     help="training minibatch per worker (default 256, as SparkNet)")
    net.add_argument("--test-batch-size", type=frontend.positive_int, default=50, metavar="N",
                     help="test minibatch (default 50)")
    frontend.add_spark_options(p, workers=False, driver_memory="4g")
    frontend.add_training_options(p, sync_interval=50, rounds=1000, test_interval=10,
                                  output="runs/imagenet")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Train CaffeNet on the S3 shards; print the last test and the files written."""
    args = build_parser().parse_args(argv)
    frontend.check_training_options(args)
    frontend.check_files(net=args.net, solver=args.solver, mean=args.mean)

    import numpy as np

    from sparknet.data import (
        Transformer,
        compute_mean,
        load_imagenet,
        read_mean,
        write_mean,
    )
    from sparknet.proto import ProtoLoader
    from sparknet.spark import train

    net = ProtoLoader.load_net_prototxt(args.net)
    transforms = ProtoLoader.transform_params(net)
    train_tp, test_tp = transforms.get("TRAIN"), transforms.get("TEST")
    crop = args.crop or (train_tp.crop_size if train_tp is not None else 0) or args.image_size
    if crop > args.image_size:
        raise frontend.UsageError(f"--crop {crop} is larger than --image-size {args.image_size}")
    net = ProtoLoader.replace_data_layers(net, args.batch_size, args.test_batch_size, 3,
                                          crop, crop)
    solver = ProtoLoader.load_solver_prototxt_with_net(args.solver, net)
    solver = frontend.apply_solver_options(solver, args)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    spark = frontend.spark_session("sparknet-imagenet", args.master, args.workers,
                                   args.driver_memory)
    try:
        size = (args.image_size, args.image_size)
        s3 = {"endpoint_url": args.endpoint_url, "region_name": args.region}

        def shards(prefix: str, labels: str, max_shards: int | None = None):
            # BGR, as Caffe and its models' mean values expect; uint8, a quarter of float32
            return load_imagenet(spark, args.bucket, shard_prefix=prefix, labels_key=labels,
                                 size=size, color="BGR", dtype=np.uint8,
                                 max_shards=max_shards, **s3)

        if args.mean:
            mean = read_mean(args.mean)
            if mean.shape != (3, *size):
                raise frontend.UsageError(f"{args.mean}: a {mean.shape} mean image for "
                                          f"{(3, *size)} images (see --image-size)")
            mean_file = Path(args.mean)
        else:
            log.info("computing the mean image of s3://%s/%s* on the workers", args.bucket,
                     args.shard_prefix)
            mean = compute_mean(shards(args.shard_prefix, args.labels,
                                       max_shards=args.max_shards).rdd)
            mean_file = out / "mean.binaryproto"
            write_mean(mean_file, mean)

        # Caffe's transform_param: random crops (mirrored) for training, centre crops for
        # testing, the mean image subtracted; on the workers, per minibatch, from the cached
        # decoded images (reseeded per partition and step: runs stay reproducible)
        train_tf = Transformer(crop_size=crop, mean=mean, phase="TRAIN",
                               mirror=bool(train_tp.mirror) if train_tp is not None else True)
        test_tf = Transformer(crop_size=crop, mean=mean, phase="TEST",
                              mirror=bool(test_tp.mirror) if test_tp is not None else False)
        train_data = shards(args.shard_prefix, args.labels, max_shards=args.max_shards)
        test_data = None if args.no_val else shards(args.val_prefix, args.val_labels)
        log.info("CaffeNet: %d workers, tau %d, %d rounds, batch %d, %dx%d images cropped to %d",
                 args.workers, args.sync_interval, args.rounds, args.batch_size, *size, crop)
        t0 = time.perf_counter()
        result = train(spark, solver, train_data.rdd,
                       test_data=test_data.rdd if test_data is not None else None,
                       transform=train_tf, test_transform=test_tf,
                       **frontend.training_arguments(args))
        seconds = time.perf_counter() - t0
        report = train_data.report()
        weights = out / "caffenet.caffemodel"
        result.save(weights)
    finally:
        spark.stop()

    return frontend.report_training(
        f"trained CaffeNet on s3://{args.bucket} in {seconds:.1f} s "
        f"({len(result.history)} rounds): {report.summary()}", result,
        {"weights": weights, "mean image": mean_file})


if __name__ == "__main__":
    frontend.run(main)
