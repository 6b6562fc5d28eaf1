"""The ``sparknet`` command line: train, test, featurize, info, convert.

Nets are named as a shipped model (``lenet``, ``cifar10_quick``, ``caffenet``,
``googlenet``), a Python module or ``.py`` file with ``net``/``solver()``, or a
net ``.prototxt`` (with ``--solver``, else plain SGD). Data is a URI, exit
statuses follow one policy; both are shared with the example apps and
documented in :mod:`sparknet.frontend`.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sparknet import frontend
from sparknet.frontend import UsageError

log = logging.getLogger("sparknet")


def _check_inputs(args: argparse.Namespace) -> None:
    """What can be checked before Spark starts: data URIs, prototxt files, weights."""
    frontend.check_uri(args.data, f"--data {args.data}")
    for path in (args.net, args.solver):
        if path is not None and path.endswith(".prototxt"):
            frontend.check_prototxt(path)
    frontend.check_files(weights=getattr(args, "weights", None))


def _session(args: argparse.Namespace) -> Any:
    """The command's SparkSession (see :func:`frontend.spark_session`)."""
    return frontend.spark_session(f"sparknet-{args.command}", args.master, args.workers,
                                  args.driver_memory)


def _data(spark: Any, args: argparse.Namespace, uri: str, split: str) -> Any:
    """An RDD of ``(array, label)`` for a data URI, images sized as the options say."""
    return frontend.load_data(spark, uri, split, args.workers, size=args.image_size,
                              color=args.color)


# -- commands --------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    """``sparknet train``: parameter averaging on Spark, then the end-of-run report."""
    frontend.check_training_options(args)
    _check_inputs(args)
    frontend.check_uri(args.test_data, f"--test-data {args.test_data}")
    from sparknet.spark import train

    spark = _session(args)
    train_rdd = _data(spark, args, args.data, "train")
    test_uri = frontend.test_uri(args.data, args.test_data)
    test_rdd = _data(spark, args, test_uri, "test") if test_uri else None
    solver = frontend.load_solver(args.net, args.solver, batch_size=args.batch_size,
                                  test_batch_size=args.test_batch_size, data=train_rdd)
    solver = frontend.apply_solver_options(solver, args)
    t0 = time.perf_counter()
    result = train(spark, solver, train_rdd, test_data=test_rdd,
                   **frontend.training_arguments(args))
    seconds = time.perf_counter() - t0
    if args.save:
        result.save(args.save)
    return frontend.report_training(
        f"trained {args.net} on {args.data} in {seconds:.1f} s ({len(result.history)} rounds)",
        result, {"weights": args.save})


def cmd_test(args: argparse.Namespace) -> int:
    """``sparknet test``: a ``.caffemodel``'s accuracy on a data set, as one JSON line."""
    _check_inputs(args)
    from sparknet.spark import predict

    spark = _session(args)
    rdd = _data(spark, args, args.data, "test")
    solver = frontend.load_solver(args.net, args.solver, batch_size=args.batch_size,
                                  test_batch_size=args.batch_size, data=rdd)
    scores, labels = _accuracy_blobs(solver)
    frame = predict(spark, solver, args.weights, rdd, blobs=[scores])
    hits, total = (frame.rdd.map(lambda row: (int(np.argmax(row[scores]) == row[labels]), 1))
                   .reduce(lambda a, b: (a[0] + b[0], a[1] + b[1])))
    print(json.dumps({"accuracy": hits / total, "examples": total, "scores": scores}))
    return 0


def _accuracy_blobs(solver: Any) -> tuple[str, str]:
    """The (scores, label) bottoms of the Accuracy layer in the solver's TEST net."""
    from sparknet.proto.rules import layer_active, solver_net_state

    net = solver.net_param
    state = solver_net_state(solver, "TEST")
    for layer in net.layer:
        if (layer.type == "Accuracy" and len(layer.bottom) >= 2
                and layer_active(layer, "TEST", *state)):
            return layer.bottom[0], layer.bottom[1]
    raise UsageError(f"net '{net.name}' has no TEST-phase Accuracy layer to score with")


