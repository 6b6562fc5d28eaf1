"""Fine-tune a trained net on new labels: new last layer, the rest from a .caffemodel.

The .caffemodel may come from sparknet or from Caffe's own tools. The net's
last layer with outputs (an InnerProduct or Convolution, by default the last
one in the net; --layer names another) gets --num-classes outputs and a fresh
name, so that Caffe copies every other layer's weights by name and starts the
new one from its filler. The data's labels (0 .. num-classes-1) are the new
task. With --freeze only the new layer learns.

The net is a shipped model (lenet, cifar10_quick, caffenet, googlenet) or a
net prototxt (its data layers are replaced by inputs of the data's shape);
the solver is the model's, a --solver prototxt, or plain SGD.

examples:
  python examples/finetune_app.py --weights runs/lenet/lenet.caffemodel --net lenet \\
      --data mnist:~/data/fashion-mnist --num-classes 10
  python examples/finetune_app.py --weights runs/cifar/cifar10_quick.caffemodel \\
      --net caffe/models/cifar10_quick/train_val.prototxt \\
      --data cifar10:~/data/my-cifar-format --num-classes 3 --freeze --base-lr 0.001
"""
from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sparknet import frontend

log = logging.getLogger("sparknet.examples.finetune")


def build_parser() -> argparse.ArgumentParser:
    """The app's options, with its docstring as ``--help``."""
    p = frontend.parser(__doc__, prog="finetune_app.py")
    p.add_argument("--weights", required=True, metavar="CAFFEMODEL",
                   help="the trained weights to start from")
    p.add_argument("--net", default="lenet", metavar="MODEL|PROTOTXT",
                   help="the net the weights belong to (default lenet)")
    p.add_argument("--solver", metavar="PROTOTXT", help="solver prototxt (default: the "
                   "model's solver; plain SGD for a prototxt net)")
    frontend.add_data_options(p, help="the new task's data", test_data=True)
    p.add_argument("--num-classes", type=frontend.positive_int, metavar="N", required=True,
                   help="outputs of the new last layer (labels 0 .. N-1)")
    p.add_argument("--layer", help="the layer to replace (default: the last one with "
                   "num_output)")
    p.add_argument("--new-name", help="the new layer's name (default: LAYER_finetune)")
    p.add_argument("--mean", metavar="BINARYPROTO",
                   help="subtract this mean image, as when the weights were trained "
                   "(cifar_app.py writes one)")
    p.add_argument("--freeze", action="store_true",
                   help="train only the new layer (every other layer gets lr_mult 0)")
    p.add_argument("--batch-size", type=frontend.positive_int, metavar="N", default=64,
                   help="minibatch per worker (default 64)")
    frontend.add_spark_options(p)
    frontend.add_training_options(p, sync_interval=20, rounds=10, test_interval=2,
                                  output="runs/finetune")
    return p


def replace_last_layer(net: Any, num_classes: int, layer: str | None = None,
                       new_name: str | None = None) -> tuple[Any, str, str]:
    """``(net, old name, new name)``: ``net`` (a NetParameter) with its last layer replaced.

    The layer keeps its bottoms and tops (so the loss and accuracy layers
    still read it) and its fillers; it gets ``num_classes`` outputs and a new
    name. The DSL re-checks every shape of the new net.
    """
    import attrs

    from sparknet.dsl import NetParam

    dsl = NetParam.from_proto(net)
    with_outputs = [x for x in dsl.layers if getattr(x, "num_output", None) is not None]
    if layer is None:
        if not with_outputs:
            raise frontend.UsageError(f"net '{dsl.name}' has no layer with num_output to replace")
        target = with_outputs[-1]
    else:
        found = [x for x in dsl.layers if x.name == layer]
        if not found:
            raise frontend.UsageError(f"net '{dsl.name}' has no layer named {layer!r}")
        target = found[0]
        if getattr(target, "num_output", None) is None:
            raise frontend.UsageError(f"layer {layer!r} ({type(target).__name__}) has no "
                                      "num_output to change")
    name = new_name or f"{target.name}_finetune"
    if any(x.name == name for x in dsl.layers):
        raise frontend.UsageError(f"net '{dsl.name}' already has a layer named {name!r}")
    replacement = attrs.evolve(target, name=name, num_output=num_classes)
    layers = [replacement if x is target else x for x in dsl.layers]
    return attrs.evolve(dsl, layers=layers).to_proto(), target.name, name


