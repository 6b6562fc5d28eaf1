"""Round time as workers grow, over real (simulated) links: each exchange vs TorchDistributor.

A :class:`~sparknet.testing.netcluster.NetCluster` puts a Spark standalone
master, the largest K of workers and the driver each in its own network
namespace, every link shaped to ``--rate`` (1 Gbit/s) both ways. For each K
(2, 4, 8) the driver program (a subprocess in the driver's namespace) opens a
session on K of the workers (one core each) and, for each model size, runs

* ``sparknet.spark.train`` with each ``--exchanges`` (``socket``: the
  driver's star; ``spark``: broadcast and task results; ``ring``: the
  executors' ring reduce-scatter/all-gather), on a net of one InnerProduct
  layer holding the model's parameter count (61 M: CaffeNet's size, 7 M:
  GoogLeNet's) and next to no compute (batch 1, ``sync_interval=1``), one
  warm-up round and ``--rounds`` timed ones. From the rounds' history: the
  **round time**, and the **communication time** = round time minus the
  slowest task's compute and state save (what the exchange and Spark's job
  around it cost);
* Spark's ``TorchDistributor`` on the same K executors (PyTorch DDP's gloo):
  ``all_reduce`` of a flat tensor of the same size (its communication time),
  and a DDP step of a Linear layer of that size (its round time).

Beside each figure: the time the bytes alone need on the links (star: 2·K·M
through the driver's link; ring: 2·(K−1)/K·M per node in a round that leaves
the weights on the executors, as the medians here do, + M/K in one that sends
the driver its copy; allreduce: 2·(K−1)/K·M per node), and how busy the
machine's CPUs were meanwhile, which
says whether links or CPU limited the transfer (every node shares this
machine's cores).

Then the digits run of ``bench/peers.py`` (LeNet, K = 2, 600 steps per worker)
on the same cluster: ``train`` vs ``TorchDistributor`` images/s and accuracy.

The targets (1 Gbit/s, 61 M parameters) print last, one line each:
``target NAME: VALUE (OP THRESHOLD) met|NOT met``.

Needs root (network namespaces) and PyTorch (``make bench-env``) for the peer.

    .venv/bin/python bench/cluster_scaling.py [--ks 2,4,8] [--models 61M,7M]
        [--exchanges socket,spark,ring] [--rounds 3] [--rate 1gbit] [--no-torch]
        [--no-digits] [--plot runs/cluster_scaling.png] [--smoke]

``--smoke``: K = 2, a 1 M-parameter model, one timed round, every exchange
and line (PyTorch parts only where it is installed): a test, not a measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: name -> (input width D, outputs N): one InnerProduct layer of D*N + N parameters
MODELS = {"61M": (14884, 4096),  # 60,969,060 (CaffeNet: 60,965,224)
          "7M": (1706, 4096),  # 6,991,872 (GoogLeNet: about 7.0 M)
          "1M": (255, 4096)}  # --smoke
EXCHANGES = ("socket", "spark", "ring")
TARGET_MODEL = "61M"


def params(model: str) -> int:
    d, n = MODELS[model]
    return d * n + n


# -- the driver program's side (runs in the driver's namespace) ---------------------------------

def _cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine (``/proc/stat`` is not per namespace)."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _solver(model: str) -> Any:
    from sparknet.dsl import InnerProductLayer, InputLayer, LrPolicy, NetParam, SoftmaxWithLoss, SolverParam

    d, n = MODELS[model]
    net = NetParam(f"ip{model}", InputLayer("data", shape=(1, d)), InputLayer("label", shape=(1, 1)),
                   InnerProductLayer("ip", ["data"], num_output=n, weight_filler="xavier"),
                   SoftmaxWithLoss("loss", ["ip", "label"]))
    return SolverParam(net, base_lr=0.001, momentum=0.9, lr_policy=LrPolicy.fixed())


def sparknet_round(spark: Any, model: str, exchange: str, k: int, rounds: int) -> dict:
    """``train`` with ``exchange`` on K workers: medians of the timed rounds."""
    import numpy as np

    from sparknet.spark import train

    d, n = MODELS[model]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4 * k, d), dtype=np.float32)
    y = rng.integers(0, n, 4 * k).astype(np.float32)
    marks: list[tuple[float, float]] = []

    def mark(rec: dict) -> None:  # CPU use from the end of the warm-up round on
        marks.append(_cpu_busy())

    res = train(spark, _solver(model), (x, y), workers=k, sync_interval=1, rounds=1 + rounds,
                test_interval=0, exchange=exchange, progress=False, blas_threads=1,
                callback=mark)
    steady = res.history[1:]
    comm = [r["seconds"]["round"] - max(p["compute"] for p in r["partitions"])
            - r["seconds"]["save"] for r in steady]
    (b0, t0), (b1, t1) = marks[0], marks[-1]
    got = {"round": statistics.median(r["seconds"]["round"] for r in steady),
           "comm": statistics.median(comm), "cpu": (b1 - b0) / max(t1 - t0, 1.0),
           "exchange": res.exchange}
    if all("exchange" in r["seconds"] for r in steady):  # the ring's collective alone
        got["collective"] = statistics.median(r["seconds"]["exchange"] for r in steady)
    return got


def torch_allreduce(size: int, width: int, reps: int) -> dict:
    """One TorchDistributor process: gloo all_reduce of ``size`` floats; a DDP step."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    flat = torch.ones(size)
    dist.all_reduce(flat)  # warm-up: connections
    times = []
    for _ in range(reps):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(flat)
        times.append(time.perf_counter() - t0)
    del flat
    outputs = 4096
    model = DistributedDataParallel(torch.nn.Linear(width, outputs))
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    x, y = torch.randn(1, width), torch.randint(0, outputs, (1,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    step()
    steps = []
    for _ in range(reps):
        dist.barrier()
        t0 = time.perf_counter()
        step()
        steps.append(time.perf_counter() - t0)
    dist.destroy_process_group()
    return {"comm": statistics.median(times), "round": statistics.median(steps)}


def torch_round(model: str, k: int, reps: int) -> dict:
    from pyspark.ml.torch.distributor import TorchDistributor

    b0, t0 = _cpu_busy()
    got = TorchDistributor(num_processes=k, local_mode=False, use_gpu=False).run(
        torch_allreduce, params(model), MODELS[model][0], reps)
    b1, t1 = _cpu_busy()
    got["cpu"] = (b1 - b0) / max(t1 - t0, 1.0)
    return got


def child(task: dict) -> int:
    """The driver program: one session on K executors, every model and exchange."""
    from sparknet.testing.netcluster import session, wait_for_executors

    k = task["k"]
    spark = session(f"sparknet-bench-cluster-K{k}", **{
        "spark.cores.max": str(k), "spark.driver.memory": "4g",
        "spark.driver.maxResultSize": "4g", "spark.executorEnv.OMP_NUM_THREADS": "1"})
    try:
        wait_for_executors(spark, k)
        if task.get("digits"):
            sys.path.insert(0, str(HERE))
            import peers
            from peers import SMOKE_SPARK, SPARK, spark_figures
            from pyspark import cloudpickle

            # TorchDistributor pickles peers.distributor_train: by value, as executors
            # cannot import bench/ modules
            cloudpickle.register_pickle_by_value(peers)

            got = spark_figures(1, task["torch"], SMOKE_SPARK if task["smoke"] else SPARK,
                                spark=spark)
            print("RESULT " + json.dumps({"digits": got}), flush=True)
            return 0
        for model in task["models"]:
            for ex in task["exchanges"]:
                if f"{ex}:{model}:{k}" in task["skip"]:
                    continue
                got = sparknet_round(spark, model, ex, k, task["rounds"])
                print("RESULT " + json.dumps({"k": k, "model": model, "method": ex, **got}),
                      flush=True)
            if task["torch"]:
                got = torch_round(model, k, max(task["rounds"], 2))
                print("RESULT " + json.dumps({"k": k, "model": model, "method": "torch",
                                              **got}), flush=True)
    finally:
        spark.stop()
    return 0


# -- the owner's side (root namespace): the cluster, the table, the targets -------------------

def ideal_seconds(method: str, k: int, model: str, rate_bits: float) -> float:
    """What the bytes alone need on the busiest link."""
    m = 4 * params(model) * 8 / rate_bits  # one model over one link, seconds
    if method == "socket":
        return 2 * k * m  # K copies out, then K back, through the driver's link
    if method == "spark":
        return (k + 1) * m  # K results in; the torrent broadcast sends at least one copy out
    return 2 * (k - 1) / k * m  # the ring (a round that sends the driver nothing); torch


def limit(row: dict, rate_bits: float) -> str:
    link = ideal_seconds(row["method"], row["k"], row["model"], rate_bits) / row["comm"]
    return (f"link {100 * link:3.0f}%, CPU {100 * row['cpu']:3.0f}% -> "
            + ("CPU" if row["cpu"] > 0.9 and link < 0.8 else "links" if link >= 0.6
               else "overhead"))


def plot(rows: list[dict], path: Path, rate: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows}, key=lambda m: -params(m))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        for method in sorted({r["method"] for r in rows}):
            pts = sorted((r["k"], r["round"]) for r in rows
                         if r["model"] == model and r["method"] == method)
            label = "TorchDistributor (DDP step)" if method == "torch" else f"exchange={method}"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set_xlabel("workers K")
        ax.set_ylabel("round time, s")
        ax.set_title(f"{model} parameters, {rate} links")
        ax.set_xticks(sorted({r["k"] for r in rows}))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _target(name: str, value: float, op: str, threshold: float) -> str:
    ok = value <= threshold if op == "<=" else value >= threshold
    return f"target {name}: {value:.2f} ({op} {threshold}) {'met' if ok else 'NOT met'}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ks", default="2,4,8")
    ap.add_argument("--models", default="61M,7M")
    ap.add_argument("--exchanges", default=",".join(EXCHANGES))
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per run")
    ap.add_argument("--rate", default="1gbit")
    ap.add_argument("--skip", default="",
                    help="runs to leave out, METHOD:MODEL:K,... (exchange='spark' holds K "
                         "results in the driver's JVM: spark:61M:8 needs more than 4g)")
    ap.add_argument("--no-torch", action="store_true", help="leave TorchDistributor out")
    ap.add_argument("--no-digits", action="store_true", help="leave the digits run out")
    ap.add_argument("--plot", default=None, help="write the round-time plot here (PNG)")
    ap.add_argument("--smoke", action="store_true",
                    help="K = 2, a 1M-parameter model, 1 round: a test, not a measurement")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.pop("OPENBLAS_CORETYPE", None)  # sparknet's own core choice, as peers.py
    if args.child:
        return child(json.loads(args.child))

    from sparknet.testing.netcluster import NetCluster, rate_bits, unavailable

    reason = unavailable()
    if reason:
        print(f"cannot run: {reason}")
        return 1
    try:
        import torch  # noqa: F401
        have_torch = not args.no_torch
    except ImportError:
        have_torch = False
        print("PyTorch is not installed (make bench-env): TorchDistributor left out")
    if args.smoke:
        args.ks, args.models, args.rounds = "2", "1M", 1
    ks = [int(k) for k in args.ks.split(",")]
    models = args.models.split(",")
    exchanges = [e for e in args.exchanges.split(",") if e]
    bits = rate_bits(args.rate)
    rows: list[dict] = []
    digits = None
    t_start = time.perf_counter()
    with NetCluster(max(ks), rate=args.rate, executor_memory="1536m") as cluster:
        print(f"cluster: {len(cluster.workers)} workers + driver + master, each in its own "
              f"network namespace, links {args.rate} both ways; {os.cpu_count()} CPUs, "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
        tasks = [{"k": k, "models": models, "exchanges": exchanges, "rounds": args.rounds,
                  "torch": have_torch, "smoke": args.smoke,
                  "skip": [x for x in args.skip.split(",") if x]} for k in ks]
        if not args.no_digits:
            tasks.append({"k": 2, "digits": True, "torch": have_torch, "smoke": args.smoke})
        for task in tasks:
            done = cluster.run([sys.executable, str(Path(__file__).resolve()), "--child",
                                json.dumps(task)], timeout=3600)
            got = [json.loads(line[7:]) for line in done.stdout.splitlines()
                   if line.startswith("RESULT ")]
            if done.returncode != 0:
                print(done.stdout[-5000:])
                raise SystemExit(f"the driver program for {task} failed")
            for g in got:
                if "digits" in g:
                    digits = g["digits"]
                    continue
                rows.append(g)
                extra = (f", collective {g['collective']:.2f} s" if "collective" in g else "")
                print(f"K={g['k']} {g['model']:>4} {g['method']:<7} round {g['round']:6.2f} s, "
                      f"communication {g['comm']:6.2f} s{extra} ({limit(g, bits)})", flush=True)
    print(f"\n(all measured in this invocation, {time.perf_counter() - t_start:.0f} s, "
          f"load now {os.getloadavg()[0]:.1f})")
    print(f"\n{'model':>5} {'K':>3} {'method':<8} {'round s':>8} {'comm s':>8} {'coll. s':>8} "
          f"{'bytes-only s':>12}  limited by")
    for r in rows:
        coll = f"{r['collective']:8.2f}" if "collective" in r else f"{'':8}"
        print(f"{r['model']:>5} {r['k']:>3} {r['method']:<8} {r['round']:8.2f} {r['comm']:8.2f} "
              f"{coll} {ideal_seconds(r['method'], r['k'], r['model'], bits):12.2f}  "
              f"{limit(r, bits)}")
    print("(round: a training round, or a DDP step for torch; comm: round minus compute and "
          "state save, or one all_reduce for torch; coll.: the ring's collective once every "
          "task had joined)")
    if args.plot:
        plot(rows, Path(args.plot), args.rate)
        print(f"plot: {args.plot}")
    if digits:
        for name, runs in digits.items():
            r = runs[-1]
            print(f"digits K=2 {'train' if name == 'sparknet' else 'TorchDistributor'}: "
                  f"images/s {r['ips']:.0f}, wall {r['wall']:.1f} s, accuracy {r['accuracy']:.4f}")

    def comm(method: str, k: int, model: str = TARGET_MODEL, what: str = "comm"
             ) -> float | None:
        return next((r.get(what) for r in rows
                     if r["method"] == method and r["k"] == k and r["model"] == model), None)

    kmax, kmin = max(ks), min(ks)
    model = TARGET_MODEL if TARGET_MODEL in models else models[0]
    if comm("ring", kmax, model) and comm("ring", kmin, model):
        print(_target(f"ring K={kmax} / K={kmin} communication, {model}",
                      comm("ring", kmax, model) / comm("ring", kmin, model), "<=", 1.3))
    if comm("ring", kmax, model) and comm("socket", kmax, model):
        print(_target(f"ring speed-up over the star at K={kmax}, {model}",
                      comm("socket", kmax, model) / comm("ring", kmax, model), ">=", 3.0))
    if comm("ring", kmax, model, "collective") and comm("torch", kmax, model):
        print(f"ring round communication vs TorchDistributor all_reduce at K={kmax}, {model}: "
              f"{comm('torch', kmax, model) / comm('ring', kmax, model):.2f}x (Spark's job, "
              "the state load and the driver's side included)")
        print(_target(f"ring collective vs TorchDistributor all_reduce at K={kmax}, {model}",
                      comm("torch", kmax, model) / comm("ring", kmax, model, "collective"),
                      ">=", 1.0))
    if digits and "torch" in digits:
        s, t = digits["sparknet"][-1], digits["torch"][-1]
        print(_target("digits K=2 train / TorchDistributor images/s", s["ips"] / t["ips"],
                      ">=", 1.2))
        print(_target("digits K=2 train accuracy", s["accuracy"], ">=", 0.97))
    elif digits:
        print(_target("digits K=2 train accuracy", digits["sparknet"][-1]["accuracy"], ">=",
                      0.97))
    return 0


if __name__ == "__main__":
    sys.exit(main())
