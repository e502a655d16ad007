"""mnistkit.plugin: exactly what docs/extending.md tells plugin authors to import, torch-free."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import mnistkit.plugin

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def test_the_docs_import_only_from_mnistkit_plugin_and_it_has_every_name() -> None:
    text = DOC.read_text(encoding="utf-8")
    imports = re.findall(r"^from (mnistkit[\w.]*) import (.+)$", text, flags=re.M)
    assert imports, "the example plugin imports nothing from mnistkit"
    assert {module for module, _ in imports} == {"mnistkit.plugin"}
    named = {n.strip() for _, names in imports for n in names.split(",")}
    named |= set(re.findall(r"`mnistkit\.plugin\.(\w+)`", text))
    assert named <= set(mnistkit.plugin.__all__)
    assert set(mnistkit.plugin.__all__) <= set(re.findall(r"\b(\w+)\b", text.split("## The protocol")[0]))
    for name in mnistkit.plugin.__all__:
        assert getattr(mnistkit.plugin, name) is not None


def test_the_plugin_api_imports_no_torch() -> None:
    code = "import sys, mnistkit.plugin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
