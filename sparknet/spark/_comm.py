"""Moving weights between the driver and the workers.

A round needs two moves: the driver's weights out to every task, and every
task's result back into one sum. Two exchanges do both behind one interface
(``publish`` / ``accept`` / ``missing`` / ``end`` / ``release`` on the driver;
the task gets a small picklable channel with ``weights()`` and ``send()``):

* :class:`SocketExchange` (the default) — a TCP server in the driver. Tasks
  fetch the published vector straight into a reused numpy buffer, and push
  their result, which the server adds into the round's accumulator 4 MiB at a
  time as it arrives: every byte moves once, and the driver holds one model
  plus the sum whatever the number of workers. A retried or duplicated task
  resumes or skips its partition's push, so each result is added exactly once.
* :class:`SparkExchange` — Spark's own paths, for clusters where executors
  cannot connect to the driver or where Spark's encryption must cover the
  weights: :func:`broadcast_flat`, a torrent broadcast of a file holding a
  small pickled header then the raw floats, which workers map
  (:func:`flat_from_broadcast`) instead of unpickling a copy; results come
  back as ``("w", offset, chunk)`` items of :data:`CHUNK` floats in the task
  output, read one at a time off the JVM's socket (:func:`stream`) and added
  into one accumulator (:func:`fold`), or first summed on the executors
  (:func:`tree_sum`) when K models would not fit the driver.
"""
from __future__ import annotations

import contextlib
import hmac
import logging
import pickle
import secrets
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Self

import numpy as np

log = logging.getLogger(__name__)

#: Floats per result chunk: 512 KiB frames (below the JVM's humongous-object size).
CHUNK = 1 << 17
#: The raw broadcast file starts with this many bytes of (padded) pickled header.
HEADER_BYTES = 4096
_MAGIC = "sparknet-flat-1"

try:  # pyspark >= 4
    from pyspark.core.broadcast import Broadcast as _Broadcast
except ImportError:  # pragma: no cover - pyspark 3.x
    from pyspark.broadcast import Broadcast as _Broadcast


class FlatHeader:
    """What a raw broadcast's ``value`` is: the size of the vector after the header."""

    __slots__ = ("magic", "size")

    def __init__(self, size: int):
        self.magic = _MAGIC
        self.size = int(size)

    def __getstate__(self) -> tuple[str, int]:
        return self.magic, self.size

    def __setstate__(self, state: tuple[str, int]) -> None:
        self.magic, self.size = state

    def __repr__(self) -> str:
        return f"FlatHeader({self.size} floats)"


class _RawBroadcast(_Broadcast):
    """A broadcast whose file is ``pickle(FlatHeader)`` padded, then the raw floats."""

    def dump(self, value: Any, f: Any) -> None:  # called by Broadcast.__init__ on the driver
        flat = np.ascontiguousarray(value, dtype=np.float32).reshape(-1)
        header = pickle.dumps(FlatHeader(flat.size), protocol=pickle.HIGHEST_PROTOCOL)
        if len(header) > HEADER_BYTES:  # pragma: no cover - a few dozen bytes
            raise ValueError("broadcast header too large")
        f.write(header)
        f.write(b"\0" * (HEADER_BYTES - len(header)))
        f.write(memoryview(flat).cast("B"))
        f.close()


def broadcast_flat(sc: Any, flat: np.ndarray) -> Any:
    """Broadcast a flat float32 vector for :func:`flat_from_broadcast` (no pickled copy).

    Falls back to an ordinary broadcast of the array where the raw file
    cannot be written as is (I/O encryption sends broadcasts over a socket).
    """
    flat = np.ascontiguousarray(flat, dtype=np.float32).reshape(-1)
    if getattr(sc, "_encryption_enabled", False) or not hasattr(sc, "_pickled_broadcast_vars"):
        return sc.broadcast(flat)
    return _RawBroadcast(sc, flat, sc._pickled_broadcast_vars)