def cmd_featurize(args: argparse.Namespace) -> int:
    """``sparknet featurize``: blobs of a trained net for every example, into Parquet."""
    _check_inputs(args)
    from sparknet.spark import featurize

    spark = _session(args)
    rdd = _data(spark, args, args.data, args.split)
    solver = frontend.load_solver(args.net, args.solver, batch_size=args.batch_size,
                                  test_batch_size=args.batch_size, data=rdd)
    frame = featurize(spark, solver, args.weights, rdd, blobs=args.blob)
    frame.write.mode("overwrite").parquet(args.output)
    print(f"features ({', '.join(args.blob)}): {args.output}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """``sparknet info``: a net's layers, shapes and parameters, a .caffemodel's, or the build's."""
    from sparknet.proto import caffe_pb2

    path = args.file
    if path is None:  # the build itself: Caffe, its BLAS and the kernels in use
        from sparknet.engine import describe_build

        print(describe_build())
        return 0
    raw = (Path(path).read_bytes() if Path(path).is_file()
           and not path.endswith((".py", ".prototxt")) else None)
    if path.endswith(".caffemodel") or (raw is not None and frontend.binary(raw)):
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

    proto = frontend.load_net(path)
    net = NetParam.from_proto(proto)
    shapes = net.shapes(Phase.TRAIN)
    print(f"{net.name}: {len(net.layers)} layers (TRAIN phase shown)")
    for layer in net.layers_in(Phase.TRAIN):
        tops = ", ".join(f"{t} {shapes.get(t, '?')}" for t in layer.tops)
        print(f"  {layer.name:<24} {type(layer).__name__:<24} -> {tops}")
    if frontend.reads_own_data(proto):
        print("parameters: unknown until the data layers are replaced by inputs")
        return 0
    from sparknet.engine import CaffeNet
    engine = CaffeNet(caffe_pb2.SolverParameter(net_param=proto, **frontend.DEFAULT_SOLVER))
    total = 0
    for name, blob_shapes in engine.weight_layout:
        count = sum(int(np.prod(s)) for s in blob_shapes)
        total += count
        log.debug("%s %s %d", name, blob_shapes, count)
    print(f"parameters: {total:,} in {len(engine.weight_layout)} layers")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """``sparknet convert``: a net prototxt as DSL Python source, or a model as prototxt."""
    from sparknet.dsl import NetParam
    from sparknet.proto import ProtoLoader

    src = args.file
    if src.endswith(".prototxt"):
        text = NetParam.from_proto(frontend.load_net(src)).to_python()
    else:
        text = ProtoLoader.to_prototxt(frontend.load_net(src))
    if args.output:
        from sparknet.io import atomic_write_bytes
        atomic_write_bytes(args.output, text.encode())
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


# -- parser ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``sparknet`` argument parser, one sub-command each."""
    parser = argparse.ArgumentParser(
        prog="sparknet", description="Distributed Caffe training on Apache Spark.",
        epilog=f"{frontend.URI_HELP}\n{frontend.EXIT_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log debugging detail (and show a failure's whole traceback)")
    parser.add_argument("--debug", action="store_true",
                        help="show the whole traceback of a failure")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, *, weights: bool, test_data: bool = False) -> None:
        p.add_argument("net", help="shipped model, module, .py file or net .prototxt")
        p.add_argument("--solver", help="solver .prototxt (default: the model's solver(); "
                       "plain SGD for a net .prototxt)")
        frontend.add_data_options(p, test_data=test_data)
        frontend.add_spark_options(p, verbose=False)
        p.add_argument("--batch-size", type=frontend.positive_int,
                       help="minibatch size (default: the net's)")
        if weights:
            p.add_argument("--weights", required=True, help=".caffemodel to load")

    p = sub.add_parser("train", help="train a net with parameter averaging on Spark")
    common(p, weights=False, test_data=True)
    p.add_argument("--test-batch-size", type=frontend.positive_int)
    frontend.add_training_options(p, sync_interval=50, rounds=20, test_interval=5,
                                  output="runs/train")
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
    """Run the ``sparknet`` command line; the exit status is :func:`frontend.exit_status`'s."""
    args = build_parser().parse_args(argv)
    frontend.configure_logging(args.verbose)
    return frontend.exit_status(lambda: args.func(args), f"sparknet {args.command}",
                                args.verbose or args.debug)
