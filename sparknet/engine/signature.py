"""What a net takes and gives, as Caffe built it: its :class:`NetSignature`.

The one reading of a net's inputs, their shapes, the batch size, the TEST
outputs, the blobs, the label and scores blobs and the weight layout, shared by
the Spark trainer, :func:`sparknet.spark.predict` and the ML stages (each used
to read them its own way, and the readings disagreed about labels).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import attrs

from sparknet._util import shape_str
from sparknet.engine._checks import IndexRule

if TYPE_CHECKING:
    from sparknet.engine.net import CaffeNet

__all__ = ["IndexRule", "NetSignature"]

Shape = tuple[int, ...]


@attrs.frozen
class NetSignature:
    """A solver's TRAIN and TEST nets, from the outside.

    Shapes are per example (the batch axis dropped); ``batch`` and
    ``test_batch`` are the nets' own batch sizes. ``train_rules`` and
    ``test_rules`` are the input blobs a layer reads as class (or row) indices,
    traced through ``Split``/``Reshape``/``Flatten`` (what ``CaffeNet`` checks
    every batch with). Build one with :meth:`of` or ``CaffeNet.signature()``.
    """

    inputs: tuple[str, ...]
    #: TRAIN input blob -> its shape, batch first
    input_shapes: Mapping[str, Shape]
    test_inputs: tuple[str, ...]
    test_input_shapes: Mapping[str, Shape]
    test_outputs: tuple[str, ...]
    #: every blob of the TEST net, in order, with its shape (batch first)
    blobs: tuple[str, ...]
    blob_shapes: Mapping[str, Shape]
    train_rules: tuple[IndexRule, ...]
    test_rules: tuple[IndexRule, ...]
    #: blobs a ``Softmax`` layer of the TEST net writes (already probabilities)
    softmax_tops: frozenset[str]
    layout: tuple
    num_params: int

    @classmethod
    def of(cls, net: CaffeNet) -> NetSignature:
        """The signature of ``net``'s solver, as its nets are shaped now."""
        layout = net.weight_layout
        return cls(
            inputs=tuple(net.input_names), input_shapes=net.input_shapes,
            test_inputs=tuple(net.test_input_names), test_input_shapes=net.test_input_shapes,
            test_outputs=tuple(net.test_output_names),
            blobs=tuple(net.blob_names("TEST")), blob_shapes=net.blob_shapes("TEST"),
            train_rules=tuple(net.label_rules("TRAIN")),
            test_rules=tuple(net.label_rules("TEST")),
            softmax_tops=frozenset(net.layer_tops("Softmax", "TEST")),
            layout=layout,
            num_params=sum(math.prod(s) for _, shapes in layout for s in shapes))

    @property
    def batch(self) -> int:
        """The TRAIN net's batch size (its first input's first axis)."""
        return _batch(self.inputs, self.input_shapes, 1)

    @property
    def test_batch(self) -> int:
        """The TEST net's batch size (the TRAIN net's when it has no inputs of its own)."""
        return _batch(self.test_inputs, self.test_input_shapes, self.batch)

    @property
    def shapes(self) -> dict[str, Shape]:
        """TRAIN input blob -> its shape per example."""
        return {n: tuple(s[1:]) for n, s in self.input_shapes.items()}

    @property
    def test_shapes(self) -> dict[str, Shape]:
        """TEST input blob -> its shape per example."""
        return {n: tuple(s[1:]) for n, s in self.test_input_shapes.items()}

    # -- what the users of a signature ask ----------------------------------------------
    @property
    def label_rule(self) -> IndexRule | None:
        """The classification layer's rule (TEST phase first), if the net has one."""
        return next(iter(self.test_rules or self.train_rules), None)

    @property
    def label(self) -> str | None:
        """The input blob a classification layer reads as class indices."""
        rule = self.label_rule
        return rule.blob if rule is not None else None

    @property
    def scores(self) -> str | None:
        """The blob that layer reads as scores (``None``: no such layer, or ``Embed``)."""
        rule = self.label_rule
        return rule.scores or None if rule is not None else None

    def fed(self, phase: str = "TEST") -> tuple[str, ...]:
        """The input blobs of ``phase`` (TEST: the training inputs when it has none).

        Raises ``ValueError`` when there is none: sparknet feeds nets through
        ``Input`` layers. For TRAIN, every input must also lead with the batch.
        """
        if phase == "TRAIN":
            if not self.inputs:
                raise ValueError("the net has no input blobs: sparknet feeds Input layers "
                                 "(replace Data layers, e.g. ProtoLoader.replace_data_layers)")
            for name in self.inputs:
                shape = self.input_shapes[name]
                if not shape or shape[0] != self.batch:
                    raise ValueError(f"input blob '{name}' has shape {shape_str(shape)}; "
                                     f"every input must have the batch size {self.batch} "
                                     "first")
            return self.inputs
        if not (self.test_inputs or self.inputs):
            raise ValueError("the net's TEST phase has no input blobs: sparknet feeds Input "
                             "layers")
        return self.test_inputs or self.inputs

    def example_shapes(self, phase: str = "TEST") -> Mapping[str, Shape]:
        """Per-example shapes of the blobs :meth:`fed` names for ``phase``."""
        if phase == "TRAIN" or not self.test_inputs:
            return self.shapes
        return self.test_shapes

    def check_blob(self, blob: str, what: str = "blob") -> None:
        """``ValueError`` naming ``blob`` unless the TEST net has it."""
        if blob not in self.blob_shapes:
            raise ValueError(f"{what} '{blob}': the net has no such blob in its TEST phase "
                             f"(blobs: {', '.join(self.blobs)})")

    def values(self, blob: str) -> int:
        """How many values one example of a TEST blob holds."""
        return math.prod(self.blob_shapes[blob][1:])


def _batch(names: tuple[str, ...], shapes: Mapping[str, Shape], default: int) -> int:
    first = next((shapes[n] for n in names if shapes[n]), None)
    return int(first[0]) if first else default
