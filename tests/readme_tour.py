"""Run the README's examples as a user pasting the tour into one interpreter, twice.

``python tests/readme_tour.py BLOCKS.json`` (from the folder the examples should
write in): ``BLOCKS.json`` holds ``[heading, language, code]`` of each block, in
order (``tests/test_readme.py`` extracts them). Every block runs in one
namespace, all of them twice in a row. A statement followed by comment lines
``# SomeError: message`` must raise exactly that error; a ``sh`` block's
``.venv/bin/sparknet`` commands run through :func:`sparknet.cli.main` in this
interpreter (so they share the tour's Spark session) and must exit 0. After each
tour a line ``TOUR <n> <json>`` gives the accuracy and rounds of the tour's
training run (section 3), and the taus and test accuracy of the run of
"Choosing tau and the outer optimizer" (whose comment shows the taus).
"""
from __future__ import annotations

import ast
import json
import shlex
import sys
from pathlib import Path

from sparknet import cli

NAMESPACE: dict = {"__name__": "__main__"}
#: The block whose training run (``result``) the ``TOUR`` line describes.
TRAINING = "3. Train on Spark"
#: The block whose run's taus and accuracy the ``TOUR`` line gives as ``tau``.
TAU = "Choosing tau and the outer optimizer"


def expected_error(lines: list[str], end: int) -> str | None:
    """``"SomeError: message"`` as the comment lines right after line ``end`` write it."""
    comment = []
    for line in lines[end:]:
        if not line.startswith("#"):
            break
        comment.append(line.lstrip("#").strip())
    text = " ".join(comment)
    return text if text.split(":", 1)[0].endswith("Error") else None


def run_python(code: str, where: str) -> None:
    lines = code.splitlines()
    for stmt in ast.parse(code).body:
        compiled = compile(ast.Module([stmt], type_ignores=[]), where, "exec")
        expected = expected_error(lines, stmt.end_lineno or stmt.lineno)
        if expected is None:
            exec(compiled, NAMESPACE)
            continue
        try:
            exec(compiled, NAMESPACE)
        except Exception as e:  # noqa: BLE001 - compared with what the README says
            got = f"{type(e).__name__}: {' '.join(str(e).split())}"
            assert got == expected, f"{where}: raised {got!r}, the README says {expected!r}"
        else:
            raise AssertionError(f"{where}: line {stmt.lineno} raised nothing, the README "
                                 f"says {expected!r}")


def run_sh(code: str, where: str) -> None:
    for command in code.replace("\\\n", " ").splitlines():
        argv = shlex.split(command, comments=True)
        if argv:
            assert argv[0] == ".venv/bin/sparknet", f"{where}: not a sparknet command: {command}"
            assert cli.main(argv[1:]) == 0, f"{where}: {command} failed"


def main(blocks_file: str) -> None:
    blocks = json.loads(Path(blocks_file).read_text())
    for attempt in (1, 2):
        for heading, language, code in blocks:
            (run_python if language == "python" else run_sh)(code, f"README {heading!r}")
            if heading == TRAINING:
                result = NAMESPACE["result"]  # later blocks may name another result so
            elif heading == TAU:
                tau = {"taus": [h["tau"] for h in NAMESPACE["result"].history],
                       "accuracy": NAMESPACE["result"].test["accuracy"]}
        print("TOUR", attempt, json.dumps({"accuracy": result.history[-1]["test"]["accuracy"],
                                           "rounds": [h["round"] for h in result.history],
                                           "tau": tau}),
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
