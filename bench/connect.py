"""sparknet.spark.train from a Spark Connect client / from a classic session, same run.

LeNet on the bundled digits, 2 workers on ``local[2]``, ``sync_interval`` 50, batch
64, one OpenBLAS thread per worker: the same ``train`` call a user makes, once from a
classic ``SparkSession`` (this process) and once from a Connect client started as
the README shows (``SparkSession.builder.remote("local[2]")``, a process of its
own: one Python process holds one kind of session). Both runs give the same
weights (tests/test_connect.py); what differs is the round's overhead: a Connect
round is a query planned by the server, with the weights inside it and the results
back as Arrow batches, where the classic round is an RDD job with the weights on
the driver's socket.

Images per second is the images trained over the rounds' wall time, rounds after
the first (which builds the nets); medians of ``--repeats`` runs, alternating.
The ratio comes last, with its target line.

Usage: ``python bench/connect.py [--rounds 10] [--repeats 2] [--remote sc://HOST:PORT]
[--smoke]``

``--remote``: the Connect client talks to this running server instead of starting
one in its process (a server on ``local[2]`` compares like with like; its Python
workers need sparknet). tests/test_connect.py points the smoke run at its own
server this way, which saves starting (and warming) a second one.

``--smoke``: 2 rounds of 5 steps, batch 16, one repeat (a test of the paths, not a
measurement).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any

TARGET = 0.8  # Connect keeps at least this share of a classic session's images/s


def run(spark: Any, rounds: int, tau: int, batch: int) -> dict:
    """One training run: images/s over the rounds after the first, and its accuracy."""
    from sparknet.data import digits_dataframe
    from sparknet.models import lenet
    from sparknet.spark import train

    res = train(spark, lenet.solver(batch), digits_dataframe(spark, "train", num_partitions=2),
                test_data=digits_dataframe(spark, "test", num_partitions=2), workers=2,
                sync_interval=tau, rounds=rounds, test_interval=rounds, blas_threads=1,
                progress=False)
    steady = res.history[1:]
    return {"ips": sum(r["images"] for r in steady) / sum(r["seconds"]["round"] for r in steady),
            "round_s": statistics.median(r["seconds"]["round"] for r in steady),
            "compute_s": statistics.median(r["seconds"]["compute"] for r in steady),
            "accuracy": res.history[-1]["test"]["accuracy"]}


def connect_half(args: argparse.Namespace) -> None:
    """The Connect client: one run per repeat, each printed as a JSON line."""
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.remote(args.remote or "local[2]").getOrCreate()
    try:
        print("RESULT " + json.dumps(run(spark, args.rounds, args.sync_interval, args.batch)),
              flush=True)
    finally:
        spark.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--sync-interval", type=int, default=50)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--remote", metavar="URL",
                    help="the Spark Connect server (sc://HOST:PORT) the client uses; "
                         'default: one started in its process, remote("local[2]")')
    ap.add_argument("--smoke", action="store_true",
                    help="2 rounds of 5 steps, batch 16, 1 repeat: a test of the paths")
    ap.add_argument("--connect-half", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.smoke:
        args.rounds, args.sync_interval, args.batch, args.repeats = 2, 5, 16, 1
    os.environ["PYSPARK_PYTHON"] = sys.executable  # both servers' Python workers
    if args.connect_half:
        connect_half(args)
        return 0
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master("local[2]").appName("sparknet-bench-connect")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    classic: list[dict] = []
    connect: list[dict] = []
    half = [sys.executable, os.path.abspath(__file__), "--connect-half",
            "--rounds", str(args.rounds), "--sync-interval", str(args.sync_interval),
            "--batch", str(args.batch), *(["--remote", args.remote] if args.remote else [])]
    try:
        for rep in range(args.repeats):
            classic.append(run(spark, args.rounds, args.sync_interval, args.batch))
            done = subprocess.run(half, capture_output=True, text=True, timeout=1800,
                                  check=False)
            line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")),
                        None)
            if line is None:
                print(done.stderr[-4000:], file=sys.stderr)
                raise SystemExit(f"the Connect half failed (exit {done.returncode})")
            connect.append(json.loads(line[len("RESULT "):]))
            print(f"repeat {rep + 1} (load average {os.getloadavg()[0]:.1f}): "
                  + "; ".join(f"{name} {r['ips']:.0f} img/s (round {r['round_s']:.2f} s, "
                              f"compute {r['compute_s']:.2f} s, accuracy {r['accuracy']:.4f})"
                              for name, r in (("classic", classic[-1]),
                                              ("connect", connect[-1]))), flush=True)
    finally:
        spark.stop()
    ips = {name: statistics.median(r["ips"] for r in runs)
           for name, runs in (("classic", classic), ("connect", connect))}
    rounds = {name: statistics.median(r["round_s"] for r in runs)
              for name, runs in (("classic", classic), ("connect", connect))}
    print(f"train from a classic session: {ips['classic']:.0f} images/s, round "
          f"{rounds['classic']:.2f} s; from a Spark Connect client: {ips['connect']:.0f} "
          f"images/s, round {rounds['connect']:.2f} s (local[2]"
          + (f", the Connect server at {args.remote}" if args.remote else "")
          + f", 2 workers, sync_interval "
          f"{args.sync_interval}, batch {args.batch}, medians of {args.repeats})")
    ratio = ips["connect"] / ips["classic"]
    print(f"images/s, Connect / classic: {ratio:.2f}x")
    print(f"target connect_vs_classic: {ratio:.2f} (>= {TARGET}) "
          f"{'met' if ratio >= TARGET else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
