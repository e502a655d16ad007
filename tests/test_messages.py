"""How messages tell the user to change a setting (issue 19): always with the ``--set`` form.

A message that says only "set train.threads: 1" leaves a command-line user to translate the
recipe's syntax; :func:`mnistkit.errors.set_hint` says both. Every string literal in the package
is checked, so a new message written the old way fails here, wherever it is.
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

from mnistkit.errors import set_hint
from mnistkit.recipe.schema import load_recipe

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mnistkit"
# "set data.val_split", "set `train.threads: 1`": telling the user to set a dotted recipe key.
SET_KEY = re.compile(r"(?<![-\w])set `?[a-z_]+\.[a-z_]+")


def _messages(tree: ast.AST) -> list[ast.Constant]:
    """The string literals of a module that are not docstrings."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]


def test_every_message_that_says_to_set_a_key_gives_the_set_form_too() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for const in _messages(ast.parse(path.read_text(encoding="utf-8"))):
            if SET_KEY.search(const.value) and "--set" not in const.value:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{const.lineno}: {const.value!r}")
    assert not offenders, "use mnistkit.errors.set_hint(key, value):\n" + "\n".join(offenders)


def test_set_hint_gives_both_forms_and_its_set_form_works() -> None:
    hint = set_hint("data.skip_bad_files", "true")
    assert hint == "set `data.skip_bad_files: true` in the recipe (or --set data.skip_bad_files=true)"
    quoted = set_hint("data.root", "my data")
    assert quoted.endswith("(or --set 'data.root=my data')")
    # What the user pastes, split as a shell splits it, is what `run --set` accepts.
    words = shlex.split(quoted.rpartition("(or ")[2].rstrip(")"))
    assert words[0] == "--set"
    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml", [words[1]])
    assert recipe.data.root == "my data"
