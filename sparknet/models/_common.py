"""Pieces the shipped models share."""
from __future__ import annotations

from sparknet.dsl import InputLayer, Layer, ParamSpec, Phase, TransformParam

#: Weights learn at the base rate with weight decay; biases at twice it, without.
WEIGHTS_AND_BIASES = (ParamSpec(lr_mult=1, decay_mult=1), ParamSpec(lr_mult=2, decay_mult=0))

#: The BGR means of ImageNet the Caffe models subtract.
IMAGENET_MEAN = (104, 117, 123)


def imagenet_inputs(batch_size: int, test_batch_size: int, crop: int) -> list[Layer]:
    """``data`` and ``label`` Input layers per phase, with ImageNet's preprocessing.

    The ``transform_param`` is for sparknet's data pipeline (Caffe ignores it
    on an Input layer): random mirrored crops in TRAIN, centre crops in TEST.
    """
    def inputs(phase: Phase, batch: int, mirror: bool | None) -> list[Layer]:
        transform = TransformParam(mirror=mirror, crop_size=crop, mean_value=IMAGENET_MEAN)
        return [InputLayer("data", shape=(batch, 3, crop, crop), include=phase,
                           transform_param=transform),
                InputLayer("label", shape=(batch, 1), include=phase)]
    return [*inputs(Phase.TRAIN, batch_size, True), *inputs(Phase.TEST, test_batch_size, None)]