def freeze_all_but(solver: Any, layout: Sequence[tuple[str, Sequence[Any]]], keep: str) -> None:
    """Give every learnable layer except ``keep`` ``lr_mult: 0`` (in ``solver.net_param``)."""
    blobs = {name: len(shapes) for name, shapes in layout}
    for layer in solver.net_param.layer:
        if layer.name == keep or layer.name not in blobs:
            continue
        del layer.param[:]
        for _ in range(blobs[layer.name]):
            layer.param.add(lr_mult=0.0, decay_mult=0.0)


def main(argv: Sequence[str] | None = None) -> int:
    """Replace the last layer, train from the .caffemodel; print the last test and the files."""
    args = build_parser().parse_args(argv)
    frontend.check_training_options(args)
    frontend.check_uri(args.data, f"--data {args.data}")
    test_uri = frontend.test_uri(args.data, args.test_data)
    frontend.check_uri(test_uri, f"--test-data {test_uri}")
    frontend.check_files(weights=args.weights, mean=args.mean)

    from sparknet.data import Transformer, read_mean
    from sparknet.engine import CaffeNet
    from sparknet.spark import train

    spark = frontend.spark_session("sparknet-finetune", args.master, args.workers,
                                   args.driver_memory)
    try:
        images = {"size": args.image_size, "color": args.color}
        train_rdd = frontend.load_data(spark, args.data, "train", args.workers, **images)
        test_rdd = (frontend.load_data(spark, test_uri, "test", args.workers, **images)
                    if test_uri else None)
        transforms = {}
        if args.mean:  # subtracted from every minibatch on the workers
            mean = read_mean(args.mean)
            image, _ = train_rdd.first()
            if mean.shape != tuple(image.shape):
                raise frontend.UsageError(f"--mean {args.mean}: a {mean.shape} mean image for "
                                          f"{tuple(image.shape)} images")
            transforms = {"transform": Transformer(mean=mean, phase="TRAIN"),
                          "test_transform": Transformer(mean=mean, phase="TEST")}
        solver = frontend.load_solver(args.net, args.solver, batch_size=args.batch_size,
                                      test_batch_size=args.batch_size, data=train_rdd)
        net, old, new = replace_last_layer(solver.net_param, args.num_classes, args.layer,
                                           args.new_name)
        solver.net_param.CopyFrom(net)
        solver = frontend.apply_solver_options(solver, args)

        # Fail here, on the driver, if the .caffemodel does not fit the net.
        engine = CaffeNet(solver)
        engine.load_weights(args.weights)
        if args.freeze:
            freeze_all_but(solver, engine.weight_layout, new)
        del engine
        log.info("fine-tuning %s from %s: layer %s replaced by %s (num_output %d)%s",
                 args.net, args.weights, old, new, args.num_classes,
                 ", the rest frozen" if args.freeze else "")

        t0 = time.perf_counter()
        result = train(spark, solver, train_rdd, test_data=test_rdd,
                       init_weights=args.weights,  # every layer found by name; not the new one
                       **transforms, **frontend.training_arguments(args))
        seconds = time.perf_counter() - t0
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        weights = out / "finetuned.caffemodel"
        result.save(weights)
    finally:
        spark.stop()

    return frontend.report_training(
        f"fine-tuned {args.net} ({old} -> {new}, {args.num_classes} classes) in "
        f"{seconds:.1f} s ({len(result.history)} rounds)", result, {"weights": weights})


if __name__ == "__main__":
    frontend.run(main)
