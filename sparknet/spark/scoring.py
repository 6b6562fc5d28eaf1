"""The worker side of scoring: one forward loop for ``predict``, the ML UDF and the test rounds.

A :class:`Scorer` is the Python worker's cached net for a :class:`ScoreSpec`
(built once per process, shared with training), holding the weights the
driver sent (:func:`broadcast_weights`, read in place; not copied again while
the net still holds them); :meth:`Scorer.outputs` runs it over a batch of
examples at most ``batch`` at a time, :meth:`Scorer.metrics` gives the TEST
net's mean outputs. :func:`sparknet.spark.predict`'s task, the body of
:func:`sparknet.ml.caffe_udf` and the training run's test task all score
through it. Values reach it through the one conversion of
:mod:`sparknet.data.rdd` (``to_blob``/``to_blobs``).
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparknet.engine import NetSignature
from sparknet.proto import caffe_pb2
from sparknet.spark._comm import broadcast_flat, flat_from_broadcast
from sparknet.spark._messages import NetSpec, StoreHandle, TestReport, TestSpec
from sparknet.spark._store import open_store
from sparknet.spark._worker import apply_transforms, net_entry, task_info, write_flat

__all__ = ["NetSpec", "ScoreSpec", "Scorer", "broadcast_weights", "test_task"]


def broadcast_weights(sc: Any, flat: np.ndarray) -> Any:
    """Broadcast flat float32 weights once, for every task's :class:`Scorer`."""
    return broadcast_flat(sc, np.ascontiguousarray(flat, np.float32))


@dataclass(frozen=True)
class ScoreSpec:
    """What every task needs to score with a net (small, picklable)."""

    net: NetSpec
    weights_id: str  # the weights the broadcast holds: a net holding them is not written again
    inputs: tuple[str, ...]  # every TEST input blob, in order (those not given are zeros)
    shapes: dict[str, tuple[int, ...]]  # per example
    batch: int  # examples per forward pass
    blobs: tuple[str, ...]  # the blobs to return

    @classmethod
    def of(cls, param: caffe_pb2.SolverParameter, signature: NetSignature,
           blobs: Sequence[str], batch_size: int | None = None, *, gpu: bool = False,
           blas_threads: int | None = None) -> ScoreSpec:
        """Scoring ``blobs`` of the TEST net of ``param`` (``batch_size``: the net's own)."""
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        inputs = signature.fed("TEST")
        for blob in blobs:
            signature.check_blob(blob)
        return cls(NetSpec.of(param, gpu, blas_threads), uuid.uuid4().hex, inputs,
                   dict(signature.example_shapes("TEST")),
                   int(batch_size or signature.test_batch), tuple(blobs))


class Scorer:
    """This process's cached net for ``net``, holding ``weights``.

    ``weights``: a flat float32 array, or what :func:`broadcast_weights`
    returned (read only when the net does not hold ``weights_id`` already).
    ``forget_state``: the weights replace a partition's training state (a
    net that a training round would continue from memory must restore it).
    """

    def __init__(self, net: NetSpec, weights: Any, weights_id: str | None = None, *,
                 forget_state: bool = True):
        self.entry = net_entry(net)
        self.net = self.entry.net
        if weights_id is None or self.entry.weights_id != weights_id:
            flat = weights if isinstance(weights, np.ndarray) else flat_from_broadcast(weights)
            write_flat(self.net, flat)
            self.entry.weights_id = weights_id
            if forget_state and self.entry.tag not in (None, "fresh"):
                self.entry.tag = None  # a training round restores its own state from its file

    @classmethod
    def of(cls, spec: ScoreSpec, weights: Any) -> Scorer:
        return cls(spec.net, weights, spec.weights_id)

    def outputs(self, spec: ScoreSpec, given: Mapping[str, np.ndarray], n: int
                ) -> dict[str, np.ndarray]:
        """``spec.blobs`` for ``n`` examples, each blob as ``(n, values per example)``.

        ``given``: arrays of ``n`` examples by input blob; inputs not given
        are fed zeros. One forward pass per ``spec.batch`` examples.
        """
        outs: dict[str, list[np.ndarray]] = {b: [] for b in spec.blobs}
        for lo in range(0, n, spec.batch):
            hi = min(n, lo + spec.batch)
            inputs = {name: (given[name][lo:hi] if name in given else
                             np.zeros((hi - lo, *spec.shapes[name]), np.float32))
                      for name in spec.inputs}
            out = self.net.forward(inputs, list(spec.blobs))
            for b in spec.blobs:
                outs[b].append(out[b].reshape(hi - lo, -1))
        return {b: np.concatenate(v) if len(v) > 1 else v[0] for b, v in outs.items()}

    def metrics(self, batches: Iterable[Mapping[str, np.ndarray]]) -> dict[str, Any]:
        """The TEST net's outputs averaged over ``batches``, as plain floats and lists."""
        return {k: (float(v) if np.ndim(v) == 0 else np.asarray(v).tolist())
                for k, v in self.net.test(batches).items()}


# -- the training run's test task ------------------------------------------------------------

def test_task(spec: TestSpec, channel: Any, extras_bc: Any, partition: int,
              handles: Iterable[StoreHandle]) -> Iterator[TestReport]:
    """Score the channel's weights on one cached test partition."""
    todo = list(handles)
    for handle in todo:
        t0 = time.perf_counter()
        task = task_info(handle.partition)
        store = open_store(handle)
        if store is None:
            yield TestReport(task, missing_store=True)
            continue
        # EASGD: the partition's local weights are overwritten, restore them next round
        scorer = Scorer(spec.net, channel.weights(), forget_state=spec.local_weights)
        transforms = extras_bc.value.test_transform if extras_bc is not None else {}
        metrics = (scorer.metrics(_test_batches(store, spec, transforms, handle.partition))
                   if store.n else {})
        yield TestReport(task, n=store.n, seconds=time.perf_counter() - t0, metrics=metrics)


def _test_batches(store: Any, spec: TestSpec, transforms: Mapping[str, Callable[..., Any]],
                  partition: int) -> Iterator[dict[str, np.ndarray]]:
    for k, batch in enumerate(store.sequential(spec.batch, spec.names)):
        yield apply_transforms(transforms, batch, [spec.seed, partition, k, 2])
