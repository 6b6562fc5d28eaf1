"""Every benchmark in ``bench/`` runs with ``--smoke`` and still prints its figure.

The benches are not run otherwise, so a refactor once broke ``bench/decode.py``
with no test failing. ``--smoke`` takes the same code paths at the smallest
sizes; here each runs as a user runs it (a subprocess from the repository
root) and must exit 0 and print its ratio line(s). Nothing is timed: the
figures of a smoke run mean nothing.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(420)

# script, extra arguments, lines the output must contain (regular expressions, per line)
BENCHES = [
    ("averaging.py", ["--spark", "--tree"],  # every exchange path
     [r"^communication time, sparknet / naive: \d+\.\d+x", r"^exchange='spark': ",
      r"^exchange='spark', tree: "]),
    # connect.py: its smoke run is in tests/test_connect.py (SMOKED_ELSEWHERE)
    # needs network namespaces (root); CI has no PyTorch: the exchanges and the star/ring
    # targets only
    ("cluster_scaling.py", ["--no-digits", "--exchanges", "socket,ring"],
     [r"^ +1M +2 ring +\d+\.\d+", r"^target ring K=2 / K=2 communication, 1M: \d+\.\d+",
      r"^target ring speed-up over the star at K=2, 1M: \d+\.\d+"]),
    # CI has no PyTorch: the curves (every method, the sync SGD reference, the plot) without
    # TorchDistributor's time to accuracy
    ("convergence.py", ["--no-torch"],
     [r"^target K=2 rounds to averaging's final accuracy, best outer \(\w+\) / averaging: "
      r"(\d+\.\d+|inf)x \(<= 0\.7\) (met|NOT met)$",
      r"^target K=2 accuracy below per-step sync SGD, \w+ after 3 rounds: -?\d+\.\d+ points",
      r"^target K=2 exchanges, per-step sync SGD / \w+: \d+\.\d+x \(>= 25\)",
      r"^K=2 sync SGD +accuracy( \d\.\d+){3}"]),
    ("decode.py", [],
     [r"^training path ratio, first pass \(sparknet / baseline, target >= 2x\): \d+\.\d+x",
      r"^resize 500x375 .* ratio \d+\.\d+x", r"^resize 1600x1200 .* ratio \d+\.\d+x",
      r"later passes .* \d+\.\d+x the baseline"]),
    ("engine_overhead.py", [],
     [r"^ratio LeNet: CaffeNet\.train / C\+\+ driver = \d+\.\d+",
      r"^ratio CIFAR-10 quick: CaffeNet\.train / C\+\+ driver = \d+\.\d+",
      r"^GIL released during compute: 2 threads vs sequential = \d+\.\d+x"]),
    ("inference.py", [],
     [r"^caffe_udf / predict\(\): \d+\.\d+x", r"^caffe_udf per worker / plain loop: \d+\.\d+x"]),
    # CI has neither PyTorch nor the MKL/scipy-openblas builds: two contenders on the
    # default build (its core chosen by sparknet / by OpenBLAS) give a ratio line, and
    # the Spark half runs train without TorchDistributor.
    ("peers.py", ["--no-torch", "--blas", "system,system-detected"],
     [r"^ratio lenet: engine \(system\) / system-detected = \d+\.\d+x",
      r"^train: images/s \d+"]),
    ("scaling.py", [],
     [r"^images/s, 2 workers / 1 worker: \d+\.\d+x", r"^time to 95%, 2 workers / 1 worker: ",
      r"^2 workers vs plain loop: \d+\.\d+x"]),
]


#: Benches whose smoke run lives in another module, which names the script: connect.py
#: runs against test_connect.py's Spark Connect server (``--remote``), a JVM start fewer.
SMOKED_ELSEWHERE = {"connect.py": "test_connect.py"}


def test_every_bench_is_covered():
    """A new bench script gets a smoke run here too."""
    scripts = {p.name for p in (ROOT / "bench").glob("*.py") if not p.name.startswith("_")}
    assert scripts == {name for name, _, _ in BENCHES} | set(SMOKED_ELSEWHERE)
    for script, module in SMOKED_ELSEWHERE.items():
        text = (ROOT / "tests" / module).read_text()
        assert f'"{script}"' in text and '"--smoke"' in text, f"{module} runs no {script} --smoke"


@pytest.mark.parametrize(("script", "extra", "expected"), BENCHES,
                         ids=[name for name, _, _ in BENCHES])
def test_bench_smoke(script, extra, expected):
    if script == "cluster_scaling.py":
        from sparknet.testing.netcluster import unavailable

        if unavailable():
            pytest.skip(unavailable())
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--smoke", *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400,
                          check=False)
    tail = f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert done.returncode == 0, tail
    for pattern in expected:
        assert re.search(pattern, done.stdout, re.MULTILINE), f"no line /{pattern}/\n{tail}"
