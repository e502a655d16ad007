"""PostgreSQL on host A of the two-host test bed (tests/netns.py), reached over TCP with a password.

The server runs inside host A's network namespace (``ip netns exec A runuser -u postgres --
postgres ...``) and listens on A's link address only, so host B reaches it over the veth pair as
it would reach a database server on another machine. ``pg_hba.conf`` allows exactly two things:
the ``postgres`` superuser over the server's private unix socket (trust; for the test's own
set-up and checks), and the role ``sweeper`` over TCP from the link's subnet with
``scram-sha-256`` password authentication, to its own database ``sweeps`` only. ``sweeper`` is not
a superuser, cannot create roles or databases, and CONNECT on every other database is revoked
from PUBLIC. The password is random per server and never in a URL: the tests pass it through
``$PGPASSWORD`` or a ``~/.pgpass``-format file (``$PGPASSFILE``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from netns import Host
from pg import _pg_bin

PORT = 5433
ROLE, DB = "sweeper", "sweeps"


@dataclass
class HostedPostgres:
    host: Host
    bindir: Path
    data: Path
    sock: Path
    log: Path
    password: str

    @property
    def url(self) -> str:
        """The URL workers use: no password in it."""
        return f"postgresql+psycopg://{ROLE}@{self.host.address}:{PORT}/{DB}"

    def _as_postgres(self, *argv: str) -> list[str]:
        return self.host.command(["runuser", "-u", "postgres", "--", *argv])

    def options(self) -> str:
        return f"-c listen_addresses={self.host.address} -p {PORT} -k {self.sock} -c fsync=off"

    def pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = self._as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), *args)
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, f"pg_ctl {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
        return res

    def sql(self, statement: str, db: str = "postgres") -> str:
        """Run SQL as the superuser over the private unix socket; returns psql's unaligned output."""
        cmd = self._as_postgres(
            str(self.bindir / "psql"), "-h", str(self.sock), "-p", str(PORT), "-U", "postgres",
            "-d", db, "-v", "ON_ERROR_STOP=1", "-At", "-c", statement,
        )  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, f"{statement}: {res.stderr}"
        return res.stdout.strip()


@contextmanager
def postgres_on(host: Host) -> Iterator[HostedPostgres]:
    """Start the server on ``host`` (see the module doc); stop it and remove its files afterwards."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found: apt-get install -y postgresql (.ci/run does this)")
    if shutil.which("runuser") is None:
        pytest.skip("`runuser` is missing: cannot start PostgreSQL as the postgres user")
    top = Path(tempfile.mkdtemp(prefix="mnistkit-pghost-"))
    top.chmod(0o755)
    data, sock, log = top / "data", top / "sock", top / "server.log"
    data.mkdir()
    sock.mkdir()
    log.touch()
    for p in (data, sock, log):
        shutil.chown(p, "postgres", "postgres")
    pg = HostedPostgres(host, bindir, data, sock, log, "pw-" + secrets.token_hex(12))
    init = subprocess.run(
        ["runuser", "-u", "postgres", "--", str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
         "--auth-local=trust", "--auth-host=reject", "-E", "UTF8"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    (data / "pg_hba.conf").write_text(
        "# TYPE  DATABASE  USER      ADDRESS          METHOD\n"
        "local   all       postgres                   trust\n"
        f"host    {DB}    {ROLE}   {host.address.rsplit('.', 1)[0]}.0/24    scram-sha-256\n"
    )
    try:
        pg.pg_ctl("-w", "-t", "60", "start", "-o", pg.options())
        pg.sql(
            "SET password_encryption = 'scram-sha-256'; "
            f"CREATE ROLE {ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{pg.password}'"
        )
        pg.sql(f"CREATE DATABASE {DB} OWNER {ROLE}")
        for other in ("postgres", "template1"):
            pg.sql(f"REVOKE CONNECT ON DATABASE {other} FROM PUBLIC")
        pg.sql(f"REVOKE ALL ON DATABASE {DB} FROM PUBLIC")
        yield pg
    finally:
        subprocess.run(pg._as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"),
                       capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(top, ignore_errors=True)


def pgpass_file(folder: Path, pg: HostedPostgres) -> Path:
    """A ``~/.pgpass``-format file for the sweep role (mode 0600, or libpq ignores it)."""
    path = folder / "pgpass"
    path.write_text(f"{pg.host.address}:{PORT}:{DB}:{ROLE}:{pg.password}\n")
    os.chmod(path, 0o600)
    return path
