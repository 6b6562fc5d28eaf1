"""The simulated cluster's network: named nodes, shaped links, cuts, and nothing left behind.

These use a :class:`~sparknet.testing.netcluster.NetCluster` without Spark
(``spark=False``): namespaces, bridge, veth pairs and ``tc`` only, with small
Python programs as the nodes' traffic. Spark on the simulated cluster is
tested in ``tests/test_cluster_faults.py``. Every test skips, with the reason
in one line, where network namespaces are not permitted (not root).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparknet.testing import netcluster
from sparknet.testing.netcluster import NetCluster, NetClusterError

REASON = netcluster.unavailable()
pytestmark = [pytest.mark.skipif(REASON is not None, reason=REASON or ""),
              pytest.mark.timeout(300)]

# A node's side of the traffic: `recv PORT N` counts what arrives over TCP (or UDP
# datagrams, `udp`) and prints JSON; `send HOST PORT BYTES` / `udpsend HOST PORT N`.
NODE = r"""
import json, socket, sys, time
mode = sys.argv[1]
if mode == "recv":
    s = socket.create_server(("0.0.0.0", int(sys.argv[2])))
    print("ready", flush=True)
    c, peer = s.accept()
    n, t0 = 0, None
    buf = bytearray(1 << 20)
    while True:
        k = c.recv_into(buf)
        if not k:
            break
        t0 = t0 or time.perf_counter()
        n += k
    print(json.dumps({"bytes": n, "seconds": time.perf_counter() - t0,
                      "host": socket.gethostname(), "peer": peer[0]}), flush=True)
elif mode == "send":
    host, port, size = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    c = socket.create_connection((host, port), timeout=30)
    c.sendall(bytes(size))
    c.close()
elif mode == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # room for every datagram (root may pass rmem_max): a receiver a busy machine does not
    # schedule for a while drops none, only the link's filter does
    s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 16 << 20)
    s.bind(("0.0.0.0", int(sys.argv[2])))
    s.settimeout(120.0)  # a hang guard: the sender's "end" datagrams close the count
    print("ready", flush=True)
    n = 0
    try:
        while True:
            if s.recv(64) == b"end":
                break
            n += 1
    except TimeoutError:
        pass
    print(json.dumps({"datagrams": n}), flush=True)
elif mode == "udpsend":
    host, port, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(n):
        s.sendto(b"x" * 32, (host, port))
        if i % 100 == 99:
            time.sleep(0.002)  # pacing, so that no queue overflows: only the filter drops
    for _ in range(64):  # the end, in order after the rest; one of 64 passes any loss here
        s.sendto(b"end", (host, port))
elif mode == "connect":
    try:
        socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=4).close()
        print("connected")
    except OSError as e:
        print(f"failed: {e}")
elif mode == "whoami":
    print(json.dumps({"host": socket.gethostname(),
                      "resolved": {n: socket.gethostbyname(n) for n in sys.argv[2:]}}))
