"""The README's Spark tour as a new user runs it: every Python block and the command-line
block, twice in a row, in a fresh clone.

A module of its own (the longest test of the suite), so that pytest-xdist's
``--dist loadfile`` runs it beside ``test_examples.py``'s apps.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from apphelp import ROOT, clean_env, clone_env, fresh_clone, git_status

#: Sections whose blocks the tour leaves out, and the test that runs each as written: the
#: Spark Connect block opens a Connect session, after which a Python process is a Connect
#: client for good (pyspark's is_remote()), so it runs in a process of its own.
OWN_PROCESS = {"Spark Connect": "tests/test_connect.py"}


def readme_blocks() -> list[tuple[str, str, str]]:
    """``(heading, language, code)`` of every ```python block of the README (but those of
    :data:`OWN_PROCESS`) and of its command-line block, in order."""
    text = (ROOT / "README.md").read_text()
    blocks, heading = [], ""
    for part in re.split(r"^(#+ .*|```\w*\n(?:.*\n)*?```)$", text, flags=re.MULTILINE):
        if part.startswith("#"):
            heading = part.lstrip("# ").strip()
        elif part.startswith("```python\n") and heading not in OWN_PROCESS:
            blocks.append((heading, "python", part[len("```python\n"):-3]))
        elif part.startswith("```sh\n") and heading == "From the command line":
            blocks.append((heading, "sh", part[len("```sh\n"):-3]))
    return blocks


@pytest.mark.timeout(1800)  # two tours (the second resumes its training) on a busy machine
def test_readme_runs_twice_in_a_row_from_a_fresh_clone_and_leaves_it_clean(tmp_path):
    """Every Python block and the command-line block of the README, twice in a row in one
    interpreter (the venv's python only, no activated venv), in a fresh clone: the second
    run passes too, each example says where it wrote, and git sees no new or changed file."""
    clone = fresh_clone(tmp_path / "clone")
    blocks = readme_blocks()
    assert [(h, lang) for h, lang, _ in blocks] == [
        ("1. Define a net in Python, with mistakes caught where they are written", "python"),
        ("2. Load a Caffe prototxt and let Spark feed it", "python"),
        ("3. Train on Spark", "python"), ("4. Extract features", "python"),
        ("5. One machine, no Spark: the engine", "python"), ("From the command line", "sh"),
        ("Spark ML pipelines", "python"), ("Choosing tau and the outer optimizer", "python")]
    (tmp_path / "blocks.json").write_text(json.dumps(blocks))
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "readme_tour.py"),
                           str(tmp_path / "blocks.json")], cwd=clone, env=clone_env(clean_env()),
                          capture_output=True, text=True, timeout=1700, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    tours = [json.loads(line.split(" ", 2)[2]) for line in done.stdout.splitlines()
             if line.startswith("TOUR ")]
    assert len(tours) == 2
    assert tours[0]["accuracy"] >= 0.95
    # the second tour resumes from the first one's last checkpoint: no round runs again
    assert tours[0]["rounds"] == tours[1]["rounds"] == list(range(1, 13))
    assert tours[1]["accuracy"] == tours[0]["accuracy"]
    assert (clone / "runs/tour/ckpt/latest").read_text().strip() == "round-000012"
    # "Choosing tau and the outer optimizer": the taus its comment shows, and a net that
    # learns on the MNIST sample, both times
    for tour in tours:
        assert tour["tau"]["taus"] == [10, 10, 50, 50, 50, 50], tour
        assert tour["tau"]["accuracy"] >= 0.9, tour
    for written in ("runs/tour/history.jsonl", "runs/tour/lenet.caffemodel",
                    "runs/tour/features.parquet/_SUCCESS", "runs/engine/lenet.caffemodel",
                    "runs/googlenet.py", "runs/lenet.caffemodel",
                    "runs/features.parquet/_SUCCESS", "runs/lenet-pipeline/metadata/_SUCCESS"):
        assert (clone / written).is_file(), written
    for what, path in (("weights", "runs/tour/lenet.caffemodel"),
                       ("features", "runs/tour/features.parquet"),
                       ("weights", "runs/engine/lenet.caffemodel"), ("wrote", "runs/googlenet.py"),
                       ("weights", "runs/lenet.caffemodel"),
                       ("features (ip1)", "runs/features.parquet"),
                       ("pipeline", "runs/lenet-pipeline")):  # where each one wrote, twice
        shown = re.findall(rf"^{re.escape(what)}:?\s+{re.escape(path)}$", done.stdout, re.M)
        assert len(shown) == 2, (what, path)
    assert git_status(clone) == ""
