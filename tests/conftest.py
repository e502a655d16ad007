"""Shared fixtures: the real-data folder, fresh registries, and the CLI in a subprocess.

Real data (Fashion-MNIST, FSDD, ...) lives outside the repository. Tests find it through
``$MNISTKIT_TEST_DATA``, else ``<repo>/../shared/data``; tests that need it take the
``shared_data`` fixture and are skipped, with the reason, where it is absent.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import browser  # noqa: F401  (the `browser` fixture: tests/browser.py)

REPO = Path(__file__).resolve().parents[1]
ENV_TEST_DATA = "MNISTKIT_TEST_DATA"


def shared_data_candidate() -> Path:
    """Where the real data should be: $MNISTKIT_TEST_DATA, else <repo>/../shared/data."""
    env = os.environ.get(ENV_TEST_DATA)
    return Path(env).expanduser() if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder (holding fashion-mnist/, fsdd/, ...); skips the test without it."""
    path = shared_data_candidate()
    if not path.is_dir():
        pytest.skip(
            f"real data not found at {path}: set {ENV_TEST_DATA} to the folder holding "
            "fashion-mnist/ (default <repo>/../shared/data)"
        )
    return path


#: What each real dataset folder must hold for the tests that use it: the data files themselves,
#: not only the folder (a failed download can leave an empty folder behind).
REAL_DATASETS = {
    "fashion-mnist": ("train-images-idx3-ubyte*", "t10k-images-idx3-ubyte*", "t10k-labels-idx1-ubyte*"),
    "fsdd/recordings": ("*.wav",),
    "mnist-test10k": ("t10k-images-idx3-ubyte*", "t10k-labels-idx1-ubyte*"),
}


def real_dataset(shared_data: Path, name: str) -> Path:
    """``shared_data/name`` when its data files are there (see REAL_DATASETS); skips otherwise."""
    folder = shared_data / name
    missing = [p for p in REAL_DATASETS[name] if not any(folder.glob(p))]
    if missing:
        pytest.skip(
            f"real data {name} not found in {folder} (missing {', '.join(missing)}): set {ENV_TEST_DATA}"
        )
    return folder


@pytest.fixture(autouse=True)
def _fresh_registries() -> Iterator[None]:
    """Every test starts from the built-in registries (no plugin leaks between tests)."""
    from mnistkit.registry import reset_registries

    reset_registries()
    yield
    reset_registries()


CliRunner = Callable[..., subprocess.CompletedProcess]

# Address-space cap for children fed a resource bomb: `mnistkit validate` needs ~200 MiB (it never
# imports torch); a bomb that gets through then fails fast with MemoryError instead of taking
# the machine's memory. Used with a timeout, so one that spins instead of allocating fails too.
BOMB_MEMORY_MB = 512
BOMB_TIMEOUT_S = 60


def memory_limit(mb: int) -> Callable[[], None]:
    """A ``preexec_fn`` that caps the child's address space (RLIMIT_AS) at ``mb`` MiB."""

    def apply() -> None:
        limit = mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def hermetic_env(cache: Path) -> dict[str, str]:
    """os.environ without $MNISTKIT_DATA, with this checkout first on PYTHONPATH, a fresh cache."""
    env = {k: v for k, v in os.environ.items() if k != "MNISTKIT_DATA"}
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env.update({"MNISTKIT_CACHE": str(cache), "PYTHONPATH": pythonpath})
    return env


@pytest.fixture(scope="session")
def live_pid() -> Iterator[int]:
    """A live Python process standing for a run in progress (not this test process: a runner
    such as pytest-xdist may retitle it, and then it no longer looks like a Python program)."""
    # Lives as long as this process (however long the suite takes), and not after it.
    watch = "import os, sys, time\nwhile os.getppid() == int(sys.argv[1]): time.sleep(0.5)"
    proc = subprocess.Popen([sys.executable, "-c", watch, str(os.getpid())])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def cli(tmp_path_factory: pytest.TempPathFactory) -> CliRunner:
    """Run ``python -m mnistkit ARGS`` in a subprocess, as a user would, hermetically.

    The user cache goes to a fresh temporary folder and ``$MNISTKIT_DATA`` is unset, so nothing
    on this machine (earlier downloads, a data folder in the environment) changes the outcome.
    Returns the CompletedProcess (text stdout/stderr); never raises on a non-zero exit.
    """
    cache = tmp_path_factory.mktemp("cache")

    def run(
        *args: str | Path,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 120,
        prelude: str | None = None,
        bounded: bool = False,
    ) -> subprocess.CompletedProcess:
        full_env = hermetic_env(cache)
        full_env.update(env or {})
        if prelude is None:
            cmd = [sys.executable, "-m", "mnistkit", *map(str, args)]
        else:  # code to run first in the same process (e.g. to point a constant elsewhere)
            code = f"{prelude}\nfrom mnistkit.cli.app import main\nmain()"
            cmd = [sys.executable, "-c", code, *map(str, args)]
        return subprocess.run(
            cmd,
            cwd=cwd or REPO,
            env=full_env,
            capture_output=True,
            text=True,
            # bounded: for resource bombs, capped memory and a short timeout (see BOMB_MEMORY_MB).
            timeout=min(timeout, BOMB_TIMEOUT_S) if bounded else timeout,
            preexec_fn=memory_limit(BOMB_MEMORY_MB) if bounded else None,
        )

    return run


@pytest.fixture
def bounded_python(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., subprocess.CompletedProcess]:
    """Run Python ``code`` in a child with :data:`BOMB_MEMORY_MB` of address space and a
    :data:`BOMB_TIMEOUT_S` timeout (for resource-bomb tests: a regression fails the test instead
    of exhausting the machine). Returns the CompletedProcess; a timeout fails the test."""
    cache = tmp_path_factory.mktemp("cache")

    def run(code: str, *args: str | Path) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(
                [sys.executable, "-c", code, *map(str, args)],
                cwd=REPO,
                env=hermetic_env(cache),
                capture_output=True,
                text=True,
                timeout=BOMB_TIMEOUT_S,
                preexec_fn=memory_limit(BOMB_MEMORY_MB),
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running after {BOMB_TIMEOUT_S} s (a resource bomb got through?)")

    return run


# ------------------------------------------------------------------ in-process CLI runs
def invoke(*args: Any) -> Any:
    """``mnistkit ARGS`` in this process (typer's CliRunner): fast, for tests that train often."""
    from typer.testing import CliRunner

    from mnistkit.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


def train(tmp: Path, recipe_text: str, *sets: str, data_dir: Path | None = None) -> Path:
    """Write ``recipe_text`` to ``tmp``, run it into ``tmp/run`` (exit 0 asserted), return the run."""
    recipe = tmp / "recipe.yaml"
    recipe.write_text(recipe_text, encoding="utf-8")
    run = tmp / "run"
    args: list[Any] = ["run", recipe, "--out", run]
    if data_dir is not None:
        args += ["--data-dir", data_dir]
    for s in sets:
        args += ["--set", s]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    return run


@pytest.fixture
def two_hosts() -> Iterator[Any]:
    """Two network namespaces joined by a veth pair, "host A" and "host B" (tests/netns.py);
    removed afterwards, also when the test fails. Skips, saying why, without root or `ip`."""
    import netns

    why = netns.why_not_available()
    if why:
        pytest.skip(why)
    with netns.two_hosts() as hosts:
        yield hosts