"""


@pytest.fixture(scope="module")
def net():
    with NetCluster(3, rate="100mbit", spark=False) as cluster:
        yield cluster


def _on(cluster: NetCluster, node: str, *args: str) -> subprocess.Popen:
    return cluster.popen([sys.executable, "-c", NODE, *args], node=node,
                         stdout=subprocess.PIPE)


def _receiver(cluster: NetCluster, node: str, mode: str, port: int) -> subprocess.Popen:
    proc = _on(cluster, node, mode, str(port))
    assert proc.stdout.readline().strip() == b"ready"
    return proc


def _result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=60)
    return json.loads(out.strip().splitlines()[-1])


def test_each_node_has_its_own_name_and_resolves_the_others(net):
    got = _result(_on(net, "w0", "whoami", "w1", "driver", "master"))
    assert got["host"] == "w0"
    assert got["resolved"] == {"w1": net.node("w1").address, "driver": net.driver.address,
                               "master": net.master.address}
    assert [n.name for n in net.nodes] == ["master", "driver", "w0", "w1", "w2"]


def test_the_addresses_exist_only_inside_the_cluster(net):
    host = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True, check=True)
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True)
    for n in net.nodes:
        assert n.address not in host.stdout
    assert "10.199.0." not in routes.stdout
    assert all(ns.startswith(f"snc-{net.id}-") for ns in
               (n.namespace for n in net.nodes))


def test_a_link_carries_no_more_than_its_rate(net):
    size = 12_500_000  # 1 s at 100 Mbit/s
    recv = _receiver(net, "w1", "recv", 9100)
    _on(net, "w0", "send", "w1", "9100", str(size)).wait(60)
    got = _result(recv)
    assert got["bytes"] == size
    assert got["peer"] == net.node("w0").address
    assert got["seconds"] >= 0.85  # tbf's burst lets the first megabyte through at once


def test_loss_drops_that_share_of_packets_and_clearing_it_drops_none(net):
    # The clean run first: it also resolves w1's address on w0 (ARP), which over the lossy
    # link could take seconds, while the kernel keeps only a few of the datagrams waiting
    recv = _receiver(net, "w1", "udp", 9201)
    _on(net, "w0", "udpsend", "w1", "9201", "2000").wait(60)
    clean = _result(recv)["datagrams"]
    try:
        net.set_link("w0", loss_pct=50)
        recv = _receiver(net, "w1", "udp", 9200)
        _on(net, "w0", "udpsend", "w1", "9200", "2000").wait(60)
        lossy = _result(recv)["datagrams"]
    finally:
        net.set_link("w0", loss_pct=0)
    recv = _receiver(net, "w1", "udp", 9202)
    _on(net, "w0", "udpsend", "w1", "9202", "2000").wait(60)
    cleared = _result(recv)["datagrams"]
    assert 800 <= lossy <= 1200  # 2000 coin flips: 6 standard deviations either way
    assert clean == cleared == 2000


def test_a_cut_link_carries_nothing_until_it_is_restored(net):
    recv = _receiver(net, "w2", "recv", 9300)
    try:
        net.set_link("w2", up=False)
        cut = _on(net, "w0", "connect", "w2", "9300").communicate(timeout=60)[0].decode()
    finally:
        net.set_link("w2", up=True)
    _on(net, "w0", "send", "w2", "9300", "1000").wait(60)
    assert cut.startswith("failed")
    assert _result(recv)["bytes"] == 1000


def test_a_delay_needs_netem_and_says_so_where_the_kernel_lacks_it(net):
    if netcluster.has_netem():
        net.set_link("w1", delay_ms=5)
        net.set_link("w1", delay_ms=None)
        assert net.links["w1"].delay_ms is None
    else:
        with pytest.raises(NetClusterError, match="netem") as e:
            net.set_link("w1", delay_ms=5)
        assert "w1 (10.199.0." in str(e.value)  # names the node


def _leftovers(cluster_id: str) -> list[str]:
    found = [ns for ns in netcluster.namespaces() if ns.startswith(f"snc-{cluster_id}-")]
    found += [str(p) for p in Path("/etc/netns").glob(f"snc-{cluster_id}-*")]
    state = Path(netcluster._STATE_ROOT) / cluster_id
    return found + ([str(state)] if state.exists() else [])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_close_stops_the_nodes_processes_and_removes_everything():
    cluster = NetCluster(1, spark=False).start()
    cid = cluster.id
    sleeper = cluster.popen(["sleep", "600"], node="w0")
    assert len(_leftovers(cid)) == 4 + 3 + 1  # namespaces (3 nodes, switch), hosts files, state
    cluster.close()
    assert _leftovers(cid) == []
    assert sleeper.poll() is not None


# The owner of a cluster, in its own process: prints the cluster's id and the pid of a
# process it runs in w0, then waits to be killed (or interrupted).
OWNER = r"""
import sys, time
from sparknet.testing.netcluster import NetCluster
with NetCluster(1, spark=False) as c:
    p = c.popen(["sleep", "600"], node="w0")
    print(c.id, p.pid, flush=True)
    time.sleep(600)
"""


def _wait_gone(cluster_id: str, pid: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout  # a hang guard: the reaper takes a second or two
    while _leftovers(cluster_id) or _alive(pid):
        assert time.monotonic() < deadline, (_leftovers(cluster_id), _alive(pid))
        time.sleep(0.2)


def test_a_killed_owner_is_cleaned_up_after_by_its_reaper():
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True)
    cid, pid = owner.stdout.readline().split()
    assert _leftovers(cid)
    owner.kill()  # SIGKILL: no finally, no __exit__
    owner.wait(30)
    _wait_gone(cid, int(pid))


def test_ctrl_c_on_the_command_line_tears_the_cluster_down():
    up = subprocess.Popen([sys.executable, "-m", "sparknet.testing.netcluster", "up",
                           "--workers", "1", "--no-spark"], stdout=subprocess.PIPE, text=True)
    first = up.stdout.readline()
    cid = first.split()[1].rstrip(":")
    assert first.startswith("cluster ") and _leftovers(cid), first
    sleeper = subprocess.run(["ip", "netns", "exec", f"snc-{cid}-w0", "sh", "-c",
                              "sleep 600 >/dev/null 2>&1 & echo $!"], capture_output=True,
                             text=True, check=True)
    pid = int(sleeper.stdout.split()[-1])
    up.send_signal(signal.SIGINT)
    assert up.wait(60) == 0
    _wait_gone(cid, pid, timeout=5)  # gone before the command returned, not by the reaper


def test_the_reason_to_skip_is_one_line_naming_root_when_not_root():
    # Not root: a user namespace of its own makes the check's process uid 65534 with no
    # capabilities, while the files it reads stay root's own, so this runs in a checkout
    # only root may enter (a clone in `mktemp -d`), where another user could not even
    # start this venv's python.
    done = subprocess.run(
        ["unshare", "--user", sys.executable, "-m", "sparknet.testing.netcluster", "check"],
        capture_output=True, text=True, check=False, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 1
    assert done.stdout.strip() == "the simulated cluster needs root (network namespaces, tc)"


def test_the_command_line_runs_a_driver_program_in_the_drivers_namespace():
    done = subprocess.run(
        [sys.executable, "-m", "sparknet.testing.netcluster", "run", "--workers", "1",
         "--no-spark", "--", sys.executable, "-c",
         "import json, os, socket; info = json.loads(os.environ['SPARKNET_NETCLUSTER']); "
         "print(socket.gethostname(), info['driver'], info['master'], len(info['workers']))"],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["driver", "10.199.0.2", "spark://10.199.0.1:7077", "1"]
