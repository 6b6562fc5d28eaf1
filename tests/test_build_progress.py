"""The Caffe build shows its progress: objects compiled / to compile, and the time taken.

Compiling all of Caffe takes minutes, so the test compiles a small source tree
laid out as Caffe's with the real recipe (``caffe/caffe.mk``, through
``caffe/build.py``'s own ``_make``): three sources, the generated
``caffe.pb.cc`` and the link, as ``make run`` does for the real thing.
"""
from __future__ import annotations

import io
import os
import re
import select
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "caffe"))
import build as caffe_build  # noqa: E402  (caffe/build.py, the module setup.py runs)

pytestmark = pytest.mark.timeout(600)

LINE = re.compile(r"^\[caffe\] compiled (\d+)/(\d+) objects, (\d+):(\d\d) elapsed$")


def small_caffe_tree(out: Path) -> None:
    """``out/src``: Caffe's layout with a tiny caffe.proto and three sources."""
    src = out / "src"
    (src / "src/caffe/proto").mkdir(parents=True)
    (src / "include").mkdir()
    (src / "src/caffe/proto/caffe.proto").write_text(
        'syntax = "proto2";\npackage caffe;\nmessage Tiny { optional int32 a = 1; }\n')
    for name in ("blob.cpp", "layers/tiny_layer.cpp", "util/math.cpp"):
        path = src / "src/caffe" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        func = re.sub(r"\W", "_", name)
        path.write_text('#include "caffe/proto/caffe.pb.h"\n'
                        f"int {func}(int x) {{ caffe::Tiny t; t.set_a(x); CHECK_GE(x, 0); "
                        "return t.a(); }\n")


def test_a_compile_reports_objects_done_of_total_and_elapsed_time(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARKNET_BUILD_JOBS", "2")
    small_caffe_tree(tmp_path)
    log = io.StringIO()  # not a terminal, as in CI: a line per tenth of the objects
    caffe_build._make(tmp_path, "cpu", "system", stream=log)
    assert (tmp_path / "lib/libcaffe.so").is_file()
    counted = [LINE.match(line) for line in log.getvalue().splitlines()]
    progress = [(int(m[1]), int(m[2])) for m in counted if m]
    # three sources and caffe.pb.cc, each counted once it is compiled, in order
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)], log.getvalue()
    assert any(line.startswith("protoc ") for line in log.getvalue().splitlines())

    again = io.StringIO()  # nothing to compile: no count, make says so
    caffe_build._make(tmp_path, "cpu", "system", stream=again)
    assert not any(LINE.match(line) for line in again.getvalue().splitlines())


def test_on_a_terminal_one_line_is_redrawn():
    master, slave = os.openpty()
    try:
        with open(slave, "w", closefd=False) as tty:
            progress = caffe_build.Progress(3, tty)
            assert progress.tty
            for _ in range(3):
                progress.step()
            progress.say("linking")
            tty.flush()
        shown = ""
        while "linking" not in shown and select.select([master], [], [], 30)[0]:
            shown += os.read(master, 4096).decode()
    finally:
        os.close(master)
        os.close(slave)
    # the terminal turns "\n" into "\r\n"; each step starts over with "\r"
    frames = [f for f in shown.replace("\r\n", "\n").split("\r") if f]
    assert [LINE.match(f.split("\n")[0])[1] for f in frames] == ["1", "2", "3"]
    assert shown.replace("\r\n", "\n").endswith("elapsed\nlinking\n")
