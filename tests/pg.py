"""A throw-away PostgreSQL server for tests (sweep storage, an MLflow backend store).

It starts from the distribution's binaries (PostgreSQL 15 on Debian: /usr/lib/postgresql/15/bin,
or whatever `pg_ctl` is on PATH): ``initdb`` as the unprivileged ``postgres`` user when the tests
run as root (initdb refuses root), a unix socket in a private temporary folder and no TCP port
(``listen_addresses=''``), trust authentication for that socket only. Without the binaries the
tests are skipped and say why; `.ci/run` installs them.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    for cand in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(cand) / "pg_ctl").exists():
            return Path(cand)
    return None


@contextmanager
def postgres(*databases: str) -> Iterator[Path]:
    """A running PostgreSQL server with ``databases`` created; yields its socket folder
    (connect as user ``postgres``, no password: trust authentication on that socket only).
    Skips the test (saying why) without the server binaries."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip(
            "PostgreSQL server binaries not found (no pg_ctl on PATH or in /usr/lib/postgresql/*/bin): "
            "install Debian's `postgresql` package (apt-get install -y postgresql; .ci/run does this)"
        )
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without `runuser`: cannot start PostgreSQL as an unprivileged user")
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    top = Path(tempfile.mkdtemp(prefix="mnistkit-pg-"))
    top.chmod(0o755)  # the postgres user must reach its data and socket folders
    data, sock = top / "data", top / "sock"
    data.mkdir()
    sock.mkdir()
    if as_user:
        shutil.chown(data, "postgres", "postgres")
        shutil.chown(sock, "postgres", "postgres")
    log = top / "server.log"
    log.touch()
    if as_user:
        shutil.chown(log, "postgres", "postgres")

    def run(*cmd: str) -> None:
        res = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"

    run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    run(
        str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "start",
        "-o", f"-c listen_addresses='' -k {sock} -c max_connections=50 -c fsync=off",
    )  # fmt: skip
    try:
        for name in databases:
            run(str(bindir / "createdb"), "-h", str(sock), "-U", "postgres", name)
        yield sock
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(top, ignore_errors=True)
