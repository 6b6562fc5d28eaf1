"""The ``sparknet`` command line: train, test, featurize, info, convert.

Nets are named as a shipped model (``lenet``, ``cifar10_quick``, ``caffenet``,
``googlenet``), a Python module or ``.py`` file with ``net()``/``solver()``
functions, or a net ``.prototxt`` (with ``--solver``). Data is a URI:

    digits:                  the bundled handwritten digits (no download)
    mnist:/path/to/dir       MNIST IDX files (gzipped or not; local, hdfs://, s3://)
    cifar10:/path/to/dir     CIFAR-10 binary batches
    lmdb:/path/to/db         a Caffe LMDB of Datum records
    s3://bucket[/prefix]     ImageNet tar shards in SparkNet's S3 layout: under the
                             prefix, ILSVRC2012_train/train.*.tar + train.txt and
                             ILSVRC2012_val/val.*.tar + val.txt (--image-size, --color)

Exit status: 0 success, 1 the run failed (for example a diverging loss, or
a file that could not be written), 2 a mistake in what was asked (reported
without a traceback).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("sparknet")

MODELS = ("lenet", "cifar10_quick", "caffenet", "googlenet")
SCHEMES = ("digits:", "mnist:", "cifar10:", "lmdb:", "s3://")


class UsageError(Exception):
    """A mistake in the command line; printed without a traceback, exit 2."""


# -- nets ------------------------------------------------------------------------------


def _module(spec: str) -> Any:
    if spec in MODELS:
        return importlib.import_module(f"sparknet.models.{spec}")
    if spec.endswith(".py"):
        path = Path(spec)
        if not path.exists():
            raise UsageError(f"{spec}: no such file")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(spec)
    except ImportError as e:
        raise UsageError(f"'{spec}' is neither a shipped model ({', '.join(MODELS)}), "
                         f"a .prototxt, a .py file nor an importable module ({e})") from None


def load_solver(spec: str, solver: str | None, batch_size: int | None,
                test_batch_size: int | None, input_shape: Sequence[int] | None = None) -> Any:
    """A ``caffe_pb2.SolverParameter`` (net inline, fed by Input layers)."""
    from sparknet.proto import ProtoLoader, caffe_pb2

    if spec.endswith(".prototxt"):
        _check_text(spec)
        net = ProtoLoader.load_net_prototxt(spec)
        if _reads_own_data(net):
            if input_shape is None:
                raise UsageError(f"{spec} reads its own data; sparknet feeds it instead, "
                                 "but needs the data's shape (give --data)")
            c, h, w = input_shape
            net = ProtoLoader.replace_data_layers(net, batch_size or 64,
                                                  test_batch_size or batch_size or 64, c, h, w)
        if solver is None:
            return caffe_pb2.SolverParameter(base_lr=0.01, momentum=0.9, lr_policy="fixed",
                                             net_param=net)
        _check_text(solver)
        return ProtoLoader.load_solver_prototxt_with_net(solver, net)
    module = _module(spec)
    kwargs = {}
    if batch_size:
        kwargs["batch_size"] = batch_size
    if not hasattr(module, "solver"):
        raise UsageError(f"module '{spec}' has no solver() function")
    return _proto(module.solver(**kwargs))


def _check_text(path: str) -> None:
    """A prototxt must exist and be text (a .caffemodel renamed is a common slip)."""
    if not Path(path).is_file():
        raise UsageError(f"{path}: no such file")
    if _binary(Path(path).read_bytes()):
        raise UsageError(f"{path}: a binary file, not a text prototxt (weights go to "
                         "--weights as a .caffemodel)")


def _reads_own_data(net: Any) -> bool:
    from sparknet.proto.loader import DATA_LAYER_TYPES, data_layers

    return any(d.type in DATA_LAYER_TYPES for d in data_layers(net))


def _proto(obj: Any) -> Any:
    return obj.to_proto() if hasattr(obj, "to_proto") else obj


def load_net(spec: str) -> Any:
    """A ``caffe_pb2.NetParameter`` from a prototxt, model name or module."""
    from sparknet.proto import ProtoLoader

    if spec.endswith(".prototxt"):
        _check_text(spec)
        return ProtoLoader.load_net_prototxt(spec)
    module = _module(spec)
    net = getattr(module, "net", None)
    if net is None:
        raise UsageError(f"module '{spec}' has no net (a NetParam or a net() function)")
    return _proto(net if hasattr(net, "to_proto") else net())


# -- data ------------------------------------------------------------------------------


def check_uri(uri: str | None) -> None:
    """Refuse an unknown data URI, or one naming a local path that is not there, early."""
    if uri is None or uri in ("digits", "digits:"):
        return
    if not uri.startswith(SCHEMES):
        raise UsageError(f"unknown data source '{uri}'; use one of {', '.join(SCHEMES)}")
    if uri.startswith("s3://"):
        from sparknet.data.s3 import parse_s3_uri

        try:
            parse_s3_uri(uri)
        except ValueError as e:
            raise UsageError(f"data source '{uri}': {e}") from None
        return
    scheme, _, rest = uri.partition(":")
    if not rest:
        raise UsageError(f"data source '{uri}' names no path (write {scheme}:/path/to/data)")
    from sparknet.data._io import local_path
    from sparknet.data._io import scheme as uri_scheme

    if uri_scheme(rest) == "" and not local_path(rest).exists():
        raise UsageError(f"data source '{uri}': {local_path(rest)} does not exist")


def check_weights(path: str) -> None:
    """A local ``--weights`` file must exist (checked before Spark starts)."""
    from sparknet.spark.checkpoint import is_s3

    if not is_s3(path) and not Path(path).is_file():
        raise UsageError(f"--weights {path}: no such file")


#: SparkNet's S3 layout under ``s3://bucket[/prefix]`` (what ``sparknet.data.imagenet_to_s3``
#: writes with its default prefixes): split -> (shard key prefix, label list key).
S3_LAYOUT = {"train": ("ILSVRC2012_train/train.", "train.txt"),
             "test": ("ILSVRC2012_val/val.", "val.txt")}


def imagenet_data(spark: Any, uri: str, split: str, *, size: tuple[int, int] = (256, 256),
                  color: str = "RGB") -> Any:
    """The ``s3://bucket[/prefix]`` data scheme: ImageNet tar shards in SparkNet's layout.

    The training split is ``<prefix>/ILSVRC2012_train/train.*.tar`` labelled by
    ``<prefix>/train.txt``, the test split ``<prefix>/ILSVRC2012_val/val.*.tar`` by
    ``<prefix>/val.txt``; the endpoint and credentials come from boto3's chain
    (``AWS_ENDPOINT_URL`` for an S3-compatible store).
    """
    from sparknet.data.imagenet import load_imagenet
    from sparknet.data.s3 import parse_s3_uri

    try:
        bucket, prefix = parse_s3_uri(uri)
    except ValueError as e:
        raise UsageError(str(e)) from None
    base = prefix.strip("/") + "/" if prefix.strip("/") else ""
    shards, labels = S3_LAYOUT[split]
    return load_imagenet(spark, bucket, shard_prefix=base + shards, labels_key=base + labels,
                         size=size, color=color)


def load_data(spark: Any, uri: str, split: str, partitions: int | None, *,
              size: tuple[int, int] = (256, 256), color: str = "RGB") -> Any:
    """An RDD of ``(array, label)`` examples for a data URI.

    ``size`` (width, height) and ``color`` apply to decoded images (``s3://``).
    """
    from sparknet import data

    if uri == "digits:" or uri == "digits":
        from sparknet.data.digits import digits_rdd
        return digits_rdd(spark, split, num_partitions=partitions)
    if uri.startswith("mnist:"):
        return data.mnist.mnist_rdd(spark, uri[len("mnist:"):], split, num_partitions=partitions)
    if uri.startswith("cifar10:"):
        return data.cifar.cifar10_rdd(spark, uri[len("cifar10:"):], split,
                                      num_partitions=partitions)
    if uri.startswith("lmdb:"):
        return data.caffe_lmdb.lmdb_rdd(spark, uri[len("lmdb:"):], partitions)
    if uri.startswith("s3://"):
        return imagenet_data(spark, uri, split, size=size, color=color).rdd
    raise UsageError(f"unknown data source '{uri}'; use one of {', '.join(SCHEMES)}")


def _image_args(args: argparse.Namespace) -> dict[str, Any]:
    return {"size": args.image_size, "color": args.color}


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got '{text}'")
    return value


def image_size(text: str) -> tuple[int, int]:
    """``"256"`` or ``"256x224"`` (width x height) -> ``(width, height)``."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected a size like 256 or 256x224, got '{text}'")
    return parts[0], parts[1]


