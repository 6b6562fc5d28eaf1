"""How a round's results become the next weights: one function, wherever it runs.

The driver runs :func:`next_weights` on the whole vector once a round's
results are summed. With ``exchange="ring"`` every task runs it on its shard
of the sum (and the driver on the sums the tasks push), so every copy of the
weights in the cluster is the same, bit for bit. That is why it must stay a
pure, elementwise function of the round's start weights and the sum of the
workers' results: elementwise, it gives the same floats on a shard as on the
whole; pure, it gives them on every node. An outer optimizer
(:class:`~sparknet.spark.outer.Outer`) is such a step with a state of its
own (a momentum buffer): the driver runs it here; ring tasks would need
their shard of the state to run it too, so with a stateful one they push the
sums and fetch the next weights from the driver (the ring's all-gather
carries averaging's and EASGD's weights only).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sparknet.spark.outer import Outer


def next_weights(start: np.ndarray, total: np.ndarray, out: np.ndarray, *, workers: int,
                 easgd_rate: float | None = None, outer: Outer | None = None,
                 state: np.ndarray | None = None, scratch: np.ndarray | None = None
                 ) -> np.ndarray:
    """The weights after a round: ``out`` (which may be ``start`` itself).

    ``total`` is the sum of the K = ``workers`` results: trained weights for
    SparkNet's averaging (the mean is next, or ``outer``'s step from it, with
    its ``state`` updated in place), ``x_i - start`` for EASGD (the centre
    moves by ``easgd_rate`` times their sum). EASGD and an outer optimizer use
    ``scratch`` (default: ``total``, then overwritten). Arrays of the same
    shape; ``out`` float32, ``total`` float32 or float64 (an exact sum).
    """
    tmp = total if scratch is None else scratch
    if easgd_rate is not None:
        np.multiply(total, easgd_rate, out=tmp, casting="same_kind")
        np.add(start, tmp, out=out, casting="same_kind")
    elif outer is None or outer.is_average:
        np.divide(total, workers, out=out, casting="same_kind")
    else:
        np.divide(total, workers, out=tmp, casting="same_kind")  # the mean
        if out is not start:
            np.copyto(out, start)
        outer.step(out, tmp, state)
    return out
