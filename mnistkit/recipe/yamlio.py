"""Safe YAML loading that remembers where every value came from.

Recipes are data: only the standard YAML tags are accepted (``!!python/object`` and any other
application tag are refused before anything is constructed), files over 1 MiB and alias
"billion laughs" bombs are refused before they are expanded, and duplicate keys are reported
instead of silently keeping the last one. Every key and value keeps its ``line:column`` so a
validation error can point at the exact place; ``--set a.b=value`` overrides keep the argument
they came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mnistkit.errors import Problem, RecipeError, dotted

MAX_BYTES = 1 << 20  # a recipe is a page of text; anything near 1 MiB is a mistake or an attack
MAX_NODES = 100_000  # nodes after alias expansion; a real recipe has a few hundred

_SAFE_TAGS = {
    "tag:yaml.org,2002:" + t
    for t in ("str", "int", "float", "bool", "null", "map", "seq", "merge", "timestamp")
}

Loc = tuple[Any, ...]


@dataclass
class Located:
    """A loaded document plus, for every path in it, where its key and value were written."""

    data: Any
    source: str  # file name, for messages
    keys: dict[Loc, str] = field(default_factory=dict)  # path -> "file:line:col" of the key
    values: dict[Loc, str] = field(default_factory=dict)  # path -> position of the value

    def origins(self) -> dict[str, str]:
        """Where each value was written, by dotted key (``optimizer.lr``, ``model.layers[2].type``):
        ``file:line:col`` (a ``base:`` recipe's own file for what it set) or ``--set key=value``.
        What is not listed took the schema's default (recorded in a run's origins.json)."""
        own = f"{self.source}:"
        return {
            dotted_loc(loc): where if where.startswith((own, "--set ")) else f"base: {where}"
            for loc, where in self.values.items()
            if loc
        }

    def where(self, loc: Loc, *, key: bool = False) -> str:
        """Best position for ``loc``: itself, else its nearest ancestor that has one."""
        table = self.keys if key else self.values
        for n in range(len(loc), -1, -1):
            sub = tuple(loc[:n])
            if key and sub in self.keys:
                return self.keys[sub]
            if sub in self.values:
                return self.values[sub]
            if sub in table:
                return table[sub]
        return self.source


def dotted_loc(loc: Loc) -> str:
    """``("model", "layers", 2, "type")`` -> ``model.layers[2].type`` (as runs.listing.flatten)."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _pos(source: str, mark: yaml.Mark) -> str:
    return f"{source}:{mark.line + 1}:{mark.column + 1}"


def load_text(text: str, source: str) -> Located:
    """Parse one YAML document; raise :class:`RecipeError` for anything unsafe or malformed."""
    if len(text.encode("utf-8", "ignore")) > MAX_BYTES:
        raise RecipeError(
            [
                Problem(
                    source,
                    "",
                    f"file is larger than {MAX_BYTES // 1024} KiB",
                    "a recipe is a short YAML file",
                )
            ]
        )
    try:
        return _load_text(text, source)
    except RecursionError:
        # PyYAML composes nested collections recursively; so do the checks below.
        raise RecipeError(
            [
                Problem(
                    source,
                    "",
                    "the document is nested too deeply",
                    "a recipe is a few levels of keys and lists",
                )
            ]
        ) from None


def _load_text(text: str, source: str) -> Located:
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.composer.ComposerError as exc:
            if "expected a single document" in str(exc):
                raise RecipeError(
                    [
                        Problem(
                            _where(source, exc),
                            "",
                            "more than one YAML document (---)",
                            "a recipe is exactly one document",
                        )
                    ]
                ) from None
            raise
    except yaml.MarkedYAMLError as exc:
        msg = exc.problem or str(exc)
        ctx = f" ({exc.context})" if exc.context else ""
        raise RecipeError(
            [
                Problem(
                    _where(source, exc), "", f"YAML syntax error: {msg}{ctx}", _syntax_hint(msg, exc, source)
                )
            ]
        ) from None
    except yaml.YAMLError as exc:
        raise RecipeError([Problem(source, "", f"YAML error: {exc}")]) from None
    finally:
        loader.dispose()
    if node is None or node.tag == "tag:yaml.org,2002:null":  # nothing, or a lone "---"
        raise RecipeError([Problem(f"{source}:1:1", "", "the recipe is empty")])

    problems: list[Problem] = []
    size = _expanded_size(node, {}, source, problems)
    if size > MAX_NODES:
        raise RecipeError(
            [
                Problem(
                    _pos(source, node.start_mark),
                    "",
                    f"the document expands to more than {MAX_NODES:,} values through aliases",
                    "refused: this looks like an alias bomb ('billion laughs')",
                )
            ]
        )
    if problems:
        raise RecipeError(problems)

    located = Located(data=None, source=source)
    located.values[()] = _pos(source, node.start_mark)
    _walk(node, (), located, problems)
    if problems:
        raise RecipeError(problems)
    try:
        located.data = yaml.SafeLoader("").construct_document(node)
    except yaml.YAMLError as exc:  # e.g. a malformed timestamp
        raise RecipeError([Problem(_where(source, exc), "", f"YAML error: {exc}")]) from None
    return located


