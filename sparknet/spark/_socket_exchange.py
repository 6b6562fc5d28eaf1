"""Weights through a TCP server in the driver (the default exchange).

Tasks fetch the published vector straight into a reused numpy buffer, and
push their result, which the server adds into the round's accumulator 4 MiB at
a time as it arrives: every byte moves once, and the driver holds one model
plus the sum whatever the number of workers. A retried or duplicated task
resumes or skips its partition's push, so each result is added exactly once.
"""
from __future__ import annotations

import contextlib
import hmac
import logging
import secrets
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Self

import numpy as np

log = logging.getLogger(__name__)

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
# buffer is reused from fetch to fetch (no fresh model-sized allocation per round). The
# ring exchange keeps its gathered weights here too ("print": their fingerprint,
# "previous": the same three of the copy before).
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

    def weights(self, home: Path | None = None) -> np.ndarray:
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

    def absent(self, partition: int) -> None:
        """Nothing to do: the driver counts the results that arrive."""

    def send(self, partition: int, flat: np.ndarray, home: Path | None = None
             ) -> Iterator[Any]:
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

    name = "socket"

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
                    self._serve_op(conn, op, key, partition, size)
        except (OSError, ValueError, struct.error) as e:
            log.debug("weight exchange: a connection ended early: %s", e)
        finally:
            with self._lock:
                self._conns.discard(conn)

    def _serve_op(self, conn: socket.socket, op: int, key: int, partition: int,
                  size: int) -> None:
        """An authenticated request this server does not know (a subclass may)."""
        conn.sendall(_REP.pack(ST_BAD, 0))

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