def _spark(master: str | None, app: str) -> Any:
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app)
    if master:
        builder = builder.master(master)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    from sparknet.spark._python import prepare_workers

    prepare_workers(session.sparkContext)  # the workers' Python imports this sparknet
    return session


def check_net(args: argparse.Namespace) -> None:
    """Prototxt files must be there and be text (checked before Spark starts)."""
    for path in (args.net, args.solver):
        if path is not None and path.endswith(".prototxt"):
            _check_text(path)


# -- commands --------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    check_uri(args.data)
    check_net(args)
    check_uri(args.test_data)
    from sparknet.spark import train

    spark = _spark(args.master, "sparknet-train")
    train_rdd = load_data(spark, args.data, "train", args.workers, **_image_args(args))
    test_uri = args.test_data or (args.data if not args.data.startswith("lmdb:") else None)
    test_rdd = (load_data(spark, test_uri, "test", args.workers, **_image_args(args))
                if test_uri else None)
    first = train_rdd.first()
    shape = tuple(first[0].shape) if isinstance(first, tuple) else None
    solver = load_solver(args.net, args.solver, args.batch_size, args.test_batch_size, shape)
    result = train(spark, solver, train_rdd, test_data=test_rdd, workers=args.workers,
                   sync_interval=args.sync_interval, rounds=args.rounds,
                   test_interval=args.test_interval, output_dir=args.output,
                   checkpoint_dir=args.checkpoint_dir, resume=args.resume, seed=args.seed)
    if args.save:
        result.save(args.save)
        print(f"weights: {args.save}")
    last = next((h["test"] for h in reversed(result.history) if h.get("test")), None)
    if last:
        print("test: " + ", ".join(f"{k} {v:.4f}" for k, v in last.items()))
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    check_uri(args.data)
    check_net(args)
    check_weights(args.weights)
    from sparknet.spark import predict

    spark = _spark(args.master, "sparknet-test")
    rdd = load_data(spark, args.data, "test", args.workers, **_image_args(args))
    first = rdd.first()
    solver = load_solver(args.net, args.solver, args.batch_size, args.batch_size,
                         tuple(first[0].shape) if isinstance(first, tuple) else None)
    scores, labels = _accuracy_blobs(solver.net_param)
    frame = predict(spark, solver, args.weights, rdd, blobs=[scores])
    hits, total = (frame.rdd.map(lambda row: (int(np.argmax(row[scores]) == row[labels]), 1))
                   .reduce(lambda a, b: (a[0] + b[0], a[1] + b[1])))
    print(json.dumps({"accuracy": hits / total, "examples": total, "scores": scores}))
    return 0