def flat_from_broadcast(bc: Any) -> np.ndarray:
    """On a worker: the broadcast vector, memory-mapped from the broadcast's file."""
    value = bc.value
    if isinstance(value, FlatHeader):
        path = getattr(bc, "_path", None)
        if path is None:  # pragma: no cover - only with encryption, where we never use it
            raise RuntimeError("a raw sparknet broadcast arrived without its file")
        # read-only: the net copies straight from the page cache
        return np.memmap(path, dtype=np.float32, mode="r", offset=HEADER_BYTES,
                         shape=(value.size,))
    return np.asarray(value, dtype=np.float32).reshape(-1)


def destroy(bc: Any) -> None:
    """Remove a broadcast from the driver and the executors (quietly, best effort)."""
    if bc is None:
        return
    try:
        bc.destroy(blocking=False)
    except Exception as e:  # noqa: BLE001  # pragma: no cover - a stopped context
        log.debug("could not destroy broadcast: %s", e)


def chunks(flat: np.ndarray, tag: str = "w") -> Iterator[tuple[str, int, np.ndarray]]:
    """``(tag, offset, chunk)`` items covering ``flat``."""
    for off in range(0, flat.size, CHUNK):
        yield tag, off, flat[off:off + CHUNK]


def stream(rdd: Any) -> Iterator[Any]:
    """The items of ``rdd``, one at a time as the driver reads them from the JVM.

    Runs the job like ``collect()`` (all partitions at once) but hands items
    over without building a list. Falls back to ``collect()`` where pyspark's
    socket helpers are not available.
    """
    sc = rdd.context
    try:
        try:
            from pyspark.util import _load_from_socket
        except ImportError:  # pragma: no cover - pyspark 3.x
            from pyspark.rdd import _load_from_socket  # type: ignore[no-redef]
        sock_info = sc._jvm.PythonRDD.collectAndServe(rdd._jrdd.rdd())
    except (ImportError, AttributeError):  # pragma: no cover - unusual pyspark builds
        yield from rdd.collect()
        return
    with _load_from_socket(sock_info, rdd._jrdd_deserializer) as items:
        yield from items


def fold(items: Iterable[Any], acc: np.ndarray | None,
         other: Callable[[Any], None]) -> int:
    """Add every ``("w", offset, chunk)`` item into ``acc``; pass other items to ``other``.

    Returns the number of floats added (``acc`` is not cleared first).
    """
    added = 0
    for item in items:
        if item[0] == "w":
            _, off, chunk = item
            if acc is None:
                raise RuntimeError("weights arrived where none were expected")
            a = acc[off:off + chunk.size]
            np.add(a, chunk, out=a)
            added += chunk.size
        else:
            other(item)
    return added


def _partial_sum(size: int, iterator: Iterable[Any]) -> Iterator[Any]:
    """Worker side of :func:`tree_sum`: sum the chunks, pass everything else through."""
    acc: np.ndarray | None = None
    passed: list[Any] = []
    for item in iterator:
        if item[0] == "w":
            if acc is None:
                acc = np.zeros(size, np.float32)
            _, off, chunk = item
            a = acc[off:off + chunk.size]
            np.add(a, chunk, out=a)
        else:
            passed.append(item)
    yield from passed
    if acc is not None:
        yield from chunks(acc)


