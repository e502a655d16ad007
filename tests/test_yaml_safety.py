"""Recipes are untrusted data: the YAML reader must refuse anything that is not plain data, fast.

Checked at the lowest level (``mnistkit.recipe.yamlio``) and through ``load_recipe``: oversized files,
application tags (no constructor may run), alias bombs, recursive aliases, absurd nesting,
several documents, empty files; while the ordinary YAML features recipes use (anchors, merge
keys, an explicit ``---``) keep working.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mnistkit.errors import RecipeError
from mnistkit.recipe.schema import load_recipe, load_recipe_text
from mnistkit.recipe.yamlio import MAX_BYTES, load_file, load_text

MINIMAL = "data: {dataset: digits}\nmodel: {hidden: [8]}\n"


def refused(text: str, source: str = "r.yaml") -> list[str]:
    """The formatted problems ``load_text`` raises for ``text`` (fails if it accepts it)."""
    with pytest.raises(RecipeError) as info:
        load_text(text, source)
    return [p.format() for p in info.value.problems]


# ------------------------------------------------------------------------------------- size
def test_oversized_file_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(MINIMAL)
        line = "# " + "x" * 1022 + "\n"
        for _ in range(MAX_BYTES // len(line) + 2):
            fh.write(line)
    assert path.stat().st_size > MAX_BYTES
    start = time.perf_counter()
    with pytest.raises(RecipeError) as info:
        load_file(path)
    assert time.perf_counter() - start < 0.5
    [problem] = info.value.problems
    assert problem.where == str(path)
    assert f"recipes are limited to {MAX_BYTES:,}" in problem.message


def test_oversized_text_refused() -> None:
    [msg] = refused(MINIMAL + "#" * (MAX_BYTES + 1))
    assert "larger than 1024 KiB" in msg


def test_file_at_the_size_limit_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "padded.yaml"
    text = MINIMAL + "#" * (MAX_BYTES - len(MINIMAL) - 1) + "\n"
    path.write_text(text, encoding="utf-8")
    assert path.stat().st_size == MAX_BYTES
    assert load_file(path).data == {"data": {"dataset": "digits"}, "model": {"hidden": [8]}}


# ------------------------------------------------------------------------------------- tags
@pytest.mark.parametrize(
    "tagged",
    [
        '!!python/object/apply:os.system ["touch {marker}"]',
        "!!python/object/apply:builtins.exec [\"open('{marker}', 'w').close()\"]",
        "!!python/object/new:builtins.open ['{marker}', 'w']",
        "!!python/name:os.system",
        "!!python/tuple [1, 2]",
        "!custom {marker}",
        "!!binary aGVsbG8=",
        "!!set {a: null}",
    ],
)
def test_application_and_non_plain_tags_are_refused(tmp_path: Path, tagged: str) -> None:
    marker = tmp_path / "pwned"
    text = "data: {dataset: digits}\nmodel:\n  hidden: " + tagged.replace("{marker}", str(marker)) + "\n"
    [msg] = refused(text)
    assert msg.startswith("r.yaml:3:11: tag ") and "is not allowed" in msg, msg
    assert not marker.exists(), "a YAML constructor ran"


def test_tag_on_a_key_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = f'? !!python/object/apply:os.system ["touch {marker}"]\n: 1\n' + MINIMAL
    [msg] = refused(text)
    assert "r.yaml:1:3: tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed" in msg
    assert not marker.exists()


def test_every_bad_tag_is_reported_at_once() -> None:
    text = "a: !!python/name:os.system\nb: [1, !!python/name:os.getcwd ]\n"
    msgs = refused(text)
    assert [m.split(": tag")[0] for m in msgs] == ["r.yaml:1:4", "r.yaml:2:8"]


def test_standard_scalar_tags_still_work() -> None:
    doc = load_text("a: !!str 12\nb: !!int '7'\nc: !!float 1\nd: !!bool true\ne: !!null ''\n", "t")
    assert doc.data == {"a": "12", "b": 7, "c": 1.0, "d": True, "e": None}


# ----------------------------------------------------------------------- aliases and nesting
def _sequence_bomb(levels: int = 9) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def _mapping_bomb(levels: int = 9) -> str:
    lines = ["m0: &m0 {" + ", ".join(f"k{j}: lol" for j in range(9)) + "}"]
    for i in range(1, levels):
        lines.append(f"m{i}: &m{i} {{" + ", ".join(f"k{j}: *m{i - 1}" for j in range(9)) + "}")
    return "\n".join(lines) + "\n"


# Run in a child with capped memory and a timeout (conftest.bounded_python): if the refusal ever
# stops working, the bomb expands there and the test fails, instead of exhausting this machine.
REFUSE_IN_CHILD = """\
import json, sys, time
from mnistkit.errors import RecipeError
from mnistkit.recipe.schema import load_recipe_text, recipe_model
from mnistkit.recipe.yamlio import load_text