# PyYAML's messages name parser states; these say what usually causes them.
_SYNTAX_HINTS = (
    (
        "expected <block end>",
        "this line is indented differently from the keys around it; "
        "keys of one section must start in the same column",
    ),
    (
        "mapping values are not allowed",
        "a value contains ': ' or a key is missing its newline; "
        "quote the value, or start the nested keys on a new line",
    ),
    ("found character '\\t'", "YAML does not allow tabs for indentation; use spaces"),
    ("could not find expected ':'", "a key is missing its ':', or a quote is not closed"),
    ("found undefined alias", "an *alias refers to an &anchor that is not defined above it"),
    # `test_acc: >= 0.97`: a leading > starts a block of text (an expect: condition unquoted).
    ("scanning a block scalar", "a value that starts with > or | must be quoted: test_acc: '>= 0.97'"),
    ("found character '>'", "a value that starts with > must be quoted: test_acc: '>= 0.97'"),
)


_OPENERS = {"flow sequence": "[", "flow mapping": "{"}


def _syntax_hint(msg: str, exc: yaml.MarkedYAMLError | None = None, source: str = "") -> str:
    """What usually causes ``msg``; for an unclosed ``[``/``{`` also where it was opened.

    The parser only gives up at the next token it cannot use (often the next line), so the
    place that needs the fix is the context mark: the bracket that was never closed.
    """
    said = msg + " " + str(getattr(exc, "context", None) or "")
    hint = next((hint for key, hint in _SYNTAX_HINTS if key in said), "")
    where_opened = ""
    if exc is not None and exc.context_mark is not None and exc.problem_mark is not None:
        ctx, cm, pm = exc.context or "", exc.context_mark, exc.problem_mark
        if (cm.line, cm.column) != (pm.line, pm.column):
            opener = next((o for what, o in _OPENERS.items() if what in ctx), None)
            started = (
                f"the {opener!r} opened at {_pos(source, cm)}"
                if opener
                else f"{ctx.removeprefix('while ')} started at {_pos(source, cm)}"
            )
            where_opened = f"{started} is not closed" if opener else started
    return "; ".join(part for part in (where_opened, hint) if part)


