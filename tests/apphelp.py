"""Helpers for the tests that run what a new user runs: a fresh clone of this repository,
a shell without an activated venv, and ``git status`` of the clone afterwards
(``test_examples.py``'s apps and ``test_readme.py``'s tour share them)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def clean_env() -> dict[str, str]:
    """A shell without an activated venv: no PYSPARK_* settings, the venv's bin/ not on PATH."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYSPARK_", "VIRTUAL_ENV", "PYTHONPATH"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and Path(p).resolve() != VENV_BIN.resolve())
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    return env


def fresh_clone(dest: Path) -> Path:
    """A ``git clone`` of this repository (its committed tree): what a new user has."""
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(dest)], check=True, timeout=300)
    return dest


def clone_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a process working in a clone with this checkout's sparknet.

    The clone's own ``sparknet/`` is not built (this checkout's venv runs this
    checkout's sparknet), so Spark's Python workers, started in the clone, must
    not import it from their working folder, as a venv installed from the clone
    itself would not: Python 3.11's ``PYTHONSAFEPATH`` leaves that folder off
    ``sys.path``.
    """
    return {**env, "PYTHONSAFEPATH": "1"}


def git_status(clone: Path) -> str:
    """``git status --porcelain`` of ``clone``, untracked files listed one by one."""
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=clone,
                          capture_output=True, text=True, check=True, timeout=120).stdout
