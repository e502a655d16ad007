"""User-facing problems: where (file:line:column), which field, what is wrong, what is allowed.

Every recipe problem becomes a :class:`Problem`; all problems of a recipe are raised together in
one :class:`RecipeError`, which the CLI prints and turns into exit code 2 (never a traceback).
Runtime problems (missing data, a broken plugin, an unreadable checkpoint) are :class:`RunError`,
exit code 1.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a recipe."""

    where: str  # "recipes/x.yaml:7:5" or "--set optimizer.lr=abc"
    field: str  # dotted path, "optimizer.lr"; "" for the whole document
    message: str  # what is wrong
    hint: str = ""  # what is allowed / did you mean

    def format(self) -> str:
        head = f"{self.where}: " + (f"{self.field}: " if self.field else "") + self.message
        return head + (f"\n    {self.hint}" if self.hint else "")


class RecipeError(Exception):
    """All problems found in one recipe (exit code 2)."""

    exit_code = 2

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__(self.format())

    def format(self) -> str:
        n = len(self.problems)
        lines = [p.format() for p in self.problems]
        lines.append(f"{n} problem{'s' if n != 1 else ''} found")
        return "\n".join(lines)


class RunError(Exception):
    """A runtime failure with a complete, actionable message (exit code 1)."""

    exit_code = 1


class PeerStopped(RunError):
    """One process of a distributed job stopped because another one failed or was killed (exit
    code 3), so the launcher can tell the process that failed by itself from those it took down
    with it, whichever of them exited first."""

    exit_code = 3


def dotted(loc: tuple[object, ...]) -> str:
    """``('model', 'hidden', 2)`` → ``model.hidden[2]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


class DataError(Exception):
    """User-facing data problem: what was looked for, where, and how to fix it."""


def set_hint(key: str, value: str) -> str:
    """How to set a recipe key, for a message: in the recipe, and on the command line.

    ``set_hint("train.threads", "1")`` → ``set `train.threads: 1` in the recipe (or --set
    train.threads=1)``. Every message that tells the user to set a key says it this way, so a
    command-line user is not left to translate YAML into ``--set``.
    """
    return f"set `{key}: {value}` in the recipe (or --set {shlex.quote(f'{key}={value}')})"


_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]*:)[^/@\s]*@")


def mask_credentials(text: str) -> str:
    """``scheme://user:password@host`` -> ``scheme://user:***@host`` anywhere in ``text``: a
    password in a URI (a tracking server's, a database's) is never printed or written."""
    return _CREDENTIALS.sub(r"\1***@", text)
