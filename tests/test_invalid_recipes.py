"""Invalid recipes are refused with exit code 2 and a precise message, never a traceback.

Every ``tests/invalid/*.yaml`` states what ``mnistkit validate`` must print, in its header (the
comment lines at the top of the file)::

    # expect: 10:3 optimizer.momentm: unknown key 'momentm'   (one or more)
    # expect-hint: did you mean 'momentum'?    (part of the hint of the expect line above it)
    # expect-problems: 8                        (default: one problem per expect line)
    # forbid-line: pwned                        (no output line may be exactly this)
    # refuse-within-seconds: 1                  (in-process load_recipe must fail this fast)
    # resource-bomb                             (load only in a child with capped memory and a
                                                 timeout: a regression then fails, not the machine)

An ``expect`` line means: stderr has ``error FILE:LINE:COL: MESSAGE...`` for that file, at exactly
that line and column, with MESSAGE at the start of the problem text. ``{file}`` in a message
stands for the file's name. A new invalid case is a new file; no test code changes.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mnistkit.errors import RecipeError
from mnistkit.recipe.schema import load_recipe, recipe_model

INVALID = Path(__file__).resolve().parent / "invalid"
FILES = sorted(INVALID.glob("*.yaml"))
REPO = Path(__file__).resolve().parents[1]

_EXPECT = re.compile(r"^# expect: (\d+:\d+) (.+)$")


@dataclass
class Expect:
    loc: str  # "LINE:COL"
    message: str
    hints: list[str] = field(default_factory=list)


@dataclass
class Spec:
    expects: list[Expect] = field(default_factory=list)
    problems: int | None = None
    forbid_lines: list[str] = field(default_factory=list)
    within_s: float | None = None
    bomb: bool = False


def parse_header(path: Path) -> Spec:
    spec = Spec()
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break  # the header is the leading block of comment lines
        line = line.rstrip().replace("{file}", path.name)
        if m := _EXPECT.match(line):
            spec.expects.append(Expect(m[1], m[2]))
        elif line.startswith("# expect-hint: "):
            assert spec.expects, f"{path.name}: expect-hint before any expect line"
            spec.expects[-1].hints.append(line.removeprefix("# expect-hint: "))
        elif line.startswith("# expect-problems: "):
            spec.problems = int(line.removeprefix("# expect-problems: "))
        elif line.startswith("# forbid-line: "):
            spec.forbid_lines.append(line.removeprefix("# forbid-line: "))
        elif line.startswith("# refuse-within-seconds: "):
            spec.within_s = float(line.removeprefix("# refuse-within-seconds: "))
        elif line == "# resource-bomb":
            spec.bomb = True
        elif line.startswith("# expect"):
            raise AssertionError(f"{path.name}: malformed header line {line!r}")
    assert spec.expects, f"{path.name}: no '# expect: LINE:COL message' header line"
    return spec


def printed_problems(stderr: str) -> list[tuple[str, str]]:
    """``error WHERE: TEXT`` lines of the CLI with their indented hint lines: [(head, hint)]."""
    out: list[tuple[str, str]] = []
    for line in stderr.splitlines():
        if line.startswith("error "):
            out.append((line.removeprefix("error "), ""))
        elif line.startswith("    ") and out:
            head, hint = out[-1]
            out[-1] = (head, (hint + " " + line.strip()).strip())
    return out


def test_the_folder_covers_the_documented_cases() -> None:
    names = {p.stem for p in FILES}
    for required in (
        "missing_dataset",
        "typo_key",
        "wrong_type",
        "negative_lr",
        "empty_hidden",
        "unknown_activation",
        "unknown_optimizer",
        "unknown_dataset",
        "bad_optimizer_param",
        "softmax_output_with_cross_entropy",
        "layers_end_in_relu",
        "yaml_syntax_error",
        "python_tag",
        "alias_bomb",
        "duplicate_key",
        "several_errors",
    ):
        assert required in names, f"tests/invalid/{required}.yaml is missing"


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_cli_reports_the_expected_problems(path: Path, cli) -> None:
    spec = parse_header(path)
    res = cli("validate", path.name, cwd=INVALID, bounded=spec.bomb)
    output = res.stdout + res.stderr
    assert res.returncode == 2, output
    assert "Traceback" not in output and "internal error" not in output, output

    printed = printed_problems(res.stderr)
    n = spec.problems if spec.problems is not None else len(spec.expects)
    assert len(printed) == n, f"expected {n} problem(s), got:\n{res.stderr}"
    assert f"{n} problem{'s' if n != 1 else ''} found" in res.stderr
    for exp in spec.expects:
        prefix = f"{path.name}:{exp.loc}: {exp.message}"
        matches = [(head, hint) for head, hint in printed if head.startswith(prefix)]
        assert matches, f"no problem starting with {prefix!r} in:\n{res.stderr}"
        for want in exp.hints:
            assert any(want in hint for _, hint in matches), (
                f"hint {want!r} missing for {prefix!r}:\n{res.stderr}"
            )
    for forbidden in spec.forbid_lines:
        assert forbidden not in output.splitlines(), output


LOAD_IN_CHILD = """\
import json, sys, time
from mnistkit.errors import RecipeError
from mnistkit.recipe.schema import load_recipe, recipe_model

