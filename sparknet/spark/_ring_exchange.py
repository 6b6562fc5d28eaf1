"""Weights through a ring of the round's tasks: reduce-scatter, then all-gather.

The star exchange moves 2·K model copies a round through the driver's link.
Here the round job is a barrier stage: its K tasks start together, tell the
driver's exchange where they listen and learn where the others do (a TCP
round trip: ``BarrierTaskContext.allGather`` would do it too, but Spark polls
it once a second, which costs a second a round), and connect in a ring, each
to the executor of the next partition. After training, a task sends 1/K of
its result to the next, K − 1 times, adding what it gets from the previous
one into its own (reduce-scatter): each task ends with the sum of one shard,
added up in ring order, the same on every run. It turns that shard into the
next weights with :func:`~sparknet.spark._combine.next_weights` (the function
the driver runs too), pushes the shard's *sum* to the driver, and passes the
new shard around the ring K − 1 times (all-gather). Each node sends and
receives about 2·M floats a round whatever K, as gloo's allreduce does.

The driver needs the weights only after a round that tests, checkpoints or
ends the training: then each task also pushes its shard of the next weights
to it (M/K more floats per node). Between such rounds the weights stay on the
executors only. Each task gathers them beside the round's start and then
writes them, in a thread of its own, into a file in its partition's state
folder: that copy (two shards of K, or all of them where the partition's
next round may run in another Python worker, see :func:`_keeps_whole`)
outlives the Python worker (which exits when a task fails), so a rerun
round's tasks find their start there, and when a round fails the driver
collects it from any executor that keeps it (:meth:`RingChannel.offer`)
before running it again. An outer optimizer's
rounds push the shard *sums* every round instead: the driver makes those
weights.

The next round's tasks start from the weights gathered in their own process
(or kept in their folder); a task that has neither (a new executor, the first
round) fetches them from the driver's TCP exchange, which
this one extends (:class:`RingExchange` is a
:class:`~sparknet.spark._socket_exchange.SocketExchange` that also forms the
rings and takes the pushed shards). A published vector carries a
fingerprint, so a stale copy is never used.

Every connection, to the driver or between executors, carries the run's
secret token and the round's key, as the driver's exchange always did; a
ring forms once per key (a retried stage's tasks are turned away, so Spark's
retries fail fast and the driver runs the round again under a new key). A
peer silent for the timeout (``spark.sparknet.ring.timeout``, default
``spark.network.timeout``) is given up on, naming its partition and host; the
failed task fails the barrier stage, and the driver runs the round again (and,
should the ring keep failing, sends that round through the star).
"""
from __future__ import annotations

import contextlib
import fcntl
import hmac
import itertools
import json
import logging
import os
import queue
import select
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sparknet.io import atomic_write_bytes
from sparknet.spark._combine import next_weights
from sparknet.spark._messages import CalledOff
from sparknet.spark._socket_exchange import (
    _FETCHED,
    _REP,
    PUSH_CHUNK,
    ST_DONE,
    ST_OK,
    ST_STALE,
    SocketChannel,
    SocketExchange,
    _fingerprint,
    _recv_exact,
    _recv_into,
    _refused,
    _seconds,
    _send_all,
)

log = logging.getLogger(__name__)

#: Ops the driver's exchange takes besides ping, fetch and push: a task joins its round's
#: ring (sends where it listens, gets where the others do); a task pushes a shard's sum.
OP_JOIN, OP_PUT = 4, 5
#: offset and floats of a pushed shard.
_PUT = struct.Struct("!qq")
#: A JSON message's length (what a task sends on joining, and the driver's answer).
_LEN = struct.Struct("!I")
#: What a task sends first on the ring connection it opens to the next task.
_MAGIC_R = b"SNR1"
_HELLO = struct.Struct("!4s16sqii")  # magic, token, accumulation key, rank, K
#: Shard boundaries fall on multiples of this many floats (64 bytes).
_ALIGN = 16
#: Floats a ring task receives, adds and passes on at a time (1 MiB).
PIECE = 1 << 18
#: In a partition's state folder: the two files the gathered weights alternate between
#: (the round's start stays whole while the next weights arrive), what each holds, and
#: the lock a writer holds until its file is whole and named (readers wait for it).
_KEEP_FILES = ("ring-0.f32", "ring-1.f32")
_KEPT = "ring.json"
_LOCK = "ring.lock"

