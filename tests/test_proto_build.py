"""caffe_pb2 is generated for the installed protobuf runtime, and says so when it is not.

setup.py writes ``sparknet/proto/caffe_pb2.py`` with the protoc whose code the installed
runtime accepts (grpcio-tools' for protobuf >= 5, which pyspark's Connect client needs),
instead of pinning protobuf around an old generated file.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import google.protobuf

from sparknet.proto import caffe_pb2

ROOT = Path(__file__).resolve().parent.parent


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(".")[:3])


def test_caffe_pb2_is_generated_for_the_installed_protobuf_runtime():
    runtime = _version(google.protobuf.__version__)
    header = re.search(r"^# Protobuf Python Version: ([\d.]+)",
                       Path(caffe_pb2.__file__).read_text(), re.M)
    if runtime >= (5, 26):  # a runtime that checks versions gets code that names its own
        assert header is not None
        gencode = _version(header.group(1))
        assert gencode[0] == runtime[0] and gencode <= runtime, (gencode, runtime)
    net = caffe_pb2.NetParameter(name="n", layer=[caffe_pb2.LayerParameter(name="a", type="ReLU")])
    again = caffe_pb2.NetParameter.FromString(net.SerializeToString())
    assert again == net and again.layer[0].type == "ReLU"


def test_code_generated_for_another_protobuf_fails_naming_the_fix(tmp_path):
    """A protobuf upgraded after the build: one ImportError naming the runtime and the fix."""
    pkg = tmp_path / "sparknet"
    shutil.copytree(ROOT / "sparknet" / "proto", pkg / "proto",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "sparknet" / "io", pkg / "io", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "sparknet" / "__init__.py", pkg / "__init__.py")
    shutil.copy(ROOT / "sparknet" / "_util.py", pkg / "_util.py")
    generated = pkg / "proto" / "caffe_pb2.py"
    text = generated.read_text()
    runtime = _version(google.protobuf.__version__)
    if "ValidateProtobufRuntimeVersion" in text:  # code for a newer protobuf than installed
        text = re.sub(r"(ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,"
                      r"\s*)(\d+),\s*(\d+),", lambda m: f"{m.group(1)}{runtime[0]}, 999,", text)
    else:  # protoc 3.21's code: make it ask for what the runtime lacks
        text = "from google.protobuf import no_such_runtime_module\n" + text
    generated.write_text(text)
    proc = subprocess.run([sys.executable, "-c", "import sparknet.proto"], cwd=tmp_path,
                          capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: sparknet.proto.caffe_pb2 was generated for another "
                           f"protobuf than the installed {google.protobuf.__version__}"), last
    assert "make build" in last
