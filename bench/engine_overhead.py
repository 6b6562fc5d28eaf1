"""What driving Caffe from Python costs: CaffeNet.train against a C++ driver.

For each net, the same solver, batch size and number of steps run

  (a) in ``engine_driver.cpp``, a small C++ program linked against the same
      libcaffe, copying a fresh batch into the input blobs before every step;
  (b) through ``sparknet.engine.CaffeNet.train`` from Python, fed the same way.

Both use single-threaded OpenBLAS. Runs alternate (a, b, a, b, ...) so that
load from elsewhere on the machine hits both alike, and each side's best run
counts. The ratio (b)/(a) of images per second is printed last; the target is
>= 0.97 for LeNet (batch 64) and CIFAR-10 quick (batch 100).

A second figure shows that the GIL is released while Caffe computes: two
Python threads each training their own LeNet, against the same work done one
after the other (about 2x on two free cores; 1x would mean the GIL is held).

    .venv/bin/python bench/engine_overhead.py [--steps N] [--repeats R] [--smoke]

``--smoke`` runs the same paths and lines with 2 steps (1 untimed) and 1 run per
side (a test, not a measurement). The C++ driver is compiled once per source
and Caffe build (``bench/_build.py`` caches it).
"""
from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from google.protobuf import text_format

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _build import ROOT, compile_against_caffe

from sparknet.engine import CaffeNet, set_blas_threads
from sparknet.engine.net import _engine_solver
from sparknet.proto import caffe_pb2

NETS = {
    "LeNet": ("caffe/models/lenet/lenet_train_test.prototxt", 64),
    "CIFAR-10 quick": ("caffe/models/cifar10_quick/train_val.prototxt", 100),
}


def solver_for(prototxt: Path, batch: int) -> caffe_pb2.SolverParameter:
    net = caffe_pb2.NetParameter()
    text_format.Parse(prototxt.read_text(), net)
    for layer in net.layer:
        if layer.type == "Input":
            layer.input_param.shape[0].dim[0] = batch
    solver = caffe_pb2.SolverParameter(base_lr=0.001, momentum=0.9, weight_decay=0.004,
                                       lr_policy="fixed", random_seed=1)
    solver.net_param.CopyFrom(net)
    return _engine_solver(solver)  # exactly what CaffeNet hands to Caffe


def python_pool(net: CaffeNet) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(0)
    pool = []
    for _ in range(8):
        batch = []
        for i, (_, shape) in enumerate(net.input_shapes.items()):
            if i == 1:
                batch.append(rng.integers(0, 10, shape).astype(np.float32))
            else:
                batch.append(rng.random(shape, dtype=np.float32))
        pool.append(batch)
    return pool


def time_python(solver: caffe_pb2.SolverParameter, steps: int, warmup: int) -> float:
    net = CaffeNet(solver)
    pool = python_pool(net)
    net.train(warmup, itertools.cycle(pool))
    t0 = time.perf_counter()
    net.train(steps, itertools.cycle(pool))
    return time.perf_counter() - t0


def time_cpp(driver: Path, solver_file: Path, steps: int, warmup: int) -> float:
    done = subprocess.run([str(driver), str(solver_file), str(steps), str(warmup)],
                          capture_output=True, text=True, check=True)
    return float(done.stdout.strip())


def gil_figure(steps: int, warmup: int = 5) -> float:
    solver = solver_for(ROOT / NETS["LeNet"][0], 64)
    nets = [CaffeNet(solver) for _ in range(2)]
    pools = [python_pool(n) for n in nets]
    for n, p in zip(nets, pools):
        n.train(warmup, itertools.cycle(p))
    t0 = time.perf_counter()
    for n, p in zip(nets, pools):
        n.train(steps, itertools.cycle(p))
    sequential = time.perf_counter() - t0
    threads = [threading.Thread(target=n.train, args=(steps, itertools.cycle(p)))
               for n, p in zip(nets, pools)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sequential / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per run (LeNet)")
    parser.add_argument("--repeats", type=int, default=5, help="alternating runs per side")
    parser.add_argument("--smoke", action="store_true",
                        help="2 steps, 1 run per side: a test of the paths, not a measurement")
    args = parser.parse_args()
    least, warmup = 20, 5  # fewest timed steps (larger net, GIL figure); untimed steps
    if args.smoke:
        args.steps, args.repeats, least, warmup = 2, 1, 2, 1
    set_blas_threads(1)
    ratios = {}
    with tempfile.TemporaryDirectory() as tmp:
        driver = compile_against_caffe(ROOT / "bench" / "engine_driver.cpp")
        for name, (path, batch) in NETS.items():
            prototxt = ROOT / path
            if not prototxt.exists():
                print(f"{name}: {path} not found, skipped")
                continue
            solver = solver_for(prototxt, batch)
            solver_file = Path(tmp) / "solver.prototxt"
            solver_file.write_text(text_format.MessageToString(solver))
            steps = args.steps if batch <= 64 else max(least, args.steps // 4)
            cpp, py = [], []
            for _ in range(args.repeats):
                cpp.append(time_cpp(driver, solver_file, steps, warmup))
                py.append(time_python(solver, steps, warmup))
            a, b = steps * batch / min(cpp), steps * batch / min(py)
            ratios[name] = b / a
            print(f"{name} (batch {batch}, {steps} steps, best of {args.repeats}): "
                  f"C++ driver {a:.0f} img/s, CaffeNet.train {b:.0f} img/s")
    print(f"GIL released during compute: 2 threads vs sequential = "
          f"{gil_figure(max(least, args.steps // 4), warmup):.2f}x")
    for name, ratio in ratios.items():
        print(f"ratio {name}: CaffeNet.train / C++ driver = {ratio:.3f} (target >= 0.97)")


if __name__ == "__main__":
    main()
