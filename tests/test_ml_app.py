"""examples/pipeline_app.py, run as a user runs it (the README's Spark ML example runs in
test_readme.py, with the rest of the README)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(600)


def env() -> dict[str, str]:
    return dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
                SPARK_LOCAL_IP="127.0.0.1")


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=500, check=False)
    assert proc.returncode == 0, f"{proc.stdout}\n--- stderr\n{proc.stderr[-6000:]}"
    return proc


def test_pipeline_app_tunes_fits_saves_loads_and_scores(tmp_path):
    proc = run([sys.executable, str(ROOT / "examples" / "pipeline_app.py"), "--tune",
                "--lr", "0.000001", "--lr", "0.01", "--rounds", "3",
                "--output", str(tmp_path / "out")], tmp_path)
    out = proc.stdout
    low, high = (float(v) for v in re.findall(r"validation accuracy ([\d.]+)", out))
    assert high > low
    assert "best baseLr: 0.01" in out
    accuracy = float(re.search(r"test accuracy of the reloaded pipeline: ([\d.]+)", out)[1])
    assert accuracy >= 0.9
    assert (tmp_path / "out" / "model" / "metadata").is_dir()
    assert list((tmp_path / "out" / "predictions.parquet").glob("part-*.parquet"))


def test_pipeline_app_refuses_a_path_spark_cannot_write(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "pipeline_app.py"),
                           "--rounds", "1", "--output", "nowhere://x/y"], cwd=tmp_path,
                          env=env(), capture_output=True, text=True, timeout=500, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "nowhere://x/y: Spark cannot open a filesystem for 'nowhere://'" in proc.stderr
    assert "fitted in" not in proc.stdout  # refused before any training