load = {"load_text": load_text, "load_recipe_text": load_recipe_text}[sys.argv[1]]
recipe_model()  # build the schema first: only the refusal itself is timed
start = time.perf_counter()
try:
    load(sys.argv[2], "r.yaml")
except RecipeError as exc:
    problems = [p.format() for p in exc.problems]
    print(json.dumps({"seconds": time.perf_counter() - start, "problems": problems}))
else:
    print(json.dumps({"accepted": True}))
"""


@pytest.mark.parametrize("loader", ["load_text", "load_recipe_text"])
@pytest.mark.parametrize("bomb", [_sequence_bomb, _mapping_bomb], ids=["sequences", "mappings"])
def test_alias_bomb_refused_fast(bomb, loader: str, bounded_python) -> None:
    text = bomb()
    assert len(text) < 1000  # tiny on disk, 9**9 values once expanded
    res = bounded_python(REFUSE_IN_CHILD, loader, text)
    assert res.returncode == 0, (
        f"the child failed (MemoryError: the bomb was expanded?):\n{res.stderr[-2000:]}"
    )
    out = json.loads(res.stdout)
    assert "accepted" not in out
    [msg] = out["problems"]
    assert out["seconds"] < 1.0
    assert "expands to more than 100,000 values through aliases" in msg
    assert "alias bomb" in msg


def test_moderate_alias_use_is_fine() -> None:
    doc = load_text(_sequence_bomb(levels=3), "ok.yaml")  # 9**3 = 729 values
    assert len(doc.data["l2"]) == 9 and doc.data["l2"][0][0] == ["lol"] * 9


def test_recursive_alias_refused() -> None:
    [msg] = refused("data: &loop [1, *loop]\n")
    assert msg.startswith("r.yaml:1:7: recursive alias")


@pytest.mark.parametrize("opener,closer", [("[", "]"), ("{a: ", "}")])
def test_absurd_nesting_refused_without_recursion_error(opener: str, closer: str) -> None:
    text = "data: " + opener * 2000 + "1" + closer * 2000 + "\n"
    [msg] = refused(text)
    assert "nested too deeply" in msg


def test_merge_keys_work_and_local_keys_win() -> None:
    text = (
        "base: &base {dataset: digits, batch_size: 16, shuffle: false}\n"
        "data:\n"
        "  <<: *base\n"
        "  batch_size: 32\n"
    )
    doc = load_text(text, "m.yaml")
    assert doc.data["data"] == {"dataset": "digits", "batch_size": 32, "shuffle": False}
    assert doc.keys[("data", "batch_size")] == "m.yaml:4:3"


def test_recipe_with_anchors_and_merge_keys_validates() -> None:
    text = """
data: {dataset: digits}
model:
  layers:
    - {type: flatten}
    - &hidden {type: linear, out_features: 32, bias: false}
    - {type: relu}
    - {<<: *hidden, out_features: 16}
    - {type: relu}
    - {type: linear, out_features: 10}
"""
    recipe = load_recipe_text(text)
    widths = [(layer.type, getattr(layer, "out_features", None)) for layer in recipe.model.layers]
    assert widths[3] == ("linear", 16)
    assert recipe.model.layers[3].bias is False  # inherited through the merge key


# ------------------------------------------------------------------------------ documents
def test_multiple_documents_refused() -> None:
    [msg] = refused(MINIMAL + "---\nepochs: 3\n")
    assert msg.startswith("r.yaml:3:1: more than one YAML document (---)")


def test_one_explicit_document_is_fine() -> None:
    assert load_text("---\n" + MINIMAL + "...\n", "one.yaml").data["model"] == {"hidden": [8]}


@pytest.mark.parametrize("text", ["", "\n\n", "# just a comment\n", "---\n"])
def test_empty_recipe(text: str, tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    [problem] = info.value.problems
    assert problem.format() == f"{path}:1:1: the recipe is empty"


@pytest.mark.parametrize("text,kind", [("- a\n- b\n", "list"), ("just text\n", "str")])
def test_recipe_must_be_a_mapping(text: str, kind: str) -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe_text(text, "x.yaml")
    assert info.value.problems[0].message == f"the recipe must be a mapping of keys, not {kind}"


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(MINIMAL.encode() + "# caf\xe9\n".encode("latin-1"))
    with pytest.raises(RecipeError) as info:
        load_file(path)
    assert "not UTF-8 text" in info.value.problems[0].message


def test_complex_keys_refused() -> None:
    [msg] = refused("? [a, b]\n: 1\n")
    assert "keys must be plain names" in msg


def test_duplicate_keys_inside_lists_are_found() -> None:
    [msg] = refused("layers:\n  - {type: relu, type: tanh}\n")
    assert msg.startswith("r.yaml:2:18: layers[0].type: duplicate key (first set at r.yaml:2:6)")
