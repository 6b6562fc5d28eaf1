"""The package's import arrows point one way, as DESIGN.md's table of rooms says.

Read from the source (every ``import``/``from`` naming ``sparknet.*``, also inside
functions), so an arrow running back up fails here, not in a review. Two rules:

* a room imports only the rooms below it (:data:`ALLOWED`, DESIGN.md's table);
* a room uses another room's public modules only: ``sparknet.spark._worker`` is
  ``spark``'s own business, never ``ml``'s or the front end's.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "sparknet"

#: room -> the rooms it may import (the README's rooms table, DESIGN.md); ``_util`` imports
#: nothing of sparknet.
#: ``frontend`` and ``cli`` are the front end: every room is below them.
ALLOWED = {
    "_util": set(),
    "io": {"_util"},
    "proto": {"io", "_util"},
    "dsl": {"proto", "io", "_util"},
    "models": {"dsl", "proto", "io", "_util"},
    "engine": {"proto", "io", "_util"},
    "data": {"proto", "io", "_util"},
    "spark": {"engine", "data", "proto", "dsl", "io", "_util"},
    "ml": {"spark", "engine", "data", "proto", "dsl", "io", "_util"},
    "testing": {"_util"},
    "frontend": {"ml", "spark", "engine", "data", "models", "proto", "dsl", "io", "_util"},
    "cli": {"frontend", "ml", "spark", "engine", "data", "models", "proto", "dsl", "io",
            "_util"},
    "__main__": {"cli"},
    "__init__": set(),
}

def _room(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported(path: Path) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of everything from sparknet the module imports."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("sparknet")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "sparknet":
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, room)`` of every sparknet room the module imports."""
    return [(line, name.split(".")[1]) for line, name in _imported(path)
            if len(name.split(".")) > 1]


def _private(path: Path) -> list[tuple[int, str]]:
    """``(line, name)`` of the imports of another room's private module or name."""
    room = _room(path)
    out = []
    for line, name in _imported(path):
        parts = name.split(".")
        if len(parts) < 3 or parts[1] == room:
            continue
        private = next((i for i, p in enumerate(parts[2:], 2) if p.startswith("_")), None)
        if private is not None:
            out.append((line, ".".join(parts[:private + 1])))
    return out


MODULES = sorted(p for p in ROOT.rglob("*.py") if _room(p) in ALLOWED)


def test_every_module_is_in_a_room():
    assert {_room(p) for p in ROOT.rglob("*.py")} <= set(ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_import_runs_back_up_the_rooms(path):
    room = _room(path)
    wrong = [f"{path.relative_to(ROOT.parent)}:{line} imports sparknet.{target}"
             for line, target in _imports(path)
             if target != room and target not in ALLOWED[room]]
    assert not wrong, f"room '{room}' may import only {sorted(ALLOWED[room])}: " + "; ".join(wrong)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_room_imports_another_rooms_private_modules(path):
    rel = path.relative_to(ROOT).as_posix()
    wrong = [f"{rel}:{line} imports {name}" for line, name in _private(path)]
    assert not wrong, "use the other room's public modules: " + "; ".join(wrong)


def test_the_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from sparknet.spark import train\n    import sparknet.ml.stages\n")
    assert _imports(bad) == [(2, "spark"), (3, "ml")]


def test_the_check_sees_a_private_import(tmp_path):
    pkg = tmp_path / "sparknet" / "ml"
    pkg.mkdir(parents=True)
    bad = pkg / "x.py"
    bad.write_text("from sparknet.spark._worker import net_entry\n"
                   "from sparknet.spark import train\n"
                   "from sparknet.ml._params import P\n"
                   "from sparknet.engine.net import _helper\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path / "sparknet"
    try:
        assert _private(bad) == [(1, "sparknet.spark._worker"),
                                 (4, "sparknet.engine.net._helper")]
    finally:
        ROOT = saved


def test_the_readme_table_of_rooms_says_what_allowed_says():
    """The README's Architecture table documents these arrows: the two stay one."""
    text = (ROOT.parent / "README.md").read_text()
    below = {"frontend": "every room below it", "cli": "frontend and every room below it"}
    for room, allowed in ALLOWED.items():
        if room in ("__main__", "__init__"):
            continue
        name = f"sparknet/{room}.py" if room in ("_util", "frontend", "cli") else f"sparknet/{room}/"
        row = next((line for line in text.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"README's rooms table has no row for `{name}`"
        cell = row.rstrip().rstrip("|").rsplit("|", 1)[-1].strip()
        if room in below:
            assert cell == below[room], (room, cell)
            continue
        named = set() if cell == "nothing" else {c.strip().strip("`") for c in cell.split(",")}
        assert named == allowed - ({"_util"} if room != "io" else set()), (room, cell)


def test_a_spark_worker_imports_its_task_modules_and_not_the_drivers():
    """Unpickling a training task imports ``sparknet.spark`` first: its public names load on
    first use, so a new Python worker imports neither the trainer nor the DSL, nor
    scikit-learn (the digits are read from its file) — imports each worker paid in CPU."""
    import subprocess
    import sys

    probe = ("import sys, sparknet.spark._worker, sparknet.spark._store; "
             "from sparknet.data.digits import load_digits; load_digits(); "
             "print(sorted(m for m in sys.modules if m.startswith(('sparknet.spark.trainer', "
             "'sparknet.dsl', 'sparknet.ml', 'sklearn', 'scipy', 'pandas'))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout
    import sparknet.spark as spark

    assert sorted(spark.__all__) == sorted(spark._HOMES)
    assert spark.train.__module__ == "sparknet.spark.trainer"
    assert spark.schedule.TauSchedule is spark.TauSchedule  # modules as attributes, as before
    with pytest.raises(AttributeError, match="has no attribute 'Trainer'"):
        spark.Trainer  # noqa: B018 - the lookup is the test
