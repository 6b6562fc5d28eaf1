"""A Spark standalone cluster on one machine whose nodes talk over shaped links.

The standalone master, K workers and the driver each run in their own Linux
network namespace (and UTS namespace: each node has its own host name), joined
by veth pairs to a bridge that lives in a namespace of its own. Every node's
link is shaped with ``tc`` in both directions (``tbf``: rate, 1 Gbit/s by
default; ``netem`` delay, 0.2 ms by default, where the kernel has it; packet
loss), and can be changed, slowed or cut while the cluster runs. Addresses come
from a private range and exist only inside those namespaces; nothing is added
to the host's own network.

The driver runs as a subprocess in its namespace (:meth:`NetCluster.popen` /
:meth:`NetCluster.run`): its link is the one a star exchange saturates. The
driver program builds its session with :func:`session`, which reads where the
master is from the environment.

Everything is made by the cluster and removed again: on :meth:`NetCluster.close`,
on an exception or Ctrl-C, and, should the owning process die without running
any of that (``kill -9``), by a small reaper process that notices the owner is
gone. Leftovers of an owner that died with its reaper are removed by the next
cluster that starts, or by ``python -m sparknet.testing.netcluster clean``.

Needs root (network namespaces), iproute2 (``ip``, ``tc``), ``unshare`` and
Java; :func:`unavailable` says in one line what is missing, for tests to skip
with.

    with NetCluster(workers=4) as cluster:
        cluster.run([sys.executable, "my_driver.py"], timeout=600)

    # my_driver.py
    from sparknet.testing.netcluster import session
    spark = session("my app")        # spark://<master>:7077, driver bound to its own address
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import attrs

log = logging.getLogger(__name__)

#: Every namespace of a cluster is named ``snc-<id>-<node>``.
PREFIX = "snc-"
#: The environment variable through which a driver program learns its cluster.
ENV = "SPARKNET_NETCLUSTER"
#: Added delay of a link where the kernel has ``netem`` and none is asked for.
DEFAULT_DELAY_MS = 0.2
DEFAULT_RATE = "1gbit"
#: Spark's standalone master listens here, in its own namespace.
MASTER_PORT = 7077
_ID = re.compile(rf"^{re.escape(PREFIX)}([0-9a-f]{{6}})-")
_HZ = 250  # the kernel tick tbf's burst must cover (CONFIG_HZ; 250 on the machines seen)
_STATE_ROOT = Path(tempfile.gettempdir()) / "sparknet-netcluster"


class NetClusterError(RuntimeError):
    """Setting up, changing or running the simulated cluster failed (names the command)."""


class NetClusterUnavailable(NetClusterError):
    """This machine cannot run the simulated cluster (the message says why, in one line)."""


# -- commands ---------------------------------------------------------------------------------

def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 60.0,
         input: str | None = None) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              input=input, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetClusterError(f"{' '.join(argv)}: {e}") from None
    if check and done.returncode != 0:
        raise NetClusterError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done


def namespaces() -> list[str]:
    """Every network namespace on this machine (``ip netns list``)."""
    done = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def _pids_in(namespace: str) -> list[int]:
    done = _run(["ip", "netns", "pids", namespace], check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (tells a reused pid apart)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


# -- can this machine do it? -------------------------------------------------------------------

def _java() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


@functools.cache
def _probe() -> tuple[str | None, bool]:
    """(why the cluster cannot run here or None, whether the kernel has netem)."""
    if not sys.platform.startswith("linux"):
        return "the simulated cluster needs Linux network namespaces", False
    if os.geteuid() != 0:
        return "the simulated cluster needs root (network namespaces, tc)", False
    for tool in ("ip", "tc", "unshare"):
        if shutil.which(tool) is None:
            return f"the simulated cluster needs '{tool}' (iproute2/util-linux), not found", False
    if _java() is None:
        return "the simulated cluster needs Java for Spark's master and workers", False
    if importlib.util.find_spec("pyspark") is None:
        return "the simulated cluster needs pyspark", False
    ns = f"{PREFIX}probe{os.getpid() % 100000:05d}"
    try:
        _run(["ip", "netns", "add", ns])
    except NetClusterError as e:
        return f"network namespaces are not permitted here ({e})", False
    try:
        _run(["ip", "-n", ns, "link", "add", "p0", "type", "veth", "peer", "name", "p1"])
        _run(["tc", "-n", ns, "qdisc", "add", "dev", "p0", "root", "handle", "1:", "tbf",
              "rate", "1gbit", "burst", "1mb", "latency", "50ms"])
        _run(["ip", "-n", ns, "link", "add", "b0", "type", "bridge"])
        netem = _run(["tc", "-n", ns, "qdisc", "add", "dev", "p1", "root", "netem", "delay",
                      "1ms"], check=False).returncode == 0
        if not netem:  # loss without netem: a classic-BPF filter (ld rand) drops packets
            _run(["tc", "-n", ns, "qdisc", "add", "dev", "p1", "clsact"])
            _run(["tc", "-n", ns, "filter", "add", "dev", "p1", "egress", "bpf", "da",
                  "bytecode", _loss_bytecode(1.0)])
    except NetClusterError as e:
        return f"the simulated cluster's links cannot be made here ({e})", False
    finally:
        _run(["ip", "netns", "del", ns], check=False)
    return None, netem


def unavailable() -> str | None:
    """Why this machine cannot run a :class:`NetCluster` (one line), or ``None``."""
    return _probe()[0]


def has_netem() -> bool:
    """Whether links can be given a delay (the kernel's ``netem`` qdisc)."""
    return _probe()[1]


# -- links -------------------------------------------------------------------------------------

_UNITS = {"": 1, "bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12,
          "bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9}


def rate_bits(rate: str | float) -> float:
    """A ``tc`` rate (``"1gbit"``, ``"200mbit"``, ``"10mbps"``, or bits/s) in bits per second."""
    if isinstance(rate, (int, float)):
        return float(rate)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", str(rate).lower())
    if not m or m.group(2) not in _UNITS:
        raise ValueError(f"link rate {rate!r}: write it as tc does, e.g. '1gbit' or '200mbit'")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _loss_bytecode(loss_pct: float) -> str:
    """Classic BPF for a direct-action filter: drop a packet with probability ``loss_pct`` %.

    ``ld rand`` (the kernel's ancillary random word); ``jge`` the threshold:
    ``ret TC_ACT_SHOT``; else ``ret TC_ACT_OK``.
    """
    threshold = min(int((1.0 - loss_pct / 100.0) * 2 ** 32), 2 ** 32 - 1)
    return f"4,32 0 0 4294963256,53 0 1 {threshold},6 0 0 2,6 0 0 0"


@attrs.frozen
class Link:
    """How a node's link is shaped, the same in both directions.

    ``delay_ms=None``: :data:`DEFAULT_DELAY_MS` where the kernel has ``netem``,
    none where it has not (a delay asked for explicitly needs ``netem``).
    ``loss_pct``: packets dropped at random, percent. ``up=False``: the link is
    cut (its switch port is down).
    """

    rate: str = DEFAULT_RATE
    delay_ms: float | None = None
    loss_pct: float = 0.0
    up: bool = True

    def __attrs_post_init__(self) -> None:
        rate_bits(self.rate)
        if self.delay_ms is not None and self.delay_ms < 0:
            raise ValueError(f"link delay_ms must be >= 0, got {self.delay_ms}")
        if not 0.0 <= self.loss_pct < 100.0:
            raise ValueError(f"link loss_pct must be in [0, 100), got {self.loss_pct}")


@attrs.frozen
class Node:
    """One machine of the simulated cluster: its host name, namespace and address."""

    role: str  # "master", "driver" or "worker"
    name: str  # its host name (and the name others resolve it by)
    namespace: str
    address: str
    port: str  # its veth end on the switch

    def __str__(self) -> str:
        return f"{self.name} ({self.address})"


# -- tearing down --------------------------------------------------------------------------------

def teardown(cluster_id: str, grace: float = 10.0) -> list[str]:
    """Stop every process in the cluster's namespaces, delete them; the namespaces removed.

    Works from the names alone, so the owner, its reaper and :func:`clean`
    all use it, and running it twice is harmless.
    """
    ours = [ns for ns in namespaces() if ns.startswith(f"{PREFIX}{cluster_id}-")]
    pids = {p for ns in ours for p in _pids_in(ns)}
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            pids = {p for p in pids if _alive(p)}
            if not pids:
                break
            time.sleep(0.1)
    for ns in ours:
        _run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
    with contextlib.suppress(OSError):
        Path("/etc/netns").rmdir()  # only when empty: others' entries stay
    shutil.rmtree(_STATE_ROOT / cluster_id, ignore_errors=True)
    return ours


def _owner_alive(cluster_id: str) -> bool:
    try:
        owner = json.loads((_STATE_ROOT / cluster_id / "owner.json").read_text())
    except (OSError, ValueError):
        return False
    return _start_time(owner["pid"]) == owner.get("start")


def clean(everything: bool = False) -> list[str]:
    """Remove the clusters whose owner is gone (``everything``: all of them); their ids."""
    ids = sorted({m.group(1) for ns in namespaces() if (m := _ID.match(ns))}
                 | ({p.name for p in _STATE_ROOT.iterdir() if p.is_dir()}
                    if _STATE_ROOT.is_dir() else set()))
    gone = [i for i in ids if everything or not _owner_alive(i)]
    for i in gone:
        teardown(i)
        log.info("netcluster: removed the leftovers of cluster %s", i)
    return gone


def _reap(cluster_id: str) -> None:
    """The reaper: wait until the owner closes our stdin (or dies), then tear down."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)  # Ctrl-C is the owner's to handle, then ours
    with contextlib.suppress(OSError):
        while sys.stdin.buffer.read(1 << 16):
            pass
    teardown(cluster_id)


# -- the cluster ---------------------------------------------------------------------------------

class NetCluster:
    """A Spark standalone master, ``workers`` workers and a driver, each in its own namespace.

    Parameters
    ----------
    workers
        Number of Spark workers (one executor each, ``cores`` cores).
    rate, delay_ms, loss_pct
        Every node's :class:`Link` (change one later with :meth:`set_link`).
    cores
        Cores each worker offers (``spark.executor.cores`` by :func:`session`).
    executor_memory
        ``spark.executor.memory`` by :func:`session`; small, so that K = 8
        executors fit a 24 GiB machine with room to spare.
    subnet
        A private IPv4 range with room for ``workers + 2`` nodes; it exists
        only inside the cluster's namespaces.
    python
        The interpreter of the Python workers and of the driver programs.
    start_timeout
        Seconds the master and workers may take to come up (a hang guard).
    spark
        ``False``: the network and nodes only, no Spark processes (for tests of
        the links themselves).
    java_options
        Options for every JVM of the cluster: the master's and workers'
        (``SPARK_DAEMON_JAVA_OPTS``), the executors' (``spark.executor.extraJavaOptions``
        by :func:`session`) and the driver programs' (``SPARK_SUBMIT_OPTS``). By default
        the owner's ``SPARK_SUBMIT_OPTS``, the one Spark setting of the owner that carries
        over: a test suite that runs its JVMs on the JIT's first tier (``tests/conftest.py``)
        runs the cluster's so too, while a benchmark started by hand keeps Java's defaults.
    """

    def __init__(self, workers: int = 2, *, rate: str = DEFAULT_RATE,
                 delay_ms: float | None = None, loss_pct: float = 0.0, cores: int = 1,
                 executor_memory: str = "512m", subnet: str = "10.199.0.0/24",
                 python: str | None = None, start_timeout: float = 180.0, spark: bool = True,
                 java_options: str | None = None):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers_wanted = int(workers)
        self.link = Link(rate, delay_ms, loss_pct)
        self.cores = int(cores)
        self.executor_memory = executor_memory
        self.python = python or sys.executable
        self.start_timeout = float(start_timeout)
        self.spark = bool(spark)
        self.java_options = (os.environ.get("SPARK_SUBMIT_OPTS", "") if java_options is None
                             else java_options)
        net = ipaddress.ip_network(subnet)
        if not net.is_private or net.num_addresses < workers + 4:
            raise ValueError(f"subnet {subnet} must be a private range with room for "
                             f"{workers + 2} nodes")
        self._net = net
        self.id = ""
        self.nodes: list[Node] = []
        self.links: dict[str, Link] = {}
        self.state_dir: Path | None = None
        self._procs: list[subprocess.Popen] = []
        self._reaper: subprocess.Popen | None = None
        self._attached = False
        self._spark_home = Path(importlib.util.find_spec("pyspark").submodule_search_locations[0]) \
            if importlib.util.find_spec("pyspark") else Path()

    # -- the nodes ---------------------------------------------------------------------------
    @property
    def master(self) -> Node:
        return self.nodes[0]

    @property
    def driver(self) -> Node:
        return self.nodes[1]

    @property
    def workers(self) -> list[Node]:
        return self.nodes[2:]

    @property
    def master_url(self) -> str:
        return f"spark://{self.master.address}:{MASTER_PORT}"

    def node(self, which: str | int | Node) -> Node:
        """A node by itself, its host name (``"w0"``, ``"driver"``) or worker index."""
        if isinstance(which, Node):
            return which
        if isinstance(which, int):
            return self.workers[which]
        for n in self.nodes:
            if which in (n.name, n.address):
                return n
        raise KeyError(f"no node {which!r} in this cluster "
                       f"({', '.join(n.name for n in self.nodes)})")

    # -- life cycle ----------------------------------------------------------------------------
    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Self:
        """Make the network, start the master and the workers, wait until all registered."""
        reason = unavailable()
        if reason is not None:
            raise NetClusterUnavailable(reason)
        clean()  # whatever a cluster killed with its reaper left behind
        self.id = secrets.token_hex(3)
        self.state_dir = _STATE_ROOT / self.id
        self.state_dir.mkdir(parents=True)
        (self.state_dir / "owner.json").write_text(json.dumps(
            {"pid": os.getpid(), "start": _start_time(os.getpid())}))
        self._reaper = subprocess.Popen(
            [self.python, "-m", "sparknet.testing.netcluster", "_reap", self.id],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=open(self.state_dir / "reaper.log", "wb"),  # noqa: SIM115 - the child owns it
            start_new_session=True, close_fds=True)
        try:
            self._network()
            if self.spark:
                self._start_spark()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop every process and remove every namespace of the cluster (idempotent)."""
        if not self.id or self._attached:
            return
        teardown(self.id)
        for p in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
        self._procs.clear()
        if self._reaper is not None:
            with contextlib.suppress(OSError):
                self._reaper.stdin.close()  # the reaper finds nothing left and exits
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._reaper.wait(30)
            self._reaper = None
        self.id = ""

    # -- the network ---------------------------------------------------------------------------
    def _ns(self, name: str) -> str:
        return f"{PREFIX}{self.id}-{name}"

    def _network(self) -> None:
        hosts = list(self._net.hosts())
        roles = [("master", "master"), ("driver", "driver")] + [
            ("worker", f"w{i}") for i in range(self.workers_wanted)]
        self.nodes = [Node(role, name, self._ns(name), str(hosts[i]), f"p{i}")
                      for i, (role, name) in enumerate(roles)]
        sw = self._ns("sw")
        _run(["ip", "netns", "add", sw])
        _run(["ip", "-n", sw, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", sw, "link", "set", "br0", "up"])
        etc_hosts = "127.0.0.1 localhost\n" + "".join(
            f"{n.address} {n.name}\n" for n in self.nodes)
        for n in self.nodes:
            _run(["ip", "netns", "add", n.namespace])
            # `ip netns exec` mounts /etc/netns/<ns>/hosts over /etc/hosts: nodes resolve
            # each other's names (and their own, which Java asks for) to their addresses
            folder = Path("/etc/netns") / n.namespace
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "hosts").write_text(etc_hosts)
            _run(["ip", "-n", sw, "link", "add", n.port, "type", "veth", "peer", "name", "eth0",
                  "netns", n.namespace])
            _run(["ip", "-n", sw, "link", "set", n.port, "master", "br0", "up"])
            _run(["ip", "-n", n.namespace, "addr", "add",
                  f"{n.address}/{self._net.prefixlen}", "dev", "eth0"])
            _run(["ip", "-n", n.namespace, "link", "set", "eth0", "up"])
            _run(["ip", "-n", n.namespace, "link", "set", "lo", "up"])
            self.set_link(n, self.link)

    def set_link(self, which: str | int | Node, link: Link | None = None, **change: Any
                 ) -> Link:
        """Shape (or cut, or restore) one node's link in both directions; the new shape.

        ``set_link("w1", rate="20mbit")``, ``set_link(0, up=False)``,
        ``set_link(node, loss_pct=5)``. Packets queued at the moment are dropped
        (TCP sends them again).
        """
        n = self.node(which)
        before = self.links.get(n.name)
        link = attrs.evolve(link or before or self.link, **change)
        sw = self._ns("sw")
        if before is not None and attrs.evolve(before, up=link.up) == link:  # a cut, no more
            _run(["ip", "-n", sw, "link", "set", n.port, "up" if link.up else "down"])
            self.links[n.name] = link
            return link
        delay = link.delay_ms
        if delay is None:
            delay = DEFAULT_DELAY_MS if has_netem() else 0.0
        elif delay > 0 and not has_netem():
            raise NetClusterError(f"link delay {delay} ms for {n}: this kernel has no netem "
                                  "qdisc (CONFIG_NET_SCH_NETEM); slow the link with rate= "
                                  "instead")
        bits = rate_bits(link.rate)
        burst = max(int(bits / 8 / _HZ * 2), 96 * 1024)  # a tick's worth, twice; > a GSO packet
        for ns, dev in ((n.namespace, "eth0"), (sw, n.port)):
            tc = ["tc", "-n", ns]
            _run([*tc, "qdisc", "del", "dev", dev, "root"], check=False)
            _run([*tc, "qdisc", "del", "dev", dev, "clsact"], check=False)
            _run([*tc, "qdisc", "add", "dev", dev, "root", "handle", "1:", "tbf", "rate",
                  f"{int(bits)}bit", "burst", str(burst), "latency", "50ms"])
            if has_netem() and (delay > 0 or link.loss_pct > 0):
                _run([*tc, "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:",
                      "netem", "delay", f"{delay}ms", "loss", f"{link.loss_pct}%",
                      "limit", "100000"])
            elif link.loss_pct > 0:
                _run([*tc, "qdisc", "add", "dev", dev, "clsact"])
                _run([*tc, "filter", "add", "dev", dev, "egress", "bpf", "da", "bytecode",
                      _loss_bytecode(link.loss_pct)])
        _run(["ip", "-n", sw, "link", "set", n.port, "up" if link.up else "down"])
        self.links[n.name] = link
        log.debug("netcluster: link of %s: %s", n, link)
        return link

    # -- processes -----------------------------------------------------------------------------
    def _clean_env(self, extra: Mapping[str, str]) -> dict[str, str]:
        # the owner may itself run Spark (a test session): none of its settings leak in
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SPARK_", "PYSPARK_"))}
        env.update(extra)
        return env

    def _spawn(self, node: Node, argv: Sequence[str], env: Mapping[str, str],
               out: Any) -> subprocess.Popen:
        """``argv`` in ``node``'s namespaces, with its host name."""
        cmd = ["ip", "netns", "exec", node.namespace, "unshare", "--uts", "--", "sh", "-c",
               'hostname "$0" && exec "$@"', node.name, *argv]
        proc = subprocess.Popen(cmd, env=dict(env), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT if out is not None else None,
                                start_new_session=True)  # Ctrl-C is the owner's to pass on
        self._procs.append(proc)
        return proc

    def _java_env(self, variable: str) -> dict[str, str]:
        return {variable: self.java_options} if self.java_options else {}

    def _spark_env(self, node: Node) -> dict[str, str]:
        local = self.state_dir / node.name
        local.mkdir(parents=True, exist_ok=True)
        return self._clean_env({
            "SPARK_HOME": str(self._spark_home), "SPARK_LOCAL_IP": node.address,
            "SPARK_LOCAL_HOSTNAME": node.name, "SPARK_LOG_DIR": str(local),
            "SPARK_WORKER_DIR": str(local / "work"), "SPARK_LOCAL_DIRS": str(local / "local"),
            "SPARK_DAEMON_MEMORY": "256m", "PYSPARK_PYTHON": self.python,
            **self._java_env("SPARK_DAEMON_JAVA_OPTS")})

    def _start_spark(self) -> None:
        spark_class = str(self._spark_home / "bin" / "spark-class")
        m = self.master
        with open(self.state_dir / "master.out", "wb") as out:
            self._spawn(m, [spark_class, "org.apache.spark.deploy.master.Master", "--host",
                            m.address, "--port", str(MASTER_PORT), "--webui-port", "8080"],
                        self._spark_env(m), out)
        self._wait_log(self.state_dir / "master.out", "I have been elected leader", "master")
        for w in self.workers:
            with open(self.state_dir / f"{w.name}.out", "wb") as out:
                self._spawn(w, [spark_class, "org.apache.spark.deploy.worker.Worker", "--host",
                                w.address, "--cores", str(self.cores), "--memory", "16g",
                                "--webui-port", "8081", "--work-dir",
                                str(self.state_dir / w.name / "work"), self.master_url],
                            self._spark_env(w), out)
        for w in self.workers:
            self._wait_log(self.state_dir / f"{w.name}.out", "Successfully registered with master",
                           f"worker {w}")
        log.info("netcluster %s: master %s, %d workers, links %s", self.id, self.master_url,
                 len(self.workers), self.link)

    def _wait_log(self, path: Path, line: str, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if line in path.read_text(errors="replace"):
                    return
            if any(p.poll() is not None for p in self._procs):
                break
            time.sleep(0.2)
        tail = ""
        with contextlib.suppress(OSError):
            tail = "\n".join(path.read_text(errors="replace").splitlines()[-20:])
        raise NetClusterError(f"the {what} did not come up within {self.start_timeout:.0f} s "
                              f"({path}):\n{tail}")

    def describe(self) -> dict[str, Any]:
        """What a driver program needs to know (the value of ``$SPARKNET_NETCLUSTER``)."""
        return {"id": self.id, "master": self.master_url, "driver": self.driver.address,
                "workers": [w.address for w in self.workers], "cores": self.cores,
                "executor_memory": self.executor_memory, "python": self.python,
                "java_options": self.java_options, "hosts": {n.address: n.name for n in self.nodes},
                "nodes": [attrs.asdict(n) for n in self.nodes],
                "link": attrs.asdict(self.link)}

    @classmethod
    def attach(cls, info: Mapping[str, Any] | None = None) -> NetCluster:
        """The running cluster ``info`` describes (default: the one this program runs in).

        For a driver program that changes links itself (cuts one mid-round);
        closing it stops nothing, the owner does that.
        """
        info = info if info is not None else cluster_info()
        if info is None:
            raise NetClusterError(f"${ENV} is not set: not running in a simulated cluster")
        cluster = cls(len(info["workers"]), cores=info["cores"],
                      executor_memory=info["executor_memory"], python=info["python"],
                      java_options=info.get("java_options", ""))
        cluster.id = info["id"]
        cluster.nodes = [Node(**n) for n in info["nodes"]]
        cluster.link = Link(**info["link"])
        cluster.links = {n.name: cluster.link for n in cluster.nodes}  # as the owner made them
        cluster._attached = True
        return cluster

    def driver_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a driver program (:func:`session` reads it)."""
        return self._clean_env({
            ENV: json.dumps(self.describe()), "SPARK_LOCAL_IP": self.driver.address,
            "SPARK_LOCAL_HOSTNAME": self.driver.name, "PYSPARK_PYTHON": self.python,
            "PYSPARK_DRIVER_PYTHON": self.python, **self._java_env("SPARK_SUBMIT_OPTS"),
            **(extra or {})})

    def popen(self, argv: Sequence[str], *, node: str | int | Node | None = None,
              env: Mapping[str, str] | None = None, stdout: Any = None) -> subprocess.Popen:
        """Start ``argv`` on the driver (or ``node``): a process the cluster stops at the end."""
        n = self.driver if node is None else self.node(node)
        return self._spawn(n, argv, self.driver_env(env), stdout)

    def run(self, argv: Sequence[str], *, timeout: float, node: str | int | Node | None = None,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run ``argv`` as the driver program; its exit status and output (text).

        On timeout (a hang guard) every process on that node is stopped and
        :class:`NetClusterError` names the command with the tail of its output.
        """
        out_path = self.state_dir / f"run-{len(self._procs)}.out"
        with open(out_path, "wb") as out:
            proc = self.popen(argv, node=node, env=env, stdout=out)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                n = self.driver if node is None else self.node(node)
                for p in _pids_in(n.namespace):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p, signal.SIGKILL)
                proc.wait(10)
                text = out_path.read_text(errors="replace")
                raise NetClusterError(f"{' '.join(argv)} on {n} did not finish within "
                                      f"{timeout:.0f} s:\n{text[-4000:]}") from None
        return subprocess.CompletedProcess(argv, proc.returncode,
                                           out_path.read_text(errors="replace"), "")

    def logs(self) -> dict[str, str]:
        """The master's and workers' logs so far (for a failure message)."""
        out = {}
        for p in sorted(self.state_dir.glob("*.out")) if self.state_dir else []:
            out[p.stem] = p.read_text(errors="replace")
        return out


# -- the driver program's side -----------------------------------------------------------------

def cluster_info() -> dict[str, Any] | None:
    """What :meth:`NetCluster.describe` told this driver program, or ``None`` outside one."""
    text = os.environ.get(ENV)
    return json.loads(text) if text else None


def session(app_name: str = "sparknet-netcluster", **conf: str) -> Any:
    """A ``SparkSession`` on the simulated cluster this driver program runs in.

    The driver binds to its own address; executors get the cluster's memory
    and cores, the driver's interpreter, and all the workers' cores.
    ``conf`` adds or overrides Spark settings (``spark.network.timeout="20s"``).
    """
    info = cluster_info()
    if info is None:
        raise NetClusterError(f"${ENV} is not set: run this under NetCluster.run/popen or "
                              "`python -m sparknet.testing.netcluster run -- ...`")
    from pyspark.sql import SparkSession

    settings = {
        "spark.driver.host": info["driver"], "spark.driver.bindAddress": info["driver"],
        "spark.executor.memory": info["executor_memory"],
        "spark.executor.cores": str(info["cores"]),
        "spark.cores.max": str(info["cores"] * len(info["workers"])),
        "spark.pyspark.python": info["python"], "spark.pyspark.driver.python": info["python"],
        "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
        "spark.python.worker.reuse": "true",
        **({"spark.executor.extraJavaOptions": info["java_options"]}
           if info.get("java_options") else {}), **conf}
    builder = SparkSession.builder.master(info["master"]).appName(app_name)
    for k, v in settings.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def wait_for_executors(spark: Any, count: int, timeout: float = 120.0) -> None:
    """Block until ``count`` executors have registered with the driver (a hang guard)."""
    sc = getattr(spark, "sparkContext", spark)
    deadline = time.monotonic() + timeout
    while sc._jsc.sc().getExecutorMemoryStatus().size() - 1 < count:
        if time.monotonic() > deadline:
            raise NetClusterError(f"only {sc._jsc.sc().getExecutorMemoryStatus().size() - 1} "
                                  f"of {count} executors registered within {timeout:.0f} s")
        time.sleep(0.2)


# -- the command line -------------------------------------------------------------------------

def _cluster_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rate", default=DEFAULT_RATE, help="every link's rate (tc: 1gbit, 200mbit)")
    ap.add_argument("--delay-ms", type=float, default=None,
                    help=f"added delay per link (default {DEFAULT_DELAY_MS} where netem exists)")
    ap.add_argument("--loss-pct", type=float, default=0.0, help="packets dropped, percent")
    ap.add_argument("--cores", type=int, default=1, help="cores per worker")
    ap.add_argument("--executor-memory", default="512m")
    ap.add_argument("--java-options", default=None,
                    help="options for every JVM of the cluster (default: $SPARK_SUBMIT_OPTS)")
    ap.add_argument("--no-spark", action="store_true",
                    help="the network and nodes only, no Spark master or workers")


def _from_args(args: argparse.Namespace) -> NetCluster:
    return NetCluster(args.workers, rate=args.rate, delay_ms=args.delay_ms,
                      loss_pct=args.loss_pct, cores=args.cores,
                      executor_memory=args.executor_memory, spark=not args.no_spark,
                      java_options=args.java_options)


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sparknet.testing.netcluster",
                                 description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check", help="say whether this machine can run the simulated cluster")
    run = sub.add_parser("run", help="start a cluster, run a driver program in it, tear down")
    _cluster_args(run)
    run.add_argument("--timeout", type=float, default=3600.0)
    run.add_argument("command", nargs=argparse.REMAINDER,
                     help="the driver program (after --); it calls netcluster.session()")
    up = sub.add_parser("up", help="start a cluster and keep it until Ctrl-C")
    _cluster_args(up)
    cl = sub.add_parser("clean", help="remove clusters whose owner is gone")
    cl.add_argument("--all", action="store_true", help="every cluster, running or not")
    reap = sub.add_parser("_reap")
    reap.add_argument("id")
    args = ap.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.cmd == "_reap":
        _reap(args.id)
        return 0
    if args.cmd == "check":
        reason = unavailable()
        print(reason or f"ok: network namespaces, tc, Java and pyspark are here; netem "
                        f"{'available' if has_netem() else 'missing (links get no delay)'}")
        return 1 if reason else 0
    if args.cmd == "clean":
        gone = clean(args.all)
        print(f"removed {len(gone)} cluster(s){': ' + ', '.join(gone) if gone else ''}")
        return 0
    try:
        cluster = _from_args(args).start()
    except NetClusterError as e:
        print(f"netcluster: {e}", file=sys.stderr)
        return 2
    try:
        if args.cmd == "run":
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            if not command:
                ap.error("run: give the driver program after --")
            done = cluster.run(command, timeout=args.timeout)
            sys.stdout.write(done.stdout)
            return done.returncode
        info = cluster.describe()
        print(f"cluster {cluster.id}: master {info['master']}; nodes: "
              + ", ".join(f"{n.name} {n.address}" for n in cluster.nodes), flush=True)
        print(f"run a driver: ip netns exec {cluster.driver.namespace} env "
              f"{ENV}='{json.dumps(info)}' SPARK_LOCAL_IP={cluster.driver.address} "
              f"{cluster.python} your_app.py   (calls netcluster.session())")
        print("Ctrl-C tears it down", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
        return 0
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
