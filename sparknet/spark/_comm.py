"""Moving weights between the driver and the workers: one protocol, two exchanges.

A round needs two moves: the driver's weights out to every task, and every
task's result back into one sum. An :class:`Exchange` does both on the
driver (``publish`` / ``accept`` / ``missing`` / ``spliced`` / ``end`` /
``release`` / ``close``); the task gets a small picklable :class:`Channel`
with ``weights()`` and ``send()``. :func:`open_exchange` picks one:

* :class:`~sparknet.spark._socket_exchange.SocketExchange` (the default) — a
  TCP server in the driver; every byte moves once, results are added up as
  they arrive, each partition's exactly once.
* :class:`~sparknet.spark._spark_exchange.SparkExchange` — Spark's own
  broadcast and task results, for clusters where executors cannot reach the
  driver or where Spark's encryption must cover the weights.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np

from sparknet.spark._socket_exchange import (  # noqa: F401 - this module is their one entry
    _FETCHED,
    _FP,
    _MAGIC_X,
    _REP,
    _REQ,
    OP_FETCH,
    OP_PING,
    OP_PUSH,
    PUSH_CHUNK,
    ST_BAD,
    ST_DONE,
    ST_OK,
    ST_STALE,
    SocketChannel,
    SocketExchange,
    _recv_exact,
    _seconds,
    forget_fetched,
)
from sparknet.spark._spark_exchange import (  # noqa: F401 - this module is their one entry
    CHUNK,
    HEADER_BYTES,
    FlatHeader,
    SparkChannel,
    SparkExchange,
    _partial_sum,
    _RawBroadcast,
    broadcast_flat,
    chunks,
    destroy,
    flat_from_broadcast,
    fold,
    stream,
    tree_sum,
)

log = logging.getLogger(__name__)

MODES = ("auto", "socket", "spark")


@runtime_checkable
class Channel(Protocol):
    """What a task is given: the round's weights, and a way to send its result back."""

    def weights(self) -> np.ndarray:
        """The published flat vector (read-only)."""

    def send(self, partition: int, flat: np.ndarray) -> Iterator[Any]:
        """Send ``flat`` as ``partition``'s result; returns the items to yield (if any)."""


@runtime_checkable
class Exchange(Protocol):
    """The driver's side: publish weights, accumulate the results of one round."""

    name: str

    def where(self) -> str:
        """Where the weights travel (for messages)."""

    def publish(self, flat: np.ndarray) -> Channel:
        """Serve ``flat`` (unchanged until :meth:`release`); the channel tasks read it from."""

    def release(self, channel: Channel) -> None:
        """Stop serving the channel's vector."""

    def accept(self, channel: Channel, acc: np.ndarray) -> Channel:
        """Zero ``acc``; results sent through the returned channel are added into it."""

    def missing(self, partitions: Iterable[int]) -> list[int]:
        """Those of ``partitions`` whose result has not all arrived."""

    def spliced(self) -> list[int]:
        """Partitions whose result was finished by an attempt that computed another one."""

    def end(self) -> None:
        """Stop accumulating."""

    def close(self) -> None:
        """Release everything the exchange holds."""


def _encrypted(sc: Any) -> bool:
    conf = sc.getConf()
    return any(conf.get(k, "false").lower() == "true" for k in
               ("spark.network.crypto.enabled", "spark.io.encryption.enabled"))


def open_exchange(sc: Any, mode: str, reduction: str, handles: Any,
                  event: Callable[..., None]) -> Exchange:
    """How weights and results travel: the driver's socket exchange, else Spark's paths.

    ``mode`` is ``train(exchange=)``; ``handles`` the cached training handles
    (every executor holding training data must reach the socket); ``event``
    logs into the run's log (``event(message, *args, level=...)``). A Spark
    Connect client has neither: its weights travel inside its queries
    (:class:`sparknet.spark.connect.PlanExchange`).
    """
    from sparknet.spark import connect

    if connect.is_client(sc):
        return connect.open_exchange(mode, reduction, event)
    chosen = mode
    if chosen == "auto":
        if reduction == "tree":
            chosen = "spark"  # partial sums on the executors come through Spark
        elif _encrypted(sc):
            chosen = "spark"  # the exchange does not encrypt: keep the weights in Spark's
    if chosen == "spark":
        return SparkExchange(sc)
    if _encrypted(sc):  # exchange="socket", asked for
        event("exchange='socket': the weights travel unencrypted although Spark "
              "encrypts its own traffic", level=logging.WARNING)
    try:
        exchange = SocketExchange.for_context(sc)
    except OSError as e:
        if mode == "socket":
            raise
        event("cannot open the driver's weight exchange (%s); weights travel "
              "through Spark instead", e, level=logging.WARNING)
        return SparkExchange(sc)
    try:
        from sparknet.spark._worker import ping_task

        sc.setJobDescription("sparknet: reach the weight exchange")
        probe = exchange.publish(np.zeros(1, np.float32))
        failed = [(host, err) for host, err in handles.rdd.mapPartitions(
            functools.partial(ping_task, probe)).collect() if err]
    except BaseException:
        exchange.close()
        raise
    if not failed:
        event("weights travel through the driver's exchange at %s", exchange.where())
        return exchange
    exchange.close()
    host, err = failed[0]
    if mode == "socket":
        raise ConnectionError(f"executor {host} cannot reach the driver's weight exchange "
                              f"at {exchange.where()}: {err}")
    event("executor %s cannot reach the driver's weight exchange at %s (%s); "
          "weights travel through Spark instead", host, exchange.where(), err,
          level=logging.WARNING)
    return SparkExchange(sc)
