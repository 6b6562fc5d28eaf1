"""Losses and accuracy: each top is a scalar, shape ``()``."""
from __future__ import annotations

from sparknet.dsl._fields import BOOL, INT32, POSITIVE, REAL, EnumKind, Message, param
from sparknet.dsl.enums import Engine, HingeNorm
from sparknet.dsl.layers.base import Layer, Shape, _shape_text, count, layer
from sparknet.dsl.params import LossParam

__all__ = ["AccuracyLayer", "ContrastiveLoss", "EuclideanLoss", "HingeLoss",
           "SigmoidCrossEntropyLoss", "SoftmaxWithLoss"]


def _loss_param() -> LossParam | None:
    return param(Message(LossParam), proto="loss_param", scope="layer")


class _Loss(Layer):
    """A loss of predictions (bottom 0) against targets (bottom 1): a scalar top."""

    __slots__ = ()

    def _check_batch(self, bottoms: tuple[Shape, ...]) -> None:
        first, second = bottoms[0], bottoms[1]
        if first[:1] != second[:1]:
            self._fail("bottoms", f"'{self.bottoms[0]}' {_shape_text(first)} and "
                       f"'{self.bottoms[1]}' {_shape_text(second)} must have the same "
                       "first dimension (the batch)")

    def _check_labels(self, bottoms: tuple[Shape, ...], axis: int) -> None:
        """One label per prediction: count(label) == outer * inner of the scores."""
        scores, labels = bottoms[0], bottoms[1]
        axis = self._axis(axis, scores)
        expected = count(scores, 0, axis) * count(scores, axis + 1)
        if count(labels) != expected:
            self._fail("bottoms", f"'{self.bottoms[1]}' {_shape_text(labels)} must hold one "
                       f"label per prediction of '{self.bottoms[0]}' {_shape_text(scores)} "
                       f"over axis {axis}: {expected} labels")

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        self._check_batch(bottoms)
        return ((),)


@layer("SoftmaxWithLoss", param="softmax_param", bottoms=(2, 2), tops=(1, 2))
class SoftmaxWithLoss(_Loss):
    """Softmax over ``axis``, then the multinomial logistic loss of integer labels.

    Bottoms: scores, labels (one per prediction). Top: the loss. (Caffe allows
    the probabilities as a second top, but this Caffe cannot build that: use a
    separate ``SoftmaxLayer``.)

    Attributes:
        loss_param: ``ignore_label`` and ``normalization``.
        axis: the class axis (default: 1).
        engine: Caffe's or cuDNN's softmax.
    """

    loss_param: LossParam | None = _loss_param()
    engine: Engine | None = param(EnumKind(Engine))
    axis: int | None = param(INT32)

    def _check(self) -> None:
        if len(self.tops) == 2:
            # Caffe wants a loss_weight per top here, and this Caffe's SoftmaxWithLoss
            # hands them all to its inner one-top Softmax layer, which rejects two.
            self._fail("tops", "this Caffe's SoftmaxWithLoss cannot output the "
                       "probabilities as a second top; add a SoftmaxLayer for them")

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        self._check_batch(bottoms)
        self._check_labels(bottoms, 1 if self.axis is None else self.axis)
        return ((), bottoms[0])[:len(self.tops)]


@layer("EuclideanLoss", bottoms=(2, 2))
class EuclideanLoss(_Loss):
    """``sum((a - b)^2) / 2N`` for two bottoms of equal size per example.

    Attributes:
        loss_param: normalization options.
    """

    loss_param: LossParam | None = _loss_param()

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        self._check_batch(bottoms)
        if count(bottoms[0], 1) != count(bottoms[1], 1):
            self._fail("bottoms", f"'{self.bottoms[0]}' {_shape_text(bottoms[0])} and "
                       f"'{self.bottoms[1]}' {_shape_text(bottoms[1])} must have the same "
                       "size per example")
        return ((),)


