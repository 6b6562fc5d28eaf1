"""Moving weights between the driver and the workers: one protocol, three exchanges.

A round needs two moves: the driver's weights out to every task, and every
task's result back into one sum. An :class:`Exchange` does both on the
driver (``publish`` / ``accept`` / ``missing`` / ``spliced`` / ``end`` /
``release`` / ``close``); the task gets a small picklable :class:`Channel`
with ``weights()``, ``send()`` and ``absent()``. :func:`open_exchange` picks one:

* :class:`~sparknet.spark._socket_exchange.SocketExchange` — a TCP server in
  the driver (a star); every byte moves once, results are added up as they
  arrive, each partition's exactly once. 2·K model copies a round cross the
  driver's link.
* :class:`~sparknet.spark._ring_exchange.RingExchange` — the round's tasks
  reduce-scatter and all-gather among themselves in a barrier stage; each
  node moves about 2·M floats whatever K, the driver receives M.
* :class:`~sparknet.spark._spark_exchange.SparkExchange` — Spark's own
  broadcast and task results, for clusters where executors cannot reach the
  driver or where Spark's encryption must cover the weights.

``exchange="auto"`` takes the ring when it pays (:func:`ring_pays`: K and
the model's size, by the figures of ``bench/cluster_scaling.py``) and the
cluster can run it, else the socket, else Spark's paths.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from sparknet.spark._ring_exchange import (  # noqa: F401 - this module is their one entry
    OP_PUT,
    RingChannel,
    RingExchange,
    shard_bounds,
)
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

MODES = ("auto", "socket", "ring", "spark")

#: exchange="auto" takes the ring on a cluster from this many workers on ...
RING_MIN_WORKERS = 3
#: ... and with two workers for models of at least this many bytes (below, the star's
#: smaller fixed cost wins: bench/cluster_scaling.py, 4 MB at K = 2: star 0.42 s, ring 0.53 s)
RING_MIN_BYTES = 16 << 20


@runtime_checkable
class Channel(Protocol):
    """What a task is given: the round's weights, and a way to send its result back."""

    def weights(self, home: Path | None = None) -> np.ndarray:
        """The published flat vector (read-only).

        ``home``: the partition's state folder on this executor, where a
        channel may keep weights that outlive this process (the ring does).
        """

    def send(self, partition: int, flat: np.ndarray, home: Path | None = None
             ) -> Iterator[Any]:
        """Send ``flat`` as ``partition``'s result; returns the items to yield (if any)."""

    def absent(self, partition: int) -> None:
        """``partition``'s task sends no result this round (the ring must not wait for it)."""


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


def ring_pays(workers: int, num_params: int) -> bool:
    """The rule of ``exchange="auto"`` between the star and the ring, by K and model size.

    From ``bench/cluster_scaling.py`` on 1 Gbit/s links: the star's round time
    grows with K (2·K model copies through the driver's link), the ring's
    barely. From K = 3 the ring is faster for every model size measured (4 MB
    to 244 MB); with K = 2 only from some megabytes on (28 MB: ring 0.62 s,
    star 0.96 s; 4 MB: ring 0.53 s, star 0.42 s). The README has the figures.
    """
    return workers >= RING_MIN_WORKERS or (workers == 2 and 4 * num_params >= RING_MIN_BYTES)


def ring_blocker(sc: Any, workers: int) -> str | None:
    """Why this cluster cannot run ring rounds (barrier stages of ``workers`` tasks), or None."""
    from sparknet.spark._data import task_slots

    if sc.getConf().get("spark.dynamicAllocation.enabled", "false").lower() == "true":
        return "dynamic allocation is on, and barrier stages need a fixed set of executors"
    slots = task_slots(sc)
    if slots < workers:
        return (f"{workers} workers need {workers} task slots at once (a barrier stage), "
                f"the cluster has {slots}")
    return None


def _one_machine(sc: Any) -> bool:
    return str(sc.master).startswith("local")  # local[N] and local-cluster[...]: no links


def open_exchange(sc: Any, mode: str, reduction: str, handles: Any,
                  event: Callable[..., None], *, workers: int = 1, num_params: int = 0,
                  easgd_rate: float | None = None, gather: bool = True) -> Exchange:
    """How weights and results travel: the ring or the driver's star, else Spark's paths.

    ``mode`` is ``train(exchange=)``; ``handles`` the cached training handles
    (every executor holding training data must reach the driver's socket);
    ``event`` logs into the run's log (``event(message, *args, level=...)``);
    ``workers``, ``num_params`` and ``easgd_rate`` describe the run (the rule
    of ``"auto"``, and what ring tasks compute); ``gather=False``: ring tasks
    push their sums but do not gather the next weights (an outer optimizer with
    state, which only the driver holds, makes them). A Spark Connect client has
    no socket, ring or broadcast: its weights travel inside its queries
    (:class:`sparknet.spark.connect.PlanExchange`), whatever ``"auto"`` would
    pick on a classic session.
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
        elif (ring_pays(workers, num_params) and not _one_machine(sc)
              and ring_blocker(sc, workers) is None):
            chosen = "ring"
    if chosen == "spark":
        return SparkExchange(sc)
    if chosen == "ring" and mode == "ring":
        blocker = ring_blocker(sc, workers)
        if blocker is not None:
            raise ValueError(f"exchange='ring' cannot run here: {blocker}; use "
                             "exchange='socket' or 'auto'")
    if _encrypted(sc):  # exchange="socket"/"ring", asked for
        event("exchange=%r: the weights travel unencrypted although Spark encrypts its own "
              "traffic", mode, level=logging.WARNING)
    try:
        exchange = (RingExchange.for_context(sc, workers=workers, easgd_rate=easgd_rate,
                                             gather=gather)
                    if chosen == "ring" else SocketExchange.for_context(sc))
    except OSError as e:
        if mode in ("socket", "ring"):
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
        event("weights travel through %s", exchange.where() if chosen == "ring"
              else f"the driver's exchange at {exchange.where()}")
        return exchange
    exchange.close()
    host, err = failed[0]
    if mode in ("socket", "ring"):
        raise ConnectionError(f"executor {host} cannot reach the driver's weight exchange "
                              f"at {exchange.where()}: {err}")
    event("executor %s cannot reach the driver's weight exchange at %s (%s); "
          "weights travel through Spark instead", host, exchange.where(), err,
          level=logging.WARNING)
    return SparkExchange(sc)