def shard_bounds(size: int, k: int) -> list[int]:
    """The K + 1 offsets that cut ``size`` floats into K near-equal shards, none empty.

    Aligned to :data:`_ALIGN` floats where every shard still gets some (size
    >= _ALIGN·K); for a smaller vector unaligned, so that no shard is empty
    while size >= K: the driver tells shards apart by their offsets.
    """
    step = _ALIGN if size >= _ALIGN * k else 1
    inner = [min(size, -(-(size * i // k) // step) * step) for i in range(1, k)]
    return [0, *inner, size]


class RingChannel:
    """What a ring round's task is given: the driver's exchange, and how to reach its peers.

    ``star`` fetches from (and, in a fallback round, pushes to) the driver;
    ``origin`` is the accumulation whose gathered weights the published
    vector equals (``None``: fetch it), ``fingerprint`` its sampled checksum.
    ``held``: the driver has no copy of them (the executors keep it);
    ``push``: this round's tasks send the driver their shard of the next
    weights (it tests, checkpoints or ends the training after this round).
    """

    __slots__ = ("easgd_rate", "fingerprint", "gather", "gathered", "held", "origin", "push",
                 "star", "timeout", "waited", "workers")

    def __init__(self, star: SocketChannel, origin: int | None, fingerprint: int, workers: int,
                 easgd_rate: float | None, timeout: float, gather: bool = True,
                 held: bool = False, push: bool = True):
        self.star, self.origin, self.fingerprint = star, origin, int(fingerprint)
        self.workers, self.easgd_rate, self.timeout = int(workers), easgd_rate, float(timeout)
        self.gather = bool(gather)  # False: push the sums only; the driver makes the weights
        self.held, self.push = bool(held), bool(push)
        self.waited = 0.0  # in a task, after send(): seconds until every peer had joined
        self.gathered: int | None = None  # in a task, after send(): the fingerprint gathered

    def __getstate__(self) -> tuple:
        return (self.star, self.origin, self.fingerprint, self.workers, self.easgd_rate,
                self.timeout, self.gather, self.held, self.push)

    def __setstate__(self, state: tuple) -> None:
        (self.star, self.origin, self.fingerprint, self.workers, self.easgd_rate,
         self.timeout, self.gather, self.held, self.push) = state
        self.waited, self.gathered = 0.0, None

    @property
    def key(self) -> int:
        return self.star.key

    def with_star(self, star: SocketChannel) -> RingChannel:
        return RingChannel(star, self.origin, self.fingerprint, self.workers, self.easgd_rate,
                           self.timeout, self.gather, self.held, self.push)

    def pushing(self, push: bool) -> RingChannel:
        """This channel, its round's tasks sending the driver the next weights or not."""
        chan = self.with_star(self.star)
        chan.push = bool(push)
        return chan

    @property
    def sends_driver(self) -> bool:
        """Whether the round's tasks push shards to the driver (the weights, or the sums)."""
        return self.push or not self.gather

    def ping(self) -> None:
        self.star.ping()

    def weights(self, home: Path | None = None) -> np.ndarray:
        """The published vector: gathered in this process, kept in ``home``, else the driver's."""
        _settle()
        if self.origin is not None:
            tag = ("ring", self.star.token, self.origin)
            if (kept := _local(tag, self.fingerprint)) is not None:
                return kept
            if home is not None and (kept := _adopt(home, tag, self.fingerprint)) is not None:
                return kept
        if self.held:
            raise RuntimeError(
                f"sparknet: ring exchange: this process has no copy of the round's weights "
                f"(accumulation {self.origin}), and the driver keeps none between rounds that "
                f"neither test nor checkpoint (a new executor?); the driver collects them "
                f"from another executor and runs the round again")
        return self.star.weights()

    def offer(self, partition: int, home: Path | None) -> bool:
        """Send the driver the shards of the weights this channel names that this executor has.

        The task of :meth:`RingExchange.collect`: all of them from this
        process's copy, else those ``home``'s file keeps; the driver turns a
        shard away that another executor sent or is sending. Whether any was sent.
        """
        _settle()
        tag = ("ring", self.star.token, self.origin)
        flat = _local(tag, self.fingerprint)
        if flat is not None:
            bounds = shard_bounds(flat.size, self.workers)
            parts = [(a, flat[a:b]) for a, b in itertools.pairwise(bounds)]
        else:
            parts = _kept_parts(home, tag, self.fingerprint)[1] if home is not None else []
        star, sent = self.star, 0
        for offset, data in parts:
            try:
                with star._connect() as sock:
                    status, _ = star._request(sock, OP_PUT, partition, star.key)
                    if status == ST_OK:
                        sock.sendall(_PUT.pack(offset, data.size))
                        status, _ = _REP.unpack(_recv_exact(sock, _REP.size))
                    if status != ST_OK:
                        continue  # the driver has this shard, or it is on its way
                    _send_all(sock, memoryview(data).cast("B"))
                    status, _ = _REP.unpack(_recv_exact(sock, _REP.size))
            except (ConnectionError, TimeoutError) as e:
                raise ConnectionError(f"sparknet: sending partition {partition}'s kept shard "
                                      f"at {offset} to the driver's exchange at "
                                      f"{star._where()} failed: {e}") from e
            sent += status == ST_DONE
        return sent > 0

    def absent(self, partition: int) -> None:
        """This task has no result (no data here, or it diverged): call the collective off."""
        _Ring.join(self, partition, absent=True)

    def meet(self, me: dict) -> list[dict]:
        """Tell the driver where this task listens; where every task of the ring does."""
        star = self.star
        try:
            with star._connect() as sock:
                status, _ = star._request(sock, OP_JOIN, me["rank"], star.key)
                if status == ST_STALE:
                    raise RuntimeError(
                        f"sparknet: ring exchange: partition {me['rank']} cannot join this "
                        f"round's ring at {star._where()}: it was formed already (this is a "
                        f"retried stage; the driver runs the round again) or the round is over")
                body = json.dumps(me).encode()
                sock.sendall(_LEN.pack(len(body)) + body)
                sock.settimeout(None)  # the others join when their training is done
                (n,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
                answer = json.loads(_recv_exact(sock, n))
        except (ConnectionError, TimeoutError) as e:
            raise ConnectionError(f"sparknet: ring exchange: partition {me['rank']} could not "
                                  f"join the ring at the driver's exchange at {star._where()}: "
                                  f"{e}") from e
        if "error" in answer:
            raise ConnectionError(f"sparknet: ring exchange: {answer['error']}")
        return answer["peers"]

    def send(self, partition: int, flat: np.ndarray, home: Path | None = None
             ) -> Iterator[Any]:
        """Reduce-scatter ``flat`` (overwritten), all-gather the next weights (kept in ``home``).

        Pushes a shard to the driver where it needs one. Returns once this
        task's part is done: nothing to yield, or one :class:`CalledOff` when
        another task of the round could not take part.
        """
        if flat.size != self.star.size or flat.dtype != np.float32:
            raise ValueError(f"result of {flat.size} {flat.dtype} for a {self.star.size}-float "
                             "exchange")
        t0 = time.perf_counter()
        ring = _Ring.join(self, partition)
        self.waited = time.perf_counter() - t0
        if ring.called_off is not None:
            return iter([CalledOff(partition, ring.called_off)])
        with ring:
            ring.allreduce(flat, home)
        return iter(())


def _local(tag: tuple, fingerprint: int) -> np.ndarray | None:
    """This process's copy of the weights ``tag`` names: the last gathered, or the one before."""
    for rec in (_FETCHED, _FETCHED.get("previous") or {}):
        if rec.get("tag") == tag and rec.get("print") == fingerprint:
            return rec["flat"]
    return None


def _records(home: Path) -> list[dict]:
    """What ``home``'s kept files hold, newest first (at most one record per file)."""
    try:
        recs = json.loads((home / _KEPT).read_text())
    except (OSError, ValueError):
        return []
    return [r for r in recs if isinstance(r, dict)] if isinstance(recs, list) else []


def _write_records(home: Path, recs: list[dict]) -> None:
    atomic_write_bytes(home / _KEPT, json.dumps(recs).encode())


#: Seconds a reader waits for a kept copy being written (a writer takes well under one),
#: or a writer for readers, before going on without it.
LOCK_WAIT = 60.0


def _locked(home: Path, exclusive: bool) -> int | None:
    """An open descriptor of ``home``'s lock file, locked (``None``: no folder to lock).

    ``flock`` locks between processes (and between descriptors of one): a
    Python worker that reads ``home``'s copy waits while another one, which
    ran the partition's last task, is still writing it. Closing the descriptor
    (or the writer's exit) releases the lock. A lock still held after
    :data:`LOCK_WAIT` seconds (a writer hung on its disk) raises ``TimeoutError``.
    """
    try:
        fd = os.open(home / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    except FileNotFoundError:
        return None
    deadline, pause = time.monotonic() + LOCK_WAIT, 0.001
    while True:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise TimeoutError(f"{home / _LOCK} was held for over {LOCK_WAIT:.0f} s "
                                   "by another process") from None
            time.sleep(pause)
            pause = min(2 * pause, 0.05)


@contextlib.contextmanager
def _reading(home: Path) -> Iterator[None]:
    """While ``home``'s kept copy is read: no writer is halfway through it."""
    fd = _locked(home, exclusive=False)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


def _kept_parts(home: Path, tag: tuple, fingerprint: int
                ) -> tuple[int, list[tuple[int, np.ndarray]]]:
    """(size, [(offset, floats)...]) of the weights ``tag`` names that ``home`` keeps.

    The parts are views of the file's floats, read whole, in the file's order.
    """
    want = [tag[1].hex(), tag[2], fingerprint]
    try:
        with _reading(home):  # (the newest record naming them, and its file's floats)
            meta = next((m for m in _records(home)
                         if [m.get("token"), m.get("key"), m.get("print")] == want), None)
            if meta is None:
                return -1, []
            data = np.fromfile(home / str(meta["file"]), np.float32)
        parts, pos = [], 0
        for offset, count in meta["parts"]:
            parts.append((int(offset), data[pos:pos + count]))
            pos += count
    except TimeoutError as e:
        log.warning("ring exchange: not reading the weights kept in %s: %s", home, e)
        return -1, []
    except (OSError, ValueError, KeyError, TypeError):
        return -1, []
    return (int(meta.get("size", -1)), parts) if pos == data.size else (-1, [])


def _adopt(home: Path, tag: tuple, fingerprint: int) -> np.ndarray | None:
    """The weights ``tag`` names, whole from ``home``'s kept file (else ``None``)."""
    size, parts = _kept_parts(home, tag, fingerprint)
    if not parts or [(o, o + p.size) for o, p in parts] != list(
            itertools.pairwise([0, *(o for o, _ in parts[1:]), size])):
        return None  # (two shards of K > 2: the driver collects the rest from others)
    flat = parts[0][1].base  # the file's floats: the shards in order, the whole vector
    if flat is None or flat.size != size or _fingerprint(flat, 0) != fingerprint:
        return None
    flat.flags.writeable = False
    _FETCHED.clear()
    _FETCHED.update(tag=tag, flat=flat, print=fingerprint)
    return flat


def _python_workers() -> int | None:
    """How many Python workers this executor has now (this one among them), if Linux says.

    They are the children of this worker's parent, PySpark's daemon, which
    forks them: busy ones and idle ones, which Spark hands the next tasks to.
    """
    ppid = os.getppid()
    try:
        return len(Path(f"/proc/{ppid}/task/{ppid}/children").read_text().split())
    except OSError:  # (not Linux, or a kernel without the file: keep the whole vector)
        return None


def _worker_reused() -> bool:
    """Whether Spark reuses this Python worker after its task (``spark.python.worker.reuse``)."""
    return bool(os.environ.get("SPARK_REUSE_WORKER"))


def _keeps_whole(executor_tasks: int | None) -> bool:
    """Whether the partition's next round may run in another Python worker than this one.

    Spark hands an executor's task to whichever of its Python workers has
    waited longest: when the executor has more of them than it runs ring
    tasks (an earlier job ran more tasks on it at once), the partition's next
    round runs in a process that did not take part in this one, and that
    starts from the kept file, which must then hold the whole vector. So must
    it where Spark starts a new Python worker for every task
    (``spark.python.worker.reuse`` false).
    """
    if executor_tasks is None or not _worker_reused():
        return True
    workers = _python_workers()
    return workers is None or workers > executor_tasks


class _Keeper:
    """Writes gathered weights, shard by shard, into ``home``'s kept file, then records them.

    A ring task keeps the shard it owns and the next task's: two of K, so a
    lost executor's shards are still kept by a neighbour when the driver
    collects a failed round's start (and all are in the processes that live
    on), at K = 8 a quarter of the copying. Where the partition's next round
    may run in another Python worker of the executor (:func:`_keeps_whole`),
    it keeps the whole vector, for that process to start from (and the
    executor is a full source for the driver). Of the two files the keeper takes the one
    the newest record does not name (the round's start may be in that one),
    and drops the record of the file it overwrites first, so that a copy half
    written is never taken for a whole one; it holds ``home``'s lock from its
    creation until the record is written, so a reader in another process waits
    for the copy instead of missing it. :meth:`start` writes in a thread of its
    own, off the collective's path; :func:`_settle` waits for it (every use of
    a copy calls it first, so a task that fails later has its copy kept whole).
    """

    def __init__(self, home: Path, size: int):
        _settle()
        home.mkdir(parents=True, exist_ok=True)
        self.home, self.size = home, size
        try:
            self.lock = _locked(home, exclusive=True)
        except TimeoutError as e:
            self.lock, self.error = None, e
            return
        self.error = None
        recs = _records(home)
        self.name = _KEEP_FILES[1 if recs and recs[0].get("file") == _KEEP_FILES[0] else 0]
        self.others = [r for r in recs if r.get("file") != self.name][:1]
        if len(self.others) != len(recs):
            _write_records(home, self.others)

    def write(self, parts: list[tuple[int, np.ndarray]], token: bytes, key: int,
              fingerprint: int) -> None:
        """Write ``parts`` ((offset, floats) of accumulation ``key``'s weights), record them."""
        if self.error is not None:
            raise self.error
        try:
            fd = os.open(self.home / self.name, os.O_WRONLY | os.O_CREAT, 0o600)
            try:  # (over the file's old pages, which stay in the page cache: no O_TRUNC)
                pos = 0
                for _, data in parts:
                    view = memoryview(data).cast("B")
                    done = 0
                    while done < len(view):
                        done += os.pwrite(fd, view[done:done + (64 << 20)], pos + done)
                    pos += len(view)
                os.ftruncate(fd, pos)
            finally:
                os.close(fd)
            _write_records(self.home, [{"token": token.hex(), "key": key, "print": fingerprint,
                                        "size": self.size, "file": self.name,
                                        "parts": [[o, d.size] for o, d in parts]},
                                       *self.others])
        finally:
            if self.lock is not None:
                os.close(self.lock)
                self.lock = None

    def start(self, parts: list[tuple[int, np.ndarray]], token: bytes, key: int,
              fingerprint: int) -> None:
        """:meth:`write` in a thread of its own (a failure is logged: the copy is insurance).

        Where Spark does not reuse Python workers (``spark.python.worker.reuse``
        false), the worker exits right after its task, which would cut the
        thread off mid-write: there the task writes before it returns.
        """
        def run() -> None:
            try:
                self.write(parts, token, key, fingerprint)
            except OSError as e:  # (TimeoutError too: the lock's)
                log.warning("ring exchange: could not keep the weights in %s: %s", self.home, e)

        _WRITING["thread"] = threading.Thread(target=run, name="sparknet-ring-keep",
                                              daemon=True)
        _WRITING["thread"].start()
        if not _worker_reused():
            _settle()


#: The thread writing this process's last gathered weights to its kept file, if any.
_WRITING: dict[str, threading.Thread] = {}


def _settle() -> None:
    """Wait until this process's kept file is written (before the copy is used again)."""
    thread = _WRITING.pop("thread", None)
    if thread is not None:
        thread.join()


def _gather_buffer(start: np.ndarray) -> np.ndarray:
    """Where this process gathers the next weights: not ``start``, reused from round to round.

    The buffer of the weights before the start (this process's previous copy)
    is taken, dropping that copy; only the first time a new one is made.
    """
    prev = _FETCHED.pop("previous", None) or {}
    buf = prev.get("flat")
    if buf is None or buf.size != start.size or buf is start or not buf.flags.owndata:
        buf = np.empty(start.size, np.float32)
    buf.flags.writeable = True
    return buf


class _Stream(threading.Thread):
    """Sends what is queued to it, in order, while the caller receives and adds.

    The ring's outgoing side: a piece reduced (or gathered) is forwarded as soon
    as it is complete, so the K − 1 steps of each phase run as one pipeline.
    ``sock=None``: the shard sum's push to the driver, which connects first.
    """

    def __init__(self, sock: socket.socket | None, push: tuple | None = None):
        super().__init__(name="sparknet-ring-send", daemon=True)
        self.sock, self.push = sock, push
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.start()

    def send(self, data: np.ndarray) -> None:
        self.queue.put(data)

    def run(self) -> None:
        try:
            if self.push is None:
                self._drain(self.sock)
            else:
                self._push(*self.push)
        except BaseException as e:  # noqa: BLE001 - re-raised by finish()
            self.error = e

    def _drain(self, sock: socket.socket) -> None:
        while (item := self.queue.get()) is not None:
            _send_all(sock, memoryview(item).cast("B"))

    def _push(self, chan: RingChannel, rank: int, offset: int, count: int) -> None:
        star = chan.star
        # Connect with the first piece, not before: the reduce-scatter may take longer than
        # the driver waits on a silent connection (spark.network.timeout)
        if (first := self.queue.get()) is None:
            return
        try:
            with star._connect() as sock:
                status, _ = star._request(sock, OP_PUT, rank, star.key)
                if status == ST_STALE:
                    raise RuntimeError("sparknet: the driver no longer takes this round's "
                                       "shards (a task of a round run again?)")
                sock.sendall(_PUT.pack(offset, count))
                _send_all(sock, memoryview(first).cast("B"))
                self._drain(sock)
                status, _ = _REP.unpack(_recv_exact(sock, _REP.size))
                if status != ST_DONE:
                    raise ConnectionError(f"the exchange answered status {status}")
        except OSError as e:  # (no route to the driver too: named as the driver's, not a peer's)
            raise ConnectionError(f"sparknet: pushing partition {rank}'s shard to the driver's "
                                  f"exchange at {star._where()} failed: {e}") from e

    def finish(self) -> None:
        self.queue.put(None)
        self.join()
        if self.error is not None:
            raise self.error


class _Peer:
    """Another task of the round, as its allGather message described it."""

    def __init__(self, msg: dict):
        self.rank: int = msg["rank"]
        self.host: str = msg["host"]
        self.port: int = msg["port"]
        self.name: str = msg["name"]
        self.absent: bool = msg["absent"]

    def __str__(self) -> str:
        where = self.host if self.name == self.host else f"{self.name} ({self.host})"
        return f"partition {self.rank} on {where}:{self.port}"


class _Ring:
    """One task's place in a ring round: its peers, its two connections, the collective."""

    def __init__(self, chan: RingChannel, rank: int, k: int, peers: list[_Peer],
                 server: socket.socket | None, executor_tasks: int | None = None):
        self.chan, self.rank, self.k = chan, rank, k
        self.peers, self.server = peers, server
        self.executor_tasks = executor_tasks  # the round's tasks on this one's executor
        self.me = peers[rank]
        self.called_off: str | None = None
        self.out: socket.socket | None = None  # to the next task
        self.inn: socket.socket | None = None  # from the previous task

    # -- rendezvous --------------------------------------------------------------------------
    @classmethod
    def join(cls, chan: RingChannel, partition: int, absent: bool = False) -> _Ring:
        """Meet the round's other tasks (every task calls this once, present or not)."""
        from pyspark import BarrierTaskContext

        ctx = BarrierTaskContext.get()
        infos = ctx.getTaskInfos()
        rank, k = ctx.partitionId(), len(infos)
        if rank != partition or k != chan.workers:  # pragma: no cover - one task per partition
            raise RuntimeError(f"ring rank {rank} of {k} runs partition {partition} of "
                               f"{chan.workers}")
        host = infos[rank].address.rsplit(":", 1)[0].strip("[]")
        server = None
        port = 0
        if not absent and k > 1:
            server = socket.create_server((host, 0), backlog=8)
            port = server.getsockname()[1]
        me = {"rank": rank, "host": host, "port": port, "name": socket.gethostname(),
              "absent": absent}
        try:
            peers = [_Peer(m) for m in chan.meet(me)]
        except BaseException:
            if server is not None:
                server.close()
            raise
        here = infos[rank].address  # (the executor's host:port)
        ring = cls(chan, rank, k, peers, server, sum(i.address == here for i in infos))
        gone = [p for p in peers if p.absent]
        if gone and not absent:
            ring.called_off = (f"{gone[0]} could not take part (its data is not on its "
                               f"executor, or its training diverged)")
            ring.close()
        return ring

    def __enter__(self) -> _Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for s in (self.out, self.inn, self.server):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()
        self.out = self.inn = self.server = None

    def _fail(self, what: str, peer: _Peer, e: BaseException) -> ConnectionError:
        return ConnectionError(
            f"sparknet: ring exchange: {what} {peer} failed (this is partition {self.rank} on "
            f"{self.me.name}; timeout {self.chan.timeout:.0f} s): {type(e).__name__}: {e}")

    def _connect(self) -> None:
        nxt = self.peers[(self.rank + 1) % self.k]
        prv = self.peers[(self.rank - 1) % self.k]
        timeout = self.chan.timeout
        try:
            out = socket.create_connection((nxt.host, nxt.port), timeout=timeout)
            out.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            out.sendall(_HELLO.pack(_MAGIC_R, self.chan.star.token, self.chan.key,
                                    self.rank, self.k))
            self.out = out
        except OSError as e:
            raise self._fail("connecting to", nxt, e) from e
        deadline = time.monotonic() + timeout
        self.server.settimeout(min(timeout, 5.0))
        while self.inn is None:
            if time.monotonic() > deadline:
                raise self._fail("waiting for a connection from", prv,
                                 TimeoutError(f"none within {timeout:.0f} s"))
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError as e:
                raise self._fail("waiting for a connection from", prv, e) from e
            try:
                conn.settimeout(min(timeout, 30.0))
                magic, token, key, rank, k = _HELLO.unpack(_recv_exact(conn, _HELLO.size))
            except (OSError, struct.error):
                conn.close()
                continue
            if (magic == _MAGIC_R and hmac.compare_digest(token, self.chan.star.token)
                    and (key, rank, k) == (self.chan.key, prv.rank, self.k)):
                conn.settimeout(timeout)
                self.inn = conn
            else:  # a stranger, or a task of another round: not part of this ring
                log.warning("ring exchange: partition %d refused a connection that is not "
                            "from %s of this round", self.rank, prv)
                conn.close()

    # -- the collective ----------------------------------------------------------------------
    def allreduce(self, flat: np.ndarray, home: Path | None = None) -> None:
        """Reduce-scatter ``flat``, make the next weights, gather them; push what the driver needs.

        One pipeline per phase: each piece received is added (reduce-scatter) or
        stored (all-gather) and queued for the next task at once; the pieces of
        the shard this task sums up are turned into the next weights (and,
        where the driver needs them, pushed to it) as they complete. The next
        weights are gathered beside the round's start (which stays whole, for a
        rerun) and written into ``home``'s kept file as they arrive.
        """
        chan, k, rank = self.chan, self.k, self.rank
        start = chan.weights(home)  # the round's start, cached since its fetch or gather
        bounds = shard_bounds(flat.size, k)

        def span(c: int) -> slice:
            c %= k
            return slice(bounds[c], bounds[c + 1])

        owned = span(rank + 1)
        mine = np.empty(owned.stop - owned.start, np.float32)
        scratch = np.empty(mine.size, np.float32) if chan.easgd_rate is not None else None
        pusher = (_Stream(None, (chan, rank, owned.start, mine.size)) if chan.sends_driver
                  else None)
        out = None
        prv = self.peers[(rank - 1) % k]
        phase = "connecting"
        try:
            if k > 1:
                self._connect()
                out = _Stream(self.out)
            buf = np.empty(max(1, min(PIECE, max(b - a for a, b in
                                                   itertools.pairwise(bounds)))), np.float32)
            if out is not None:
                out.send(flat[span(rank)])  # reduce-scatter step 1: this task's own shard
            for t in range(k - 1):
                phase = f"reduce-scatter step {t + 1}/{k - 1}"
                c = span(rank - t - 1)
                for lo in range(c.start, c.stop, buf.size):
                    hi = min(lo + buf.size, c.stop)
                    _recv_into(self.inn, memoryview(buf[:hi - lo]).cast("B"))
                    np.add(flat[lo:hi], buf[:hi - lo], out=flat[lo:hi])
                    if t < k - 2:
                        out.send(flat[lo:hi])  # step t + 2 passes it on
                    else:  # a piece of the sum this task owns: the next weights, at once
                        self._finish_piece(start, flat, mine, scratch, lo, hi, owned, out,
                                           pusher)
                    self._check(out, pusher)
            if k == 1:
                self._finish_piece(start, flat, mine, scratch, owned.start, owned.stop, owned,
                                   None, pusher)
            if not chan.gather:  # only the driver can make the next weights: it has the sums
                phase = "pushing its shard"
                if out is not None:
                    out.finish()
                pusher.finish()
                return
            nxt = _gather_buffer(start)
            for t in range(k - 1):
                phase = f"all-gather step {t + 1}/{k - 1}"
                c = span(rank - t)
                for lo in range(c.start, c.stop, buf.size):
                    hi = min(lo + buf.size, c.stop)
                    _recv_into(self.inn, memoryview(nxt[lo:hi]).cast("B"))
                    if t < k - 2:
                        out.send(nxt[lo:hi])
                    self._check(out, pusher)
            nxt[owned] = mine
            phase = "all-gather: sending"
            if out is not None:
                out.finish()
            if pusher is not None:
                phase = "pushing its shard"
                pusher.finish()
        except (OSError, ConnectionError) as e:
            self.close()  # the senders stop too
            for stream in (out, pusher):
                if stream is not None:
                    stream.queue.put(None)
                    stream.join(5)
            if isinstance(e, ConnectionError) and str(e).startswith("sparknet:"):
                raise
            sending = out is not None and out.error is e
            raise self._fail(f"{phase}: {'sending to' if sending else 'receiving from'}",
                             self.peers[(rank + 1) % k] if sending else prv, e) from e
        nxt.flags.writeable = False
        chan.gathered = _fingerprint(nxt, 0)
        if home is not None and not chan.push:  # (after a push, the driver has them)
            kept = (itertools.pairwise(bounds) if _keeps_whole(self.executor_tasks)
                    else sorted({(s.start, s.stop) for s in (owned, span(rank + 2))}))
            _Keeper(home, flat.size).start([(a, nxt[a:b]) for a, b in kept], chan.star.token,
                                           chan.key, chan.gathered)
        # the start stays this process's copy before the last (a rerun of this round needs it)
        previous = {k: _FETCHED.get(k) for k in ("tag", "flat", "print")}
        _FETCHED.clear()
        _FETCHED.update(tag=("ring", chan.star.token, chan.key), flat=nxt, print=chan.gathered,
                        previous=previous if previous["flat"] is start else None)

    def _finish_piece(self, start: np.ndarray, flat: np.ndarray, mine: np.ndarray,
                      scratch: np.ndarray | None, lo: int, hi: int, owned: slice,
                      out: _Stream | None, pusher: _Stream | None) -> None:
        """Floats ``lo:hi`` of the owned shard are summed: next weights, gather, push."""
        rel = slice(lo - owned.start, hi - owned.start)
        if not self.chan.gather:  # the driver makes the weights from the sums
            pusher.send(flat[lo:hi])
            return
        next_weights(start[lo:hi], flat[lo:hi], mine[rel], workers=self.k,
                     easgd_rate=self.chan.easgd_rate,
                     scratch=None if scratch is None else scratch[rel])
        if out is not None:
            out.send(mine[rel])  # all-gather step 1: this task's shard of the next weights
        if pusher is not None:
            pusher.send(mine[rel])  # the driver takes the same weights

    @staticmethod
    def _check(out: _Stream | None, pusher: _Stream | None) -> None:
        """Raise a sender's error as soon as it happens (not at the end of the phase)."""
        for stream in (out, pusher):
            if stream is not None and stream.error is not None:
                raise stream.error


def _hung_up(conn: socket.socket) -> bool:
    """Whether the other end closed ``conn`` (it has nothing more to say in a join)."""
    try:
        poller = select.poll()  # (not select.select: a driver may hold 1024 descriptors)
        poller.register(conn, select.POLLIN)
        return bool(poller.poll(0)) and conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class RingExchange(SocketExchange):
    """The driver's side of :class:`RingChannel`: forms the rings, serves weights, takes shards.

    A :class:`~sparknet.spark._socket_exchange.SocketExchange` (tasks that
    lack the weights fetch them here; a fallback round pushes whole results
    here) that also introduces each ring round's tasks to each other and
    writes the shards they push into the round's accumulator: once every shard
    has arrived, it holds the next weights (with ``gather=False``, the round's
    sum, as with the star). A round whose channel does not ``push`` sends
    nothing here; :meth:`collect` gets those weights from an executor later.
    """

    name = "ring"

    def __init__(self, host: str, port: int = 0, bind: str | None = None,
                 timeout: float = 120.0, *, workers: int, easgd_rate: float | None = None,
                 ring_timeout: float | None = None, gather: bool = True):
        super().__init__(host, port, bind, timeout)
        self.workers = int(workers)
        self.easgd_rate = easgd_rate
        self.gather = bool(gather)
        self.ring_timeout = float(ring_timeout if ring_timeout is not None else timeout)
        self._ring = False  # the open accumulation is a ring round's (not a fallback's)
        self._members: dict[int, dict] = {}  # rank -> where it listens, this accumulation
        self._formed = threading.Condition(self._lock)
        self._shards: dict[int, int] = {}  # offset -> end of the shards that arrived
        self._push = True  # the open ring accumulation's tasks push shards
        self._whole = False  # ... executors push the shards they keep (collect)
        self._claimed: set[int] = set()  # ... the offsets of those sent or being sent
        self._wanted: int | None = None  # ... the fingerprint of the weights collected
        self._complete: int | None = None  # the last accumulation all of whose shards came

    @classmethod
    def for_context(cls, sc: Any, *, workers: int, easgd_rate: float | None = None,
                    gather: bool = True) -> RingExchange:
        conf = sc.getConf()
        host = conf.get("spark.driver.host") or socket.gethostname()
        timeout = _seconds(conf.get("spark.network.timeout", "120s"), 120.0)
        ring_timeout = _seconds(conf.get("spark.sparknet.ring.timeout"), timeout)
        return cls(host, int(conf.get("spark.sparknet.exchange.port", "0")),
                   conf.get("spark.driver.bindAddress") or None, timeout, workers=workers,
                   easgd_rate=easgd_rate, ring_timeout=ring_timeout, gather=gather)

    def where(self) -> str:
        return f"a ring of the executors (met at the driver's exchange at {super().where()})"

    def publish(self, flat: np.ndarray, held: tuple[int, int] | None = None) -> RingChannel:
        """Serve ``flat``; ``held``: no, the weights of accumulation ``held[0]`` are newer.

        ``held`` = (the accumulation, the fingerprint of what its tasks
        gathered): only the executors keep those weights; ``flat`` is the
        driver's last copy, which a task never takes for them.
        """
        star = super().publish(flat)
        with self._lock:
            origin, self._complete = self._complete if self.gather else None, None
        if held is not None:
            return RingChannel(star, held[0], held[1], self.workers, self.easgd_rate,
                               self.ring_timeout, self.gather, held=True)
        return RingChannel(star, origin, _fingerprint(np.asarray(flat).reshape(-1), 0),
                           self.workers, self.easgd_rate, self.ring_timeout, self.gather)

    def release(self, channel: Any) -> None:
        super().release(channel.star if isinstance(channel, RingChannel) else channel)

    def accept(self, channel: Any, acc: np.ndarray) -> Any:
        """A ring round's channel (``channel`` a :class:`RingChannel`), else the star's."""
        ring = isinstance(channel, RingChannel)
        star = super().accept(channel.star if ring else channel, acc)
        with self._lock:
            self._ring, self._complete = ring, None
            self._push = not ring or channel.sends_driver
            self._whole = False
            self._claimed.clear()
            self._members.clear()
            self._shards.clear()
            self._formed.notify_all()  # tasks of the previous accumulation stop waiting
        return channel.with_star(star) if ring else star

    def collect(self, channel: RingChannel, out: np.ndarray) -> RingChannel:
        """An accumulation into ``out`` of the weights ``channel`` names, from an executor.

        Tasks given the returned channel call :meth:`RingChannel.offer`: each
        shard comes from the first executor that has it. :meth:`collected`
        says whether all came, and are the weights ``channel`` names.
        """
        chan = self.accept(channel, out)
        with self._lock:
            self._push, self._whole = True, True
            self._wanted = channel.fingerprint
        return chan

    def collected(self) -> bool:
        with self._lock:
            return (self._whole and self._acc is not None and not self._missing_shards()
                    and _fingerprint(self._acc, 0) == self._wanted)

    def star(self, channel: RingChannel) -> SocketChannel:
        """The star's channel for the same weights (a round the ring could not run)."""
        return channel.star

    def missing(self, partitions: Iterable[int]) -> list[int]:
        """Star: as the socket exchange. Ring: the partitions whose shard has not all come."""
        with self._lock:
            if self._ring:
                return self._missing_shards() if self._push else []
        return super().missing(partitions)

    def _missing_shards(self) -> list[int]:
        size = self._acc.size if self._acc is not None else 0
        bounds = shard_bounds(size, self.workers)
        return sorted((c - 1) % self.workers for c in range(self.workers)
                      if self._shards.get(bounds[c]) != bounds[c + 1])

    def end(self) -> None:
        with self._lock:
            if (self._ring and self._push and not self._whole and self._acc is not None
                    and not self._missing_shards()):
                self._complete = self._key
            self._formed.notify_all()
        super().end()

    def close(self) -> None:
        with self._lock:
            self._formed.notify_all()
        super().close()

    # -- the server's extra ops --------------------------------------------------------------
    def _serve_op(self, conn: socket.socket, op: int, key: int, partition: int,
                  size: int) -> None:
        if op == OP_JOIN:
            self._join(conn, key, partition, size)
        elif op == OP_PUT:
            self._put(conn, key, size)
        else:
            super()._serve_op(conn, op, key, partition, size)

    def _join(self, conn: socket.socket, key: int, rank: int, size: int) -> None:
        """Note where task ``rank`` listens; answer, once all K have come, where all do."""
        with self._lock:
            ok = (key == self._key and self._ring and 0 <= rank < self.workers
                  and rank not in self._members and not self._closed)
            acc = self._acc if ok else None
        if _refused(conn, acc, size):
            return
        conn.sendall(_REP.pack(ST_OK, 0))
        (n,) = _LEN.unpack(_recv_exact(conn, _LEN.size))
        me = json.loads(_recv_exact(conn, min(n, 1 << 16)))
        me["rank"] = rank
        # The others join when their training is done, however long it takes: no timeout
        # here. A task that is killed (its stage failed) hangs up; a new accumulation or
        # the end of the round ends the wait as well.
        with self._formed:
            if key != self._key or rank in self._members:
                answer: dict = {"error": f"partition {rank} joined this round's ring twice"}
            else:
                self._members[rank] = me
                self._formed.notify_all()
                while (key == self._key and len(self._members) < self.workers
                       and not self._closed and not _hung_up(conn)):
                    self._formed.wait(1.0)
                if key == self._key and len(self._members) == self.workers:
                    answer = {"peers": [self._members[r] for r in range(self.workers)]}
                else:
                    absent = sorted(set(range(self.workers)) - set(self._members))
                    answer = {"error": f"partition {rank}: the round ended before partition(s) "
                                       f"{absent} joined the ring"}
        body = json.dumps(answer).encode()
        conn.sendall(_LEN.pack(len(body)) + body)

    def _put(self, conn: socket.socket, key: int, size: int) -> None:
        """Write a pushed shard into the accumulator (replacing, not adding).

        In a :meth:`collect`, the task waits for a go after naming its shard:
        one that came or is coming from another executor is turned away.
        """
        with self._lock:
            acc = self._acc if key == self._key and self._ring and self._push else None
            collecting = self._whole
        if _refused(conn, acc, size):
            return
        conn.sendall(_REP.pack(ST_OK, 0))
        offset, count = _PUT.unpack(_recv_exact(conn, _PUT.size))
        if offset < 0 or count < 0 or offset + count > size:
            conn.sendall(_REP.pack(ST_STALE, 0))
            return
        if collecting:
            with self._lock:
                taken = offset in self._claimed or key != self._key
                self._claimed.add(offset)
            conn.sendall(_REP.pack(ST_STALE if taken else ST_OK, 0))
            if taken:
                return
        try:
            self._take(conn, key, offset, count, acc)
        finally:
            if collecting:
                with self._lock:
                    if self._shards.get(offset) != offset + count:
                        self._claimed.discard(offset)

    def _take(self, conn: socket.socket, key: int, offset: int, count: int,
              acc: np.ndarray) -> None:
        buf = np.empty(max(1, min(PUSH_CHUNK, count)), np.float32)
        pos = 0
        while pos < count:
            n = min(buf.size, count - pos)
            _recv_into(conn, memoryview(buf[:n]).cast("B"))
            with self._lock:
                if key != self._key:
                    return  # the round is over, or running again: these floats are void
                acc[offset + pos:offset + pos + n] = buf[:n]
            pos += n
        with self._lock:
            if key == self._key:
                self._shards[offset] = offset + count
        conn.sendall(_REP.pack(ST_DONE, count))