@layer("SigmoidCrossEntropyLoss", bottoms=(2, 2))
class SigmoidCrossEntropyLoss(_Loss):
    """Cross-entropy of sigmoid(scores) against targets in [0, 1] of the same count.

    Attributes:
        loss_param: ``ignore_label`` and ``normalization``.
    """

    loss_param: LossParam | None = _loss_param()

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        self._check_batch(bottoms)
        if count(bottoms[0]) != count(bottoms[1]):
            self._fail("bottoms", f"'{self.bottoms[0]}' {_shape_text(bottoms[0])} and "
                       f"'{self.bottoms[1]}' {_shape_text(bottoms[1])} must have the same "
                       "count")
        return ((),)


@layer("HingeLoss", param="hinge_loss_param", bottoms=(2, 2))
class HingeLoss(_Loss):
    """One-vs-all hinge loss of scores against integer labels (an SVM).

    Attributes:
        norm: ``HingeNorm.L1`` (Caffe's default) or ``L2``.
        loss_param: normalization options.
    """

    norm: HingeNorm | None = param(EnumKind(HingeNorm))
    loss_param: LossParam | None = _loss_param()

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        self._check_batch(bottoms)
        if count(bottoms[1]) != bottoms[0][0]:
            self._fail("bottoms", f"'{self.bottoms[1]}' {_shape_text(bottoms[1])} must hold "
                       f"one label per example of '{self.bottoms[0]}' "
                       f"{_shape_text(bottoms[0])}")
        return ((),)


@layer("ContrastiveLoss", param="contrastive_loss_param", bottoms=(3, 3))
class ContrastiveLoss(_Loss):
    """The contrastive loss of pairs of features (a Siamese net).

    Bottoms: two ``(N, C)`` (or ``(N, C, 1, 1)``) features and an ``(N,)``
    similarity label (1 similar, 0 dissimilar).

    Attributes:
        margin: how far apart dissimilar pairs are pushed (default: 1).
        legacy_version: Caffe's original formulation.
        loss_param: normalization options.
    """

    margin: float | None = param(REAL)
    legacy_version: bool | None = param(BOOL)
    loss_param: LossParam | None = _loss_param()

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        a, b, similar = bottoms

        def legacy(shape: Shape, i: int) -> int:  # Blob::LegacyShape
            return shape[i] if i < len(shape) else 1
        flat = all(legacy(s, i) == 1 for s in (a, b) for i in (2, 3)) and len(a) <= 4 \
            and len(b) <= 4
        if not flat or legacy(a, 1) != legacy(b, 1) or a[:1] != b[:1]:
            self._fail("bottoms", f"the features '{self.bottoms[0]}' {_shape_text(a)} and "
                       f"'{self.bottoms[1]}' {_shape_text(b)} must both be (N, C)")
        if len(similar) > 4 or any(legacy(similar, i) != 1 for i in (1, 2, 3)) \
                or similar[:1] != a[:1]:
            self._fail("bottoms", f"the similarity '{self.bottoms[2]}' "
                       f"{_shape_text(similar)} must be (N,) with N = {a[0]}")
        return ((),)


@layer("Accuracy", param="accuracy_param", bottoms=(2, 2), tops=(1, 2))
class AccuracyLayer(_Loss):
    """The fraction of examples whose label is among the ``top_k`` scores.

    Usually ``include=Phase.TEST``. An optional second top holds the accuracy
    per class.

    Attributes:
        top_k: count a hit within the k best scores (default: 1).
        axis: the class axis (default: 1).
        ignore_label: a label value that is not scored.
    """

    top_k: int | None = param(POSITIVE)
    axis: int | None = param(INT32)
    ignore_label: int | None = param(INT32)

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        scores, labels = bottoms
        axis = self._axis(1 if self.axis is None else self.axis, scores)
        k = self.top_k or 1
        if count(labels) and k > count(scores) // count(labels):
            self._fail("top_k", f"top_k {k} exceeds the {count(scores) // count(labels)} "
                       f"classes of '{self.bottoms[0]}' {_shape_text(scores)}")
        self._check_labels(bottoms, axis)
        return ((), (scores[axis],))[:len(self.tops)]