def tree_sum(rdd: Any, size: int, fanin: int, target: int = 1) -> Iterator[Any]:
    """Stream ``rdd``'s items with its ``"w"`` chunks summed on the executors.

    ``rdd`` is computed once and cached by a job that brings back only its
    small items (streamed first); then levels of ``coalesce`` add up to
    ``fanin`` cached partitions each, on the executors that hold them, until
    at most ``target`` partial sums remain, and those are streamed to the
    driver (which folds them with :func:`fold`). Every cached level is
    released when the stream is exhausted or closed.
    """
    from pyspark import StorageLevel

    fanin = max(2, int(fanin))
    target = max(1, int(target))
    # on disk: model-sized blocks in executor heaps next to the broadcast would not fit
    cached = [rdd.persist(StorageLevel.DISK_ONLY)]
    try:
        yield from stream(rdd.filter(_not_weights))  # computes and caches the round
        cur = rdd
        n = rdd.getNumPartitions()
        while True:
            nxt = max(target, -(-n // fanin))
            step = cur.coalesce(nxt).mapPartitions(_PartialSum(size))
            if nxt <= target:
                yield from stream(step)
                return
            step.persist(StorageLevel.DISK_ONLY)
            cached.append(step)
            step.foreachPartition(_drain)
            cur, n = step, nxt
    finally:
        for c in cached:
            c.unpersist(blocking=False)


def _not_weights(item: Any) -> bool:
    return item[0] != "w"


class _PartialSum:
    """Picklable partial-sum step over weight chunks (small items were streamed already)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, iterator: Iterable[Any]) -> Iterator[Any]:
        return _partial_sum(self.size, (i for i in iterator if i[0] == "w"))


def _drain(iterator: Iterable[Any]) -> None:
    for _ in iterator:
        pass


# -- channels: what a task is given to read the weights and send its result ---------------------

class SparkChannel:
    """Weights by raw torrent broadcast, results as ``("w", offset, chunk)`` task output."""

    __slots__ = ("bc",)

    def __init__(self, bc: Any):
        self.bc = bc

    def __getstate__(self) -> Any:
        return self.bc

    def __setstate__(self, bc: Any) -> None:
        self.bc = bc

    def weights(self) -> np.ndarray:
        """The published vector, mapped from the broadcast file."""
        return flat_from_broadcast(self.bc)

    def send(self, partition: int, flat: np.ndarray) -> Iterator[Any]:
        """The items that carry ``flat`` to the driver in the task's output."""
        return chunks(flat)


class SparkExchange:
    """The driver's side of :class:`SparkChannel`: Spark's own broadcast and task results.

    The results arrive as ``("w", offset, chunk)`` items in the round job's
    output; the caller folds them (:func:`fold`, :func:`tree_sum`).
    """

    def __init__(self, sc: Any):
        self.sc = sc

    def where(self) -> str:
        return "Spark broadcasts and task results"

    def publish(self, flat: np.ndarray) -> SparkChannel:
        return SparkChannel(broadcast_flat(self.sc, flat))

    def release(self, channel: Any) -> None:
        destroy(channel.bc)

    def accept(self, channel: SparkChannel, acc: np.ndarray) -> SparkChannel:
        acc[:] = 0  # the caller folds the round's results into it
        return channel

    def missing(self, partitions: Iterable[int]) -> list[int]:
        return []

    def spliced(self) -> list[int]:
        return []

    def end(self) -> None:
        pass

    def close(self) -> None:
        pass


# The driver's exchange speaks this over TCP. A request is one _REQ and its reply one _REP;
# a push then sends the _FP fingerprint of the part already received, then the rest.
_MAGIC_X = b"SNX1"
_REQ = struct.Struct("!4s16sBqiq")  # magic, token, op, key, partition, floats
_REP = struct.Struct("!Bq")  # status, value
_FP = struct.Struct("!I")
OP_PING, OP_FETCH, OP_PUSH = 1, 2, 3
ST_OK, ST_DONE, ST_STALE, ST_BAD = 0, 1, 2, 3
#: Floats the exchange adds into the accumulator at a time (4 MiB); also the unit in
#: which both sides send, so that a timeout means a stalled peer, not a slow link.
PUSH_CHUNK = 1 << 20
#: Every this many floats one is sampled into a push's fingerprint.
_FP_STRIDE = 1021
#: Seconds an unauthenticated connection may take to send its request.
_HELLO_TIMEOUT = 30.0

# A worker process's last fetched vector: {"tag": (token, version), "flat": array}. The
# buffer is reused from fetch to fetch (no fresh model-sized allocation per round).
_FETCHED: dict[str, Any] = {}


def forget_fetched() -> None:
    """Drop this worker process's fetched vector (at the end of a run)."""
    _FETCHED.clear()


def _fingerprint(part: np.ndarray, start: int, crc: int = 0) -> int:
    """CRC of the floats at global positions ``0 mod _FP_STRIDE`` of ``part`` (from ``start``).

    Two different trained results differ almost everywhere, so a sample tells
    them apart; computed chunk by chunk it equals the one of the whole prefix.
    """
    first = (-start) % _FP_STRIDE
    return zlib.crc32(np.ascontiguousarray(part[first::_FP_STRIDE]).tobytes(), crc)


def _send_all(sock: socket.socket, data: memoryview) -> None:
    step = 4 * PUSH_CHUNK
    for pos in range(0, len(data), step):
        sock.sendall(data[pos:pos + step])


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    _recv_into(sock, memoryview(buf))
    return bytes(buf)


def _recv_into(sock: socket.socket, view: memoryview) -> None:
    pos, n = 0, len(view)
    while pos < n:
        got = sock.recv_into(view[pos:], n - pos)
        if not got:
            raise ConnectionError(f"connection closed after {pos} of {n} bytes")
        pos += got


class SocketChannel:
    """Weights fetched from, and results pushed to, the driver's :class:`SocketExchange`.

    Picklable and small (address, a per-run secret, which published vector,
    which accumulation). A worker process fetches a version once and reuses it
    for every task that needs it (a round's task and the test after it).
    """

    __slots__ = ("host", "key", "port", "size", "timeout", "token", "version")

    def __init__(self, host: str, port: int, token: bytes, version: int, size: int,
                 key: int = -1, timeout: float = 120.0):
        self.host, self.port, self.token = host, int(port), bytes(token)
        self.version, self.size, self.key = int(version), int(size), int(key)
        self.timeout = float(timeout)

    def __getstate__(self) -> tuple:
        return (self.host, self.port, self.token, self.version, self.size, self.key,
                self.timeout)

    def __setstate__(self, state: tuple) -> None:
        (self.host, self.port, self.token, self.version, self.size, self.key,
         self.timeout) = state

    def with_key(self, key: int) -> SocketChannel:
        return SocketChannel(self.host, self.port, self.token, self.version, self.size, key,
                             self.timeout)

    def _where(self) -> str:
        return f"{self.host}:{self.port}"

    def _connect(self) -> socket.socket:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as e:
            raise ConnectionError(
                f"sparknet: this executor cannot reach the driver's weight exchange at "
                f"{self._where()} ({e}). Executors must be able to connect to the driver on "
                f"that port: allow it (fix it with spark.sparknet.exchange.port), or train "
                f"with exchange='spark'.") from e
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return sock

    def _request(self, sock: socket.socket, op: int, partition: int = -1,
                 key: int | None = None) -> tuple[int, int]:
        sock.sendall(_REQ.pack(_MAGIC_X, self.token, op,
                               self.version if key is None else key, partition, self.size))
        status, value = _REP.unpack(_recv_exact(sock, _REP.size))
        if status == ST_BAD:
            raise ConnectionError(f"sparknet: the weight exchange at {self._where()} refused "
                                  "the request (wrong run or size)")
        return status, value

    def ping(self) -> None:
        with self._connect() as sock:
            self._request(sock, OP_PING)

    def weights(self) -> np.ndarray:
        """The published vector (read-only; fetched once per worker process and version)."""
        tag = (self.token, self.version)
        if _FETCHED.get("tag") == tag:
            return _FETCHED["flat"]
        try:
            with self._connect() as sock:
                status, _ = self._request(sock, OP_FETCH)
                if status != ST_OK:
                    raise RuntimeError(f"sparknet: weights version {self.version} are no longer "
                                       f"served by {self._where()} (a task of a finished round?)")
                out = _FETCHED.pop("flat", None)  # reuse the buffer of the previous version
                _FETCHED.clear()
                if out is None or out.size != self.size:
                    out = np.empty(self.size, np.float32)
                out.flags.writeable = True
                _recv_into(sock, memoryview(out).cast("B"))
        except (ConnectionError, TimeoutError) as e:
            raise ConnectionError(f"sparknet: fetching the weights from the driver's exchange "
                                  f"at {self._where()} failed: {e}") from e
        out.flags.writeable = False  # shared by every task of this process until the next one
        _FETCHED.update(tag=tag, flat=out)
        return out

    def send(self, partition: int, flat: np.ndarray) -> Iterator[Any]:
        """Push ``flat`` into the driver's accumulator; returns once the driver has it all.

        A retried task resumes where a failed attempt stopped and a duplicate
        attempt sends nothing: the driver adds each part of a partition's
        result exactly once (and notices when the attempts' results differ).
        """
        if flat.size != self.size or flat.dtype != np.float32:
            raise ValueError(f"result of {flat.size} {flat.dtype} for a {self.size}-float "
                             "exchange")
        try:
            with self._connect() as sock:
                status, offset = self._request(sock, OP_PUSH, partition, self.key)
                if status == ST_STALE:
                    raise RuntimeError("sparknet: the driver no longer takes results for this "
                                       "task's round (a duplicate task of a finished round?)")
                if status == ST_OK:
                    sock.sendall(_FP.pack(_fingerprint(flat[:offset], 0)))
                    _send_all(sock, memoryview(flat[offset:]).cast("B"))
                    status, _ = _REP.unpack(_recv_exact(sock, _REP.size))
                if status != ST_DONE:
                    raise ConnectionError(f"the exchange answered status {status}")
        except (ConnectionError, TimeoutError) as e:
            raise ConnectionError(f"sparknet: pushing partition {partition}'s result to the "
                                  f"driver's exchange at {self._where()} failed: {e}") from e
        return iter(())


class SocketExchange:
    """A TCP server in the driver: tasks fetch the published weights and push results.

    Spark's own paths copy a model several times per round (a torrent broadcast
    compressed and split into blocks, every task result through the block
    manager and the JVM heap); this side channel moves each byte once, straight
    between the numpy buffers of the driver and the workers. Pushed results are
    added into the round's accumulator as they arrive (one model plus a 4 MiB
    buffer per connection, whatever the number of workers), each partition's
    exactly once even when Spark retries or duplicates its task: a new attempt
    takes over from a stalled one and resumes where it stopped. Where the
    resumed attempt computed a different result than the one it continues
    (a lost executor took the partition's solver state along), the partition
    is reported by :meth:`spliced` and the caller redoes the round.

    Bound to ``spark.driver.bindAddress`` (else ``spark.driver.host``) on
    ``spark.sparknet.exchange.port`` (default: any free port); every request
    carries a per-run random token. A peer silent for ``timeout`` seconds
    (``spark.network.timeout``) is dropped.
    """

    def __init__(self, host: str, port: int = 0, bind: str | None = None,
                 timeout: float = 120.0):
        self.host = host
        self.timeout = float(timeout)
        self.token = secrets.token_bytes(16)
        addr = bind or host
        family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM,
                                    flags=socket.AI_PASSIVE)[0][0]
        self._server = socket.create_server((addr, int(port)), family=family,
                                            backlog=socket.SOMAXCONN)
        self._server.settimeout(0.5)  # the accept loop looks at _closed this often
        self.port = self._server.getsockname()[1]
        self._lock = threading.Lock()  # guards the fields below and every add into _acc
        self._flat: np.ndarray | None = None
        self._version = 0
        self._key: int | None = None  # the accumulation pushes go to, while one is open
        self._keys = 0
        self._acc: np.ndarray | None = None
        self._progress: dict[int, int] = {}  # floats added per partition
        self._prints: dict[int, int] = {}  # fingerprint of what was added per partition
        self._spliced: set[int] = set()
        self._busy: dict[int, threading.Lock] = {}
        self._pushing: dict[int, socket.socket] = {}
        self._conns: set[socket.socket] = set()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="sparknet-exchange",
                                        daemon=True)
        self._thread.start()

    @classmethod
    def for_context(cls, sc: Any) -> SocketExchange:
        conf = sc.getConf()
        host = conf.get("spark.driver.host") or socket.gethostname()
        timeout = _seconds(conf.get("spark.network.timeout", "120s"), 120.0)
        return cls(host, int(conf.get("spark.sparknet.exchange.port", "0")),
                   conf.get("spark.driver.bindAddress") or None, timeout)

    def where(self) -> str:
        return f"{self.host}:{self.port}"

    # -- the driver's side ----------------------------------------------------------------------
    def publish(self, flat: np.ndarray) -> SocketChannel:
        """Serve ``flat`` (not copied: leave it unchanged until :meth:`release`)."""
        flat = np.ascontiguousarray(flat, dtype=np.float32).reshape(-1)
        with self._lock:
            self._version += 1
            self._flat = flat
            return SocketChannel(self.host, self.port, self.token, self._version, flat.size,
                                 timeout=self.timeout)

    def release(self, channel: Any) -> None:
        """Stop serving ``channel``'s vector (its buffer may change from now on)."""
        with self._lock:
            if isinstance(channel, SocketChannel) and channel.version == self._version:
                self._flat = None

    def accept(self, channel: SocketChannel, acc: np.ndarray) -> SocketChannel:
        """Zero ``acc`` and add into it what tasks given the returned channel push.

        Until :meth:`end` or the next ``accept``; pushes of an earlier
        accumulation are turned away from now on.
        """
        if acc.shape != (channel.size,):
            raise ValueError(f"accumulator of shape {acc.shape} for {channel.size} floats")
        with self._lock:
            self._keys += 1
            key = self._keys
            self._key, self._acc = key, acc
            self._progress.clear()
            self._prints.clear()
            self._spliced.clear()
            acc[:] = 0
        return channel.with_key(key)

    def missing(self, partitions: Iterable[int]) -> list[int]:
        """Those of ``partitions`` whose result has not all arrived in this accumulation."""
        with self._lock:
            size = self._acc.size if self._acc is not None else -1
            return sorted(p for p in partitions if self._progress.get(p, 0) != size)

    def spliced(self) -> list[int]:
        """Partitions whose result was finished by an attempt that computed another one."""
        with self._lock:
            return sorted(self._spliced)

    def end(self) -> None:
        """Stop accumulating (late pushes of the round are turned away)."""
        with self._lock:
            self._key, self._acc = None, None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._key = None
            self._flat = self._acc = None
            conns = list(self._conns)
        for conn in conns:  # wake the connection threads: they drop what they hold
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        self._server.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the server -----------------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError as e:  # out of file descriptors, an aborted handshake...
                if self._closed:
                    return
                log.warning("weight exchange: accept failed: %s", e)
                time.sleep(0.1)
                continue
            try:
                threading.Thread(target=self._handle, args=(conn,), daemon=True,
                                 name="sparknet-exchange-conn").start()
            except RuntimeError as e:  # no thread to be had: the task retries
                log.warning("weight exchange: %s", e)
                conn.close()

    def _handle(self, conn: socket.socket) -> None:
        with self._lock:
            if self._closed:
                conn.close()
                return
            self._conns.add(conn)
        try:
            with conn:
                conn.settimeout(_HELLO_TIMEOUT)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                magic, token, op, key, partition, size = _REQ.unpack(
                    _recv_exact(conn, _REQ.size))
                if magic != _MAGIC_X or not hmac.compare_digest(token, self.token):
                    conn.sendall(_REP.pack(ST_BAD, 0))
                    return
                conn.settimeout(self.timeout)
                if op == OP_PING:
                    conn.sendall(_REP.pack(ST_OK, 0))
                elif op == OP_FETCH:
                    self._send_weights(conn, key, size)
                elif op == OP_PUSH:
                    self._take_result(conn, key, partition, size)
                else:
                    conn.sendall(_REP.pack(ST_BAD, 0))
        except (OSError, ValueError, struct.error) as e:
            log.debug("weight exchange: a connection ended early: %s", e)
        finally:
            with self._lock:
                self._conns.discard(conn)

    def _send_weights(self, conn: socket.socket, version: int, size: int) -> None:
        with self._lock:
            flat = self._flat if version == self._version else None
        if _refused(conn, flat, size):
            return
        conn.sendall(_REP.pack(ST_OK, flat.size))
        _send_all(conn, memoryview(flat).cast("B"))

    def _take_result(self, conn: socket.socket, key: int, partition: int, size: int) -> None:
        with self._lock:
            acc = self._acc if key == self._key else None
            busy = self._busy.setdefault(partition, threading.Lock())
            stalled = self._pushing.get(partition)
        if _refused(conn, acc, size):
            return
        if stalled is not None:  # a new attempt: the one still pushing is given up on
            with contextlib.suppress(OSError):
                stalled.shutdown(socket.SHUT_RDWR)
        with busy:  # one attempt of a partition at a time: the next resumes where it stopped
            with self._lock:
                if key != self._key:
                    conn.sendall(_REP.pack(ST_STALE, 0))
                    return
                offset = self._progress.get(partition, 0)
                done_print = self._prints.get(partition, 0)
                self._pushing[partition] = conn
            try:
                if offset >= size:
                    conn.sendall(_REP.pack(ST_DONE, size))
                    return
                conn.sendall(_REP.pack(ST_OK, offset))
                (theirs,) = _FP.unpack(_recv_exact(conn, _FP.size))
                if offset and theirs != done_print:
                    log.warning("weight exchange: partition %d's retried task computed another "
                                "result than the attempt it continues", partition)
                    with self._lock:
                        if key == self._key:
                            self._spliced.add(partition)
                buf = np.empty(min(PUSH_CHUNK, size), np.float32)
                view = memoryview(buf).cast("B")
                while offset < size:
                    n = min(buf.size, size - offset)
                    _recv_into(conn, view[:4 * n])
                    crc = _fingerprint(buf[:n], offset, done_print)
                    with self._lock:
                        if key != self._key:
                            return
                        a = acc[offset:offset + n]
                        np.add(a, buf[:n], out=a)
                        offset += n
                        done_print = crc
                        self._progress[partition] = offset
                        self._prints[partition] = crc
                conn.sendall(_REP.pack(ST_DONE, size))
            finally:
                with self._lock:
                    if self._pushing.get(partition) is conn:
                        del self._pushing[partition]


def _refused(conn: socket.socket, target: np.ndarray | None, size: int) -> bool:
    """Answer a request for a vector that is gone (STALE) or of another size (BAD)."""
    if target is None:
        conn.sendall(_REP.pack(ST_STALE, 0))
        return True
    if target.size != size:
        conn.sendall(_REP.pack(ST_BAD, target.size))
        return True
    return False


def _seconds(text: str | None, default: float) -> float:
    """A Spark duration ("120s", "2min", "500ms", "120") in seconds."""
    if not text:
        return default
    t = text.strip().lower()
    for suffix, scale in (("ms", 1e-3), ("min", 60.0), ("s", 1.0), ("h", 3600.0),
                          ("m", 60.0), ("d", 86400.0)):
        if t.endswith(suffix):
            t, unit = t[:-len(suffix)], scale
            break
    else:
        unit = 1.0
    try:
        return float(t) * unit
    except ValueError:
        return default
