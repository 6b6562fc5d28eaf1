"""How a round's results become the next weights: one function, wherever it runs.

The driver runs :func:`next_weights` on the whole vector once a round's
results are summed. With ``exchange="ring"`` every task runs it on its shard
of the sum (and the driver on the sums the tasks push), so every copy of the
weights in the cluster is the same, bit for bit. That is why it must stay a
pure, elementwise function of the round's start weights and the sum of the
workers' results: elementwise, it gives the same floats on a shard as on the
whole; pure, it gives them on every node. A step with state of its own (an
outer optimizer's momentum) belongs here too, its state sharded like the
weights.
"""
from __future__ import annotations

import numpy as np


def next_weights(start: np.ndarray, total: np.ndarray, out: np.ndarray, *, workers: int,
                 easgd_rate: float | None = None, scratch: np.ndarray | None = None
                 ) -> np.ndarray:
    """The weights after a round: ``out`` (which may be ``start`` itself).

    ``total`` is the sum of the K = ``workers`` results: trained weights for
    SparkNet's averaging (the mean is next), ``x_i - start`` for EASGD (the
    centre moves by ``easgd_rate`` times their sum). EASGD uses ``scratch``
    (default: ``total``, then overwritten) for the scaled sum. Arrays of the
    same shape; ``out`` float32, ``total`` float32 or float64 (an exact sum).
    """
    if easgd_rate is None:
        np.divide(total, workers, out=out, casting="same_kind")
    else:
        tmp = total if scratch is None else scratch
        np.multiply(total, easgd_rate, out=tmp, casting="same_kind")
        np.add(start, tmp, out=out, casting="same_kind")
    return out