recipe_model()
start = time.perf_counter()
try:
    load_recipe(sys.argv[1])
except RecipeError as exc:
    wheres = [p.where for p in exc.problems]
    print(json.dumps({"seconds": time.perf_counter() - start, "wheres": wheres}))
else:
    print(json.dumps({"accepted": True}))
"""


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_load_recipe_raises_recipe_error_with_positions(path: Path, bounded_python) -> None:
    spec = parse_header(path)
    if spec.bomb:  # the same check in a child with capped memory and a timeout
        res = bounded_python(LOAD_IN_CHILD, path)
        assert res.returncode == 0, f"the child failed (a bomb expanded?):\n{res.stderr[-2000:]}"
        out = json.loads(res.stdout)
        assert "accepted" not in out, f"{path.name} was accepted"
        wheres, elapsed = out["wheres"], out["seconds"]
    else:
        recipe_model()  # build the schema first: only the refusal itself is timed
        start = time.perf_counter()
        with pytest.raises(RecipeError) as info:
            load_recipe(path)
        elapsed = time.perf_counter() - start
        wheres = [p.where for p in info.value.problems]
    for exp in spec.expects:
        assert f"{path}:{exp.loc}" in wheres, (exp, wheres)
    if spec.within_s is not None:
        assert elapsed < spec.within_s, f"{path.name} took {elapsed:.2f} s to refuse"


def test_set_value_error_names_the_set_argument(cli) -> None:
    res = cli("validate", "recipes/mlp5.yaml", "--set", "optimizer.lr=-1")
    assert res.returncode == 2, res.stderr
    heads = [head for head, _ in printed_problems(res.stderr)]
    assert heads == ["--set optimizer.lr=-1: optimizer.lr: Input should be greater than 0 (got -1)"]


def test_set_unknown_key_names_the_set_argument_and_suggests(cli) -> None:
    res = cli("validate", "recipes/mlp5.yaml", "--set", "optimizer.lrr=0.1")
    assert res.returncode == 2, res.stderr
    [(head, hint)] = printed_problems(res.stderr)
    assert head == "--set optimizer.lrr=0.1: optimizer.lrr: unknown key 'lrr'"
    assert "did you mean 'lr'?" in hint


def test_set_without_equals_is_explained(cli) -> None:
    res = cli("validate", "recipes/mlp5.yaml", "--set", "epochs")
    assert res.returncode == 2
    assert "--set epochs: expected KEY=VALUE" in res.stderr


def test_set_repairs_an_invalid_file(cli) -> None:
    # Overrides apply before validation: the file alone is invalid, the combination is fine.
    res = cli("validate", "tests/invalid/negative_lr.yaml", "--set", "optimizer.lr=0.1")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().startswith("ok tests/invalid/negative_lr.yaml (")


def test_validate_reports_every_file(cli) -> None:
    res = cli(
        "validate",
        "recipes/quickstart.yaml",
        "tests/invalid/typo_key.yaml",
        "tests/invalid/negative_lr.yaml",
    )
    assert res.returncode == 2
    assert "ok recipes/quickstart.yaml" in res.stdout
    heads = [head for head, _ in printed_problems(res.stderr)]
    assert any(h.startswith("tests/invalid/typo_key.yaml:10:3: ") for h in heads), heads
    assert any(h.startswith("tests/invalid/negative_lr.yaml:8:7: ") for h in heads), heads
    assert "2 of 3 recipe(s) invalid" in res.stderr


def test_validate_missing_file(cli, tmp_path: Path) -> None:
    res = cli("validate", tmp_path / "nope.yaml")
    assert res.returncode == 2
    assert f"{tmp_path / 'nope.yaml'}: file not found" in res.stderr


def test_run_refuses_an_invalid_recipe_before_creating_anything(cli, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = cli("run", "tests/invalid/typo_key.yaml", "--out", out, "--progress", "plain")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "tests/invalid/typo_key.yaml:10:3: optimizer.momentm: unknown key 'momentm'" in res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists()
