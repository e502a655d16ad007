"""The shell examples of README.md and docs/*.md paste and run as written (issue 19).

docs/cli.md showed ``--set optimizer={name: adam, lr: 0.001}`` unquoted: pasted, the shell splits
it into four words and mnistkit reports four errors. Every ```bash block, every command line in
a plain ``` block, and every inline `mnistkit ...` or `--set ...` span is split here as a shell
splits it (shlex), and every ``--set`` value it gives is applied by the real override parser.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from mnistkit.errors import RecipeError
from mnistkit.recipe.schema import load_document, load_recipe

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: How a command line starts (after an optional "$ " prompt).
COMMAND = re.compile(r"^(\$ )?(\.venv/bin/)?(mnistkit|python -m mnistkit|make|torchrun|pip|cd|export)\b")
SHELL_FENCES = ("bash", "sh", "shell", "console")


def shell_examples(path: Path) -> list[tuple[str, str, bool]]:
    """(where, command line, whether the docs show it failing) for every shell example."""
    out: list[tuple[str, str, bool]] = []
    fence: str | None = None
    pending = ""
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        where = f"{path.relative_to(REPO)}:{n}"
        if line.lstrip().startswith("```"):
            fence = None if fence is not None else line.strip()[3:].strip()
            continue
        if fence is None:  # prose: inline `mnistkit ...` and `--set ...` spans
            for span in re.findall(r"`([^`]+)`", line):
                if re.match(r"(mnistkit|--set) ", span):
                    full = span if span.startswith("mnistkit") else f"mnistkit run r.yaml {span}"
                    out.append((where, full, False))
            continue
        if line.startswith("error") and out and out[-1][0] == f"{path.relative_to(REPO)}:{n - 1}":
            out[-1] = (*out[-1][:2], True)  # an example of a mistake: the output below says so
        text = pending + line.strip()
        if text.endswith("\\"):  # a continued line
            pending = text[:-1] + " "
            continue
        pending = ""
        if fence in SHELL_FENCES and text and not text.startswith("#") or COMMAND.match(text):
            out.append((where, re.sub(r"^\$ ", "", text), False))
    return out


EXAMPLES = [ex for path in DOCS for ex in shell_examples(path)]


def mnistkit_args(words: list[str]) -> list[str] | None:
    """The arguments after ``mnistkit`` (up to a shell operator), None for another command."""
    for i, w in enumerate(words):
        if w.endswith("mnistkit") and (i == 0 or words[i - 1] in ("-m", "&&", ";")):
            rest = words[i + 1 :]
            ops = [j for j, x in enumerate(rest) if x in ("|", "&&", ";", ">", "2>&1", "||")]
            return rest[: ops[0]] if ops else rest
    return None


def test_the_docs_have_shell_examples() -> None:
    assert len(EXAMPLES) > 50, EXAMPLES  # the extraction itself works
    assert any("--set" in line for _, line, _ in EXAMPLES)


def is_synopsis(line: str) -> bool:
    """A usage line (``mnistkit run [RECIPE] [--set KEY=VALUE]...``): a pattern, not a command."""
    return "[--" in line or "]..." in line


@pytest.mark.parametrize(("where", "line", "shows_error"), EXAMPLES, ids=[w for w, _, _ in EXAMPLES])
def test_a_docs_shell_example_splits_and_its_set_values_parse(
    where: str, line: str, shows_error: bool
) -> None:
    if is_synopsis(line):
        return
    try:
        words = shlex.split(line, comments=True)
    except ValueError as exc:
        pytest.fail(f"{where}: {line!r} does not split as a shell line: {exc}")
    # Unquoted, [ ] { } * ? are the shell's: a glob (zsh: "no matches found") or brace expansion.
    bare = [w for w in re.findall(r"(?:--set|-s)\s+([^\s'\"]\S*)", line) if re.search(r"[][{}*?]", w)]
    assert not bare, f"{where}: quote {bare} in {line!r}"
    args = mnistkit_args(words)
    if not args:
        return
    sets = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--set", "-s")]
    recipe = next((REPO / a for a in args[1:2] if a.endswith(".yaml") and (REPO / a).is_file()), None)
    try:
        shipped = recipe is not None and "sweeps" not in recipe.parts
        if shipped and args[0] in ("run", "validate", "show") and not shows_error:
            load_recipe(recipe, sets)  # type: ignore[arg-type]  # a shipped recipe: the example must also be a valid recipe
        else:
            load_document(REPO / "recipes" / "quickstart.yaml", sets)  # each value parses
    except RecipeError as exc:
        pytest.fail(f"{where}: {line!r}:\n{exc}")
