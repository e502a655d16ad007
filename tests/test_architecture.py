"""The layering rule of docs/architecture.md, enforced: import-linter's contracts in pyproject.toml.

Six contracts: each layer imports only layers below it; no import cycles between sibling modules
or packages at any depth (function-level imports included); no torch where the metadata commands
(`--help`, `validate`, `list`, `schema`, `fields`) run; the report never imports torch, training
or the session; MLflow (an optional extra) imported only by the tracking modules; no torch in the
server (`mnistkit serve`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "importlinter.cli"]
    proc = subprocess.run([*cmd, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout
    assert proc.stdout.count(" KEPT") == 6, proc.stdout
