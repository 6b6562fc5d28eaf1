"""The package's import arrows point one way, as DESIGN.md's table of rooms says.

Read from the source (every ``import``/``from`` naming ``sparknet.*``, also inside
functions), so an arrow running back up fails here, not in a review.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "sparknet"

#: room -> the rooms it may import (DESIGN.md); ``_util`` imports nothing of sparknet.
ALLOWED = {
    "_util": set(),
    "proto": {"_util"},
    "dsl": {"proto", "_util"},
    "models": {"dsl", "proto", "_util"},
    "engine": {"proto", "_util"},
    "data": {"proto", "_util"},
    "spark": {"engine", "data", "proto", "dsl", "_util"},
    "ml": {"spark", "engine", "data", "proto", "dsl", "_util"},
    "testing": {"_util"},
}


def _room(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, room)`` of every sparknet room the module imports."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names
                                     if node.module == "sparknet"]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "sparknet" and len(parts) > 1 and not (
                    node.__class__ is ast.ImportFrom and name == "sparknet"):
                found.append((node.lineno, parts[1]))
    return found


MODULES = sorted(p for p in ROOT.rglob("*.py") if _room(p) in ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_import_runs_back_up_the_rooms(path):
    room = _room(path)
    wrong = [f"{path.relative_to(ROOT.parent)}:{line} imports sparknet.{target}"
             for line, target in _imports(path)
             if target != room and target not in ALLOWED[room]]
    assert not wrong, f"room '{room}' may import only {sorted(ALLOWED[room])}: " + "; ".join(wrong)


def test_the_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from sparknet.spark import train\n    import sparknet.ml.stages\n")
    assert _imports(bad) == [(2, "spark"), (3, "ml")]
