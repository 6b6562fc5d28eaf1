"""The `sparknet` command line, run as a user would: a separate process."""
from __future__ import annotations

import subprocess
import sys

import pytest

from sparknet.proto import ProtoLoader


def sparknet(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparknet", *args], capture_output=True,
                          text=True, timeout=600, cwd=cwd)


def test_help_lists_the_commands():
    done = sparknet("--help")
    assert done.returncode == 0
    for command in ("train", "test", "featurize", "info", "convert", "digits:", "s3://"):
        assert command in done.stdout


def test_info_of_a_prototxt_and_a_shipped_model(root):
    done = sparknet("info", str(root / "caffe/models/lenet/lenet_train_test.prototxt"))
    assert done.returncode == 0, done.stderr
    assert "conv1" in done.stdout and "(64, 20, 24, 24)" in done.stdout
    assert "parameters: 431,080" in done.stdout
    done = sparknet("info", "caffenet")
    assert done.returncode == 0, done.stderr
    assert "parameters: 60,965,224" in done.stdout


def test_info_of_a_caffemodel(tmp_path, root):
    from sparknet.engine import CaffeNet
    from sparknet.models import lenet

    path = tmp_path / "lenet.caffemodel"
    CaffeNet(lenet.solver(batch_size=4)).save_weights(path)
    done = sparknet("info", str(path))
    assert done.returncode == 0, done.stderr
    assert "ip1" in done.stdout and "parameters: 431,080" in done.stdout


def test_convert_prototxt_to_python_and_back(tmp_path, root):
    source = root / "caffe/models/googlenet/train_val.prototxt"
    py = tmp_path / "googlenet_dsl.py"
    done = sparknet("convert", str(source), "-o", str(py))
    assert done.returncode == 0, done.stderr
    assert "NetParam(" in py.read_text()
    back = tmp_path / "back.prototxt"
    done = sparknet("convert", str(py), "-o", str(back))
    assert done.returncode == 0, done.stderr
    assert ProtoLoader.load_net_prototxt(back) == ProtoLoader.load_net_prototxt(source)


@pytest.mark.parametrize("args, message", [
    (("info", "missing.prototxt"), "missing.prototxt: no such file"),
    (("info", "no_such_model"), "'no_such_model' is neither a shipped model"),
    (("train", "lenet", "--data", "ftp://x"), "unknown data source 'ftp://x'"),
])
def test_user_mistakes_exit_2_without_a_traceback(args, message):
    done = sparknet(*args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_bad_prototxt_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('name: "x"\nlayer {\n  name: "data"\n  type: "Input"\n  nonsense: 3\n}\n')
    done = sparknet("info", str(bad))
    assert done.returncode == 2
    assert f"{bad}:5" in done.stderr and "nonsense" in done.stderr
    assert "Traceback" not in done.stderr


def test_train_then_test_then_featurize_on_digits(tmp_path, spark):
    """`sparknet train digits:` end to end, then the weights it wrote, used twice."""
    weights = tmp_path / "lenet.caffemodel"
    done = sparknet("train", "lenet", "--data", "digits:", "--workers", "2", "--rounds", "6",
                    "--sync-interval", "50", "--test-interval", "3", "--master", "local[2]",
                    "--output", str(tmp_path / "run"), "--save", str(weights))
    assert done.returncode == 0, done.stderr[-3000:]
    accuracy = float(done.stdout.split("accuracy ")[1].split(",")[0])
    assert accuracy >= 0.95, done.stdout
    assert weights.exists() and (tmp_path / "run" / "history.jsonl").exists()

    done = sparknet("test", "lenet", "--weights", str(weights), "--data", "digits:",
                    "--master", "local[2]")
    assert done.returncode == 0, done.stderr[-3000:]
    import json
    scores = json.loads(done.stdout.strip().splitlines()[-1])
    assert scores["examples"] == 360 and scores["accuracy"] == pytest.approx(accuracy, abs=0.01)

    out = tmp_path / "features.parquet"
    done = sparknet("featurize", "lenet", "--weights", str(weights), "--data", "digits:",
                    "--blob", "ip1", "--output", str(out), "--master", "local[2]")
    assert done.returncode == 0, done.stderr[-3000:]
    frame = spark.read.parquet(str(out))
    assert frame.count() == 360
    assert len(frame.first()["ip1"]) == 500