def _accuracy_blobs(net: Any) -> tuple[str, str]:
    """The (scores, label) bottoms of the net's TEST-phase Accuracy layer."""
    from sparknet.proto import caffe_pb2

    for layer in net.layer:
        excluded = any(r.phase == caffe_pb2.TEST for r in layer.exclude if r.HasField("phase"))
        included = not layer.include or any(not r.HasField("phase") or r.phase == caffe_pb2.TEST
                                             for r in layer.include)
        if layer.type == "Accuracy" and included and not excluded and len(layer.bottom) >= 2:
            return layer.bottom[0], layer.bottom[1]
    raise UsageError(f"net '{net.name}' has no TEST-phase Accuracy layer to score with")


def cmd_featurize(args: argparse.Namespace) -> int:
    check_uri(args.data)
    check_net(args)
    check_weights(args.weights)
    from sparknet.spark import featurize

    spark = _spark(args.master, "sparknet-featurize")
    rdd = load_data(spark, args.data, args.split, args.workers, **_image_args(args))
    first = rdd.first()
    solver = load_solver(args.net, args.solver, args.batch_size, args.batch_size,
                         tuple(first[0].shape) if isinstance(first, tuple) else None)
    frame = featurize(spark, solver, args.weights, rdd, blobs=args.blob)
    frame.write.mode("overwrite").parquet(args.output)
    print(f"features ({', '.join(args.blob)}): {args.output}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from sparknet.proto import caffe_pb2

    path = args.file
    if path is None:  # the build itself: Caffe, its BLAS and the kernels in use
        from sparknet.engine._blas import describe_build

        print(describe_build())
        return 0
    raw = (Path(path).read_bytes() if Path(path).is_file()
           and not path.endswith((".py", ".prototxt")) else None)
    if path.endswith(".caffemodel") or (raw is not None and _binary(raw)):
        if raw is None:
            raise UsageError(f"{path}: no such file")
        net = caffe_pb2.NetParameter()
        try:
            net.ParseFromString(raw)
        except Exception as e:  # noqa: BLE001  # protobuf's DecodeError
            raise UsageError(f"{path}: a binary file that is not a Caffe .caffemodel "
                             f"(NetParameter: {e}); info reads a text .prototxt or a "
                             ".caffemodel") from None
        if not net.layer and not net.layers:
            raise UsageError(f"{path}: a binary file that holds no Caffe layers; info reads a "
                             "text .prototxt or a .caffemodel")
        total = 0
        print(f"{net.name or Path(path).stem}: weights of {len(net.layer)} layers")
        for layer in net.layer:
            if not layer.blobs:
                continue
            shapes = [tuple(b.shape.dim) or (b.num, b.channels, b.height, b.width)
                      for b in layer.blobs]
            count = sum(len(b.data) for b in layer.blobs)
            total += count
            print(f"  {layer.name:<24} {layer.type:<16} "
                  f"{' '.join(str(s) for s in shapes):<40} {count:>12,}")
        print(f"parameters: {total:,}")
        return 0
    from sparknet.dsl import NetParam, Phase

    proto = load_net(path)
    net = NetParam.from_proto(proto)
    shapes = net.shapes(Phase.TRAIN)
    print(f"{net.name}: {len(net.layers)} layers (TRAIN phase shown)")
    for layer in net.layers_in(Phase.TRAIN):
        tops = ", ".join(f"{t} {shapes.get(t, '?')}" for t in layer.tops)
        print(f"  {layer.name:<24} {type(layer).__name__:<24} -> {tops}")
    if _reads_own_data(proto):
        print("parameters: unknown until the data layers are replaced by inputs")
        return 0
    from sparknet.engine import CaffeNet
    engine = CaffeNet(caffe_pb2.SolverParameter(base_lr=0.01, lr_policy="fixed", net_param=proto))
    total = 0
    for name, blob_shapes in engine.weight_layout:
        count = sum(int(np.prod(s)) for s in blob_shapes)
        total += count
        log.debug("%s %s %d", name, blob_shapes, count)
    print(f"parameters: {total:,} in {len(engine.weight_layout)} layers")
    return 0


def _binary(data: bytes) -> bool:
    """Not text: a NUL byte, or not UTF-8."""
    if b"\0" in data[:65536]:
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def cmd_convert(args: argparse.Namespace) -> int:
    from sparknet.dsl import NetParam
    from sparknet.proto import ProtoLoader

    src = args.file
    if src.endswith(".prototxt"):
        text = NetParam.from_proto(load_net(src)).to_python()
    else:
        text = ProtoLoader.to_prototxt(load_net(src))
    if args.output:
        from sparknet.data._io import atomic_write_bytes
        atomic_write_bytes(args.output, text.encode())
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


# -- parser ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparknet", description="Distributed Caffe training on Apache Spark.",
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, *, weights: bool) -> None:
        p.add_argument("net", help="shipped model, module, .py file or net .prototxt")
        p.add_argument("--solver", help="solver .prototxt (with a net .prototxt)")
        p.add_argument("--data", default="digits:", help="data URI (default: digits:)")
        p.add_argument("--master", help="Spark master (default: spark-submit's, else local[*])")
        p.add_argument("--workers", type=positive_int, default=2,
                       help="Spark workers K (default 2)")
        p.add_argument("--batch-size", type=positive_int,
                       help="minibatch size (default: the net's)")
        p.add_argument("--image-size", type=image_size, default=(256, 256), metavar="WxH",
                       help="s3:// images are resized to this (default 256x256)")
        p.add_argument("--color", choices=["RGB", "BGR", "L"], default="RGB",
                       help="s3:// images' channels (default RGB; L: grayscale)")
        if weights:
            p.add_argument("--weights", required=True, help=".caffemodel to load")

    p = sub.add_parser("train", help="train a net with parameter averaging on Spark")
    common(p, weights=False)
    p.add_argument("--test-data", help="test data URI (default: --data's test split)")
    p.add_argument("--test-batch-size", type=positive_int)
    p.add_argument("--sync-interval", type=positive_int, default=50, help="tau: steps per round")
    p.add_argument("--rounds", type=positive_int, default=20)
    p.add_argument("--test-interval", type=int, default=5, help="rounds between tests")
    p.add_argument("--output", default="runs/train", help="log, history and plot folder")
    p.add_argument("--checkpoint-dir", help="local path or s3:// URI for checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", help="write the final weights to this .caffemodel")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("test", help="score a .caffemodel on a data set")
    common(p, weights=True)
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("featurize", help="extract blobs' features into a Parquet file")
    common(p, weights=True)
    p.add_argument("--blob", action="append", required=True, help="blob to extract (repeat)")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--output", required=True, help="Parquet output path")
    p.set_defaults(func=cmd_featurize)

    p = sub.add_parser("info", help="layers, shapes and parameters of a net or .caffemodel; "
                       "without one, the Caffe build, its BLAS and kernels")
    p.add_argument("file", nargs="?", help=".prototxt, .caffemodel, shipped model or module")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="net .prototxt -> DSL Python source, or back")
    p.add_argument("file", help=".prototxt (to Python) or model/module/.py (to prototxt)")
    p.add_argument("-o", "--output", help="write here instead of standard output")
    p.set_defaults(func=cmd_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s")
    from sparknet.dsl import NetDefinitionError
    from sparknet.engine import CaffeError

    try:
        return args.func(args)
    except (UsageError, NetDefinitionError, FileNotFoundError, ValueError) as e:
        print(f"sparknet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except CaffeError as e:
        print(f"sparknet {args.command}: Caffe rejected the net: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sparknet {args.command}: interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, OSError) as e:  # a disk full, a lost connection: one line, exit 1
        print(f"sparknet {args.command}: failed: {e}", file=sys.stderr)
        return 1