def load_file(path: Path) -> Located:
    """Read and parse a recipe file (size-checked before reading it whole)."""
    source = str(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise RecipeError([Problem(source, "", "file not found")]) from None
    except OSError as exc:
        raise RecipeError([Problem(source, "", f"cannot read: {exc.strerror}")]) from None
    if path.is_dir():
        raise RecipeError([Problem(source, "", "is a directory, not a recipe file")])
    if size > MAX_BYTES:
        raise RecipeError(
            [Problem(source, "", f"file is {size:,} bytes; recipes are limited to {MAX_BYTES:,}")]
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(
            [Problem(source, "", f"not UTF-8 text ({exc.reason} at byte {exc.start})")]
        ) from None
    return load_text(text, source)


def _where(source: str, exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return _pos(source, mark) if mark is not None else source


_IN_PROGRESS = -1


def _override_yaml_error(raw: str, exc: yaml.YAMLError) -> tuple[str, str]:
    """One readable line for a --set value that is not YAML (not the parser's multi-line dump)."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    where = f" at column {mark.column + 1}" if mark is not None else ""
    hint = "quote the whole argument for the shell: --set 'KEY=[1, 2]'"
    ctx = getattr(exc, "context", None) or ""
    for what, opener in (("flow sequence", "["), ("flow mapping", "{")):
        if what in ctx:
            hint = f"the {opener!r} is not closed; " + hint
    return f"value {raw!r} is not valid YAML: {problem}{where}", hint


def _expanded_size(node: yaml.Node, memo: dict[int, int], source: str, problems: list[Problem]) -> int:
    """Number of values after alias expansion, computed without expanding (memoized by node).

    Also refuses non-standard tags here, before any constructor can run.
    """
    key = id(node)
    if memo.get(key) == _IN_PROGRESS:  # an anchor used inside itself: infinitely deep
        problems.append(
            Problem(
                _pos(source, node.start_mark),
                "",
                "recursive alias: an anchor is used inside its own value",
                "a recipe is a tree; copy the values instead",
            )
        )
        memo[key] = 1
        return 1
    if key in memo:
        return memo[key]
    memo[key] = _IN_PROGRESS
    if node.tag not in _SAFE_TAGS:
        problems.append(
            Problem(
                _pos(source, node.start_mark),
                "",
                f"tag {node.tag!r} is not allowed",
                "recipes are plain data: only standard YAML types (no python/object tags)",
            )
        )
    total = 1
    if isinstance(node, yaml.SequenceNode):
        total += sum(_expanded_size(n, memo, source, problems) for n in node.value)
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            total += _expanded_size(k, memo, source, problems)
            total += _expanded_size(v, memo, source, problems)
            if total > MAX_NODES:
                break
    memo[key] = total
    return total


def _walk(node: yaml.Node, loc: Loc, out: Located, problems: list[Problem]) -> None:
    """Record positions of keys and values; report duplicate and non-scalar keys."""
    src = out.source
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out.values[(*loc, i)] = _pos(src, item.start_mark)
            _walk(item, (*loc, i), out, problems)
    elif isinstance(node, yaml.MappingNode):
        seen: dict[Any, str] = {}
        for k, v in node.value:
            if k.tag == "tag:yaml.org,2002:merge":
                continue
            if not isinstance(k, yaml.ScalarNode):
                problems.append(Problem(_pos(src, k.start_mark), dotted(loc), "keys must be plain names"))
                continue
            name = k.value
            where = _pos(src, k.start_mark)
            if name in seen:
                problems.append(
                    Problem(
                        where,
                        dotted((*loc, name)),
                        f"duplicate key (first set at {seen[name]})",
                        "each key may appear once; delete one of them",
                    )
                )
            seen[name] = where
            out.keys[(*loc, name)] = where
            out.values[(*loc, name)] = _pos(src, v.start_mark)
            _walk(v, (*loc, name), out, problems)


def apply_overrides(
    doc: Located, overrides: list[str], shorthand: dict[tuple[Any, ...], str | None] | None = None
) -> None:
    """Apply ``--set a.b.c=value`` arguments in place; values are parsed as YAML scalars/lists.

    ``shorthand`` maps the keys that may be written as a bare name (``loss: cross_entropy``) to
    their default name: setting a key inside one (``--set loss.label_smoothing=0.1``) expands it
    to ``{name: cross_entropy, label_smoothing: 0.1}``, whether the file wrote the name or left
    the key to its default.
    """
    problems: list[Problem] = []
    if not isinstance(doc.data, dict):
        return
    shorthand = shorthand or {}
    for arg in overrides:
        label = f"--set {arg}"
        path, eq, raw = arg.partition("=")
        if not eq or not path.strip():
            problems.append(Problem(label, "", "expected KEY=VALUE, e.g. --set optimizer.lr=0.1"))
            continue
        if not raw.strip():
            problems.append(
                Problem(
                    label,
                    path.strip(),
                    "no value given",
                    f"e.g. --set {path.strip()}=VALUE; write null to unset a key",
                )
            )
            continue
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            if not raw.lstrip().startswith(">"):
                problems.append(Problem(label, path.strip(), *_override_yaml_error(raw, exc)))
                continue
            # `--set 'expect.test_acc=>= 0.97'`: a leading > starts a YAML block of text, which
            # cannot be written on one line; the only thing such a value can mean is the text.
            value = raw.strip()
        parts: list[Any] = [int(p) if p.isdigit() else p for p in path.strip().split(".")]
        target: Any = doc.data
        ok = True
        for i, part in enumerate(parts[:-1]):
            if isinstance(target, dict):
                nxt = target.get(part)
                here = tuple(parts[: i + 1])
                if nxt is None and here not in doc.values:  # created by this --set: it is the place
                    doc.keys[here] = doc.values[here] = label
                if here in shorthand and (nxt is None or isinstance(nxt, str)):
                    name = nxt if isinstance(nxt, str) else shorthand[here]
                    nxt = target[part] = {"name": name} if name is not None else {}
                elif nxt is None:
                    nxt = target[part] = {}
                target = nxt
            elif isinstance(target, list) and isinstance(part, int) and part < len(target):
                target = target[part]
            else:
                where = ".".join(map(str, parts[: i + 1]))
                if isinstance(target, list):
                    what = f"{'.'.join(map(str, parts[:i]))} has {len(target)} items (0 to {len(target) - 1})"
                    problems.append(Problem(label, where, f"no item {part}: {what}"))
                else:
                    problems.append(Problem(label, where, "cannot set a key inside this value"))
                ok = False
                break
        if not ok:
            continue
        last = parts[-1]
        if isinstance(target, dict):
            target[last] = value
        elif isinstance(target, list) and isinstance(last, int) and last < len(target):
            target[last] = value
        else:
            problems.append(Problem(label, path, "cannot set a key inside this value"))
            continue
        loc = tuple(parts)
        # An override replaces the subtree: forget the file positions below it.
        for table in (doc.keys, doc.values):
            for k in [k for k in table if k[: len(loc)] == loc]:
                del table[k]
        doc.keys[loc] = label
        doc.values[loc] = label
    if problems:
        raise RecipeError(problems)
