"""One round's communication for a CaffeNet-sized model: sparknet's path vs a naive one.

Two workers on ``local-cluster[2,1,2048]`` exchange a 61M-parameter model
(CaffeNet's 16 parameter blobs, 244 MB of float32), as one training round
does, minus the training:

* **naive**: the weights as a list of numpy arrays, ``sc.broadcast`` (pickled),
  each worker reads them and returns its list, ``collect()`` brings both lists
  to the driver, which sums them array by array and divides by K.
* **sparknet**: the code path ``sparknet.spark.train`` uses by default
  (``sparknet.spark._comm.SocketExchange``): the driver publishes the flat
  vector on its exchange, each worker fetches it into a reused buffer, copies
  it into the buffer it would train in and pushes that back; the driver adds
  each 4 MiB piece into one accumulator as it arrives (never K models at
  once), then divides by K.
* **spark** (``--spark``): ``train(..., exchange="spark")``, the fallback: the
  vector broadcast raw (workers map the broadcast file), results streamed
  back as task output in 512 KiB chunks and folded into one accumulator.

Both run over the same cached two-partition RDD (one task per executor), in
the same session, interleaved, after a warm-up of each; the figure is the
median of ``--reps``. Driver memory is the Python driver's peak RSS during the
round (``VmHWM``, reset before each round via ``/proc/self/clear_refs``) minus
its RSS before the model was created, in multiples of the model's size.

In Spark's own paths the time goes to creating the broadcast, the executors
fetching and unpacking it (torrent, lz4), and Spark moving the K model-sized
task results to the driver; the exchange moves each byte once, between numpy
buffers, over one TCP connection per task. Every figure printed is measured in
this invocation; the last line is the ratio to the naive round.

Usage: ``python bench/averaging.py [--reps 5] [--spark] [--tree] [--conf key=value ...] [--smoke]``

``--smoke``: the same paths and lines with CaffeNet's convolution layers only
(3.7M parameters, 15 MB) and one rep after the warm-up (a test, not a
measurement).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from sparknet.spark._messages import RoundReport, TaskInfo

# CaffeNet (bvlc_reference_caffenet): 60,965,224 parameters
CAFFENET = [("conv1", [(96, 3, 11, 11), (96,)]), ("conv2", [(256, 48, 5, 5), (256,)]),
            ("conv3", [(384, 256, 3, 3), (384,)]), ("conv4", [(384, 192, 3, 3), (384,)]),
            ("conv5", [(256, 192, 3, 3), (256,)]), ("fc6", [(4096, 9216), (4096,)]),
            ("fc7", [(4096, 4096), (4096,)]), ("fc8", [(1000, 4096), (1000,)])]


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


# -- worker sides -------------------------------------------------------------------------------

def _naive_worker(bc, items):
    for _ in items:
        pass
    return [[a.copy() for a in bc.value]]  # "trained" weights: a fresh list of arrays


_BUF: dict[int, np.ndarray] = {}


def _sparknet_worker(chan, partition, items):
    for _ in items:  # consume the (tiny) input: the Python worker is reused
        pass
    center = chan.weights()
    buf = _BUF.get(center.size)
    if buf is None:
        buf = _BUF[center.size] = np.empty(center.size, np.float32)
    np.copyto(buf, center)  # what set_weights + training + read_params leave in the buffer
    del center
    sent = chan.send(partition, buf)
    yield RoundReport(TaskInfo(partition))  # what round_task reports before its result
    yield from sent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--conf", nargs="*", default=[], help="extra Spark settings key=value")
    ap.add_argument("--spark", action="store_true",
                    help="also time exchange='spark' (Spark's broadcast and task results)")
    ap.add_argument("--tree", action="store_true",
                    help="also time exchange='spark' with the executor-side tree reduction "
                         "(what it uses when K models would not fit a quarter of the heap)")
    ap.add_argument("--smoke", action="store_true",
                    help="the convolution layers only, 1 rep: a test of the paths")
    args = ap.parse_args(argv)
    layers = CAFFENET
    if args.smoke:
        layers = [(n, shapes) for n, shapes in CAFFENET if n.startswith("conv")]
        args.reps = 1

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    from sparknet.engine import WeightCollection
    from sparknet.spark import _comm

    builder = (SparkSession.builder.master("local-cluster[2,1,2048]")
               .appName("sparknet-bench-averaging")
               .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
               .config("spark.driver.memory", "4g").config("spark.executor.memory", "2g")
               .config("spark.driver.maxResultSize", "2g"))
    if os.environ.get("SPARK_SUBMIT_OPTS"):  # the driver JVM's options (a test's) for the executors'
        builder = builder.config("spark.executor.extraJavaOptions", os.environ["SPARK_SUBMIT_OPTS"])
    for kv in args.conf:
        k, v = kv.split("=", 1)
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    sc = spark.sparkContext
    sc.setLogLevel("ERROR")
    app = sc.applicationId
    try:
        deadline = time.monotonic() + 60
        while sc._jsc.sc().getExecutorMemoryStatus().size() < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        # one task per executor, every round: a cached 2-partition RDD, as train()'s handles
        slots = sc.parallelize(range(2), 2).cache()
        slots.count()

        base_rss = _rss()
        rng = np.random.default_rng(0)
        weights = WeightCollection({n: [rng.standard_normal(s, dtype=np.float32) for s in shapes]
                                    for n, shapes in layers})
        model = weights.nbytes
        K = 2
        print(f"model: {weights.num_params:,} float32 parameters ({model / 1e6:.0f} MB), "
              f"{K} workers on {sc.master}; settings: {args.conf or 'Spark defaults'}")

        def naive() -> np.ndarray:
            arrays = [a for name in weights for a in weights[name]]
            bc = sc.broadcast(arrays)
            results = slots.mapPartitions(lambda it: _naive_worker(bc, it)).collect()
            total = [sum(parts) for parts in zip(*results)]
            mean = [t / K for t in total]
            bc.destroy()
            return mean[0]

        acc = np.empty_like(weights.flat)

        socket_exchange = _comm.SocketExchange.for_context(sc)
        spark_exchange = _comm.SparkExchange(sc)

        def one_round(exchange, tree: bool = False) -> np.ndarray:
            # what train() does in a round, minus the training
            chan = exchange.publish(weights.flat)
            rchan = exchange.accept(chan, acc)  # zeroes acc
            rdd = slots.mapPartitionsWithIndex(lambda i, it: _sparknet_worker(rchan, i, it))
            metas: list = []
            items = (_comm.tree_sum(rdd, weights.num_params, 8, 1) if tree
                     else _comm.stream(rdd))
            _comm.fold(items, acc, metas.append)
            assert not exchange.missing(range(K)) and len(metas) == K
            exchange.end()
            exchange.release(chan)
            np.divide(acc, np.float32(K), out=acc)  # train() divides into the weights' buffer
            return acc

        methods = {"naive": naive, "sparknet": lambda: one_round(socket_exchange)}
        if args.spark:
            methods["spark"] = lambda: one_round(spark_exchange)
        if args.tree:
            methods["tree"] = lambda: one_round(spark_exchange, tree=True)
        times: dict[str, list[float]] = {m: [] for m in methods}
        peaks: dict[str, list[float]] = {m: [] for m in methods}
        check = {}
        for rep in range(args.reps + 1):  # the first rep warms both up and is not counted
            for name, fn in methods.items():
                _reset_peak()
                t = time.perf_counter()
                first = fn()
                dt = time.perf_counter() - t
                peak = (_peak() - base_rss) / model
                check[name] = float(first.reshape(-1)[0])
                del first
                if rep:
                    times[name].append(dt)
                    peaks[name].append(peak)
                print(f"  {'warm-up' if not rep else f'rep {rep}'}: {name:8s} {dt:6.2f} s, "
                      f"driver peak {peak:4.2f}x model", flush=True)
        assert all(abs(check["naive"] - v) < 1e-6 for v in check.values()), check
        med = {m: statistics.median(v) for m, v in times.items()}
        peak = {m: max(v) for m, v in peaks.items()}
        print(f"naive:    {med['naive']:.2f} s per round (median of {args.reps}), driver peak "
              f"{peak['naive']:.2f}x the model")
        print(f"sparknet: {med['sparknet']:.2f} s per round (median of {args.reps}), driver "
              f"peak {peak['sparknet']:.2f}x the model (target <= 3x)")
        for m, what in (("spark", "exchange='spark'"), ("tree", "exchange='spark', tree")):
            if m in med:
                print(f"{what}: {med[m]:.2f} s per round ({med[m] / med['naive']:.2f}x "
                      f"naive), driver peak {peak[m]:.2f}x the model")
        print(f"communication time, sparknet / naive: {med['sparknet'] / med['naive']:.2f}x "
              f"(target <= 0.3x)")
        socket_exchange.close()
    finally:
        spark.stop()
        import shutil

        import pyspark
        shutil.rmtree(Path(pyspark.__file__).parent / "work" / app, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
