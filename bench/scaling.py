"""Scaling of sparknet.spark.train: LeNet on the bundled digits, 1 vs 2 workers on local[2].

Every run: one OpenBLAS thread per worker, ``sync_interval=50``, batch 64,
the same code path (``train(..., workers=K)``), in one Spark session:

* **plain CaffeNet**: the same net and minibatches in a loop in this process,
  no Spark at all (the single-worker ceiling);
* **1 worker** and **2 workers**: ``train`` with ``workers=1`` / ``2``,
  tested after the last round.

Images per second is the images trained over the rounds' wall time (broadcast,
compute, collect, average; rounds after the first, which builds the nets).

Time to accuracy: the same two runs at ``--accuracy-sync-interval`` (25: a
finer grain than 50 steps, at which both reach 95% within two rounds), tested
after every round; the time is the training wall time (sum of the round
times, tests excluded) up to the first round whose averaged weights score
>= 95% on the test digits. The ratios come last.

Usage: ``python bench/scaling.py [--rounds 12] [--repeats 2] [--smoke]``

``--smoke``: the same paths and lines with 2 rounds of 5 steps, batch 16, one
repeat, one run per K giving both the images/s and the time to 95% (a test, not a
measurement: 95% is not reached, its times print as inf).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

import numpy as np


def plain_loop(steps: int, batch: int) -> float:
    """Images per second of CaffeNet.train alone (1 BLAS thread), digits minibatches."""
    from sparknet.data import load_digits
    from sparknet.engine import CaffeNet, set_blas_threads
    from sparknet.models import lenet

    set_blas_threads(1)
    net = CaffeNet(lenet.solver(batch))
    x, y = load_digits("train")
    rng = np.random.default_rng(0)

    def batches():
        while True:
            idx = rng.integers(0, len(x), batch)
            yield x[idx], y[idx]
    net.train(20, batches())  # warm up
    t = time.perf_counter()
    net.train(steps, batches())
    return steps * batch / (time.perf_counter() - t)


def run(spark, workers: int, rounds: int, tau: int, batch: int, test_interval: int) -> dict:
    from sparknet.data import digits_rdd
    from sparknet.models import lenet
    from sparknet.spark import train

    res = train(spark, lenet.solver(batch), digits_rdd(spark, "train", num_partitions=2),
                test_data=digits_rdd(spark, "test", num_partitions=2), workers=workers, sync_interval=tau,
                rounds=rounds, test_interval=test_interval, blas_threads=1, progress=False)
    h = res.history
    steady = h[1:]
    images = sum(r["images"] for r in steady)
    seconds = sum(r["seconds"]["round"] for r in steady)
    train_time = 0.0  # cumulative training time, tests excluded
    to95 = None
    for r in h:
        train_time += r["seconds"]["round"]
        if to95 is None and r.get("test", {}).get("accuracy", 0) >= 0.95:
            to95 = (r["round"], train_time)
    return {"ips": images / seconds, "to95": to95, "final": h[-1]["test"]["accuracy"],
            "round_s": statistics.median(r["seconds"]["round"] for r in steady),
            "compute_s": statistics.median(r["seconds"]["compute"] for r in steady)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--sync-interval", type=int, default=50)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--accuracy-sync-interval", type=int, default=25)
    ap.add_argument("--accuracy-rounds", type=int, default=8)
    ap.add_argument("--smoke", action="store_true",
                    help="2 rounds of 5 steps, batch 16, 1 repeat: a test of the paths")
    args = ap.parse_args(argv)
    if args.smoke:
        args.rounds = args.accuracy_rounds = 2
        args.sync_interval = args.accuracy_sync_interval = 5
        args.batch, args.repeats = 16, 1
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master("local[2]").appName("sparknet-bench-scaling")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    try:
        results: dict[Any, list] = {"plain": [], 1: [], 2: [], "acc1": [], "acc2": []}
        for rep in range(args.repeats):
            results["plain"].append(plain_loop(args.rounds * args.sync_interval, args.batch))
            for k in (1, 2):
                # a smoke run's sizes are the same for both: one run (tested every round)
                # gives both figures
                results[k].append(run(spark, k, args.rounds, args.sync_interval, args.batch,
                                      1 if args.smoke else 0))
                results[f"acc{k}"].append(results[k][-1] if args.smoke else
                                          run(spark, k, args.accuracy_rounds,
                                              args.accuracy_sync_interval, args.batch, 1))
            print(f"repeat {rep + 1} (load average {os.getloadavg()[0]:.1f}): plain "
                  f"{results['plain'][-1]:.0f} img/s; "
                  + "; ".join(f"{k} worker(s) {results[k][-1]['ips']:.0f} img/s "
                              f"(round {results[k][-1]['round_s']:.2f} s, compute "
                              f"{results[k][-1]['compute_s']:.2f} s, final "
                              f"{results[k][-1]['final']:.4f}), 95% at (round, s) "
                              f"{results[f'acc{k}'][-1]['to95']}" for k in (1, 2)), flush=True)
    finally:
        spark.stop()
    plain = statistics.median(results["plain"])
    ips = {k: statistics.median(r["ips"] for r in results[k]) for k in (1, 2)}
    to95 = {k: statistics.median(r["to95"][1] if r["to95"] else float("inf")
                                 for r in results[f"acc{k}"]) for k in (1, 2)}
    final2 = min(r["final"] for r in results[2])
    print(f"plain CaffeNet loop (no Spark, 1 BLAS thread): {plain:.0f} images/s")
    print(f"train(workers=1): {ips[1]:.0f} images/s; train(workers=2): {ips[2]:.0f} images/s "
          f"(local[2], sync_interval {args.sync_interval}, batch {args.batch}, medians of "
          f"{args.repeats})")
    print(f"2 workers after {args.rounds} rounds: {final2:.4f} test accuracy (target >= 0.97)")
    print(f"time to 95% test accuracy (sync_interval {args.accuracy_sync_interval}): 1 worker "
          f"{to95[1]:.2f} s, 2 workers {to95[2]:.2f} s")
    print(f"2 workers vs plain loop: {ips[2] / plain:.2f}x; 1 worker vs plain loop: "
          f"{ips[1] / plain:.2f}x")
    print(f"time to 95%, 2 workers / 1 worker: {to95[2] / to95[1]:.2f}x (target <= 1)")
    print(f"images/s, 2 workers / 1 worker: {ips[2] / ips[1]:.2f}x (target >= 1.8x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
