"""The command the user ran mnistkit with, for hints they copy (``... run --resume DIR``).

A bare ``mnistkit`` fails when copied by someone who ran ``.venv/bin/mnistkit`` or
``python -m mnistkit`` without the virtualenv on PATH; the hint repeats what worked.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path


def invoked_as(argv: list[str] | None = None, orig_argv: list[str] | None = None) -> str:
    """``mnistkit``, ``.venv/bin/mnistkit`` or ``python -m mnistkit``, as the user typed it.

    ``argv``/``orig_argv`` default to ``sys.argv``/``sys.orig_argv`` (parameters for tests).
    """
    argv = sys.argv if argv is None else argv
    orig = getattr(sys, "orig_argv", None) if orig_argv is None else orig_argv
    first = argv[0] if argv else ""
    if Path(first).name == "__main__.py" or first == "-m":  # python -m mnistkit
        if orig and "-m" in orig:
            # The interpreter and its options as typed (python, .venv/bin/python3 -X dev, ...).
            return shlex.join([*orig[: orig.index("-m")], "-m", "mnistkit"])
        return f"{shlex.quote(sys.executable)} -m mnistkit"
    if not first:
        return "mnistkit"
    name = Path(first).name
    on_path = shutil.which(name)
    if on_path is not None and Path(on_path).resolve() == Path(first).resolve():
        return name  # found on PATH as itself: the short name works when copied
    return shlex.quote(first)
