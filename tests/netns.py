"""Two "hosts" on one machine: Linux network namespaces joined by a veth pair (issue 24).

Host A and host B each get their own network namespace with loopback up and one end of a veth
pair, addressed ``10.231.0.1/24`` (A) and ``10.231.0.2/24`` (B). A process started "on host A"
(``hosts.a.popen([...])``) runs under ``ip netns exec``: it sees only A's loopback and the link to
B, so traffic between the two goes over the veth pair and never leaves the machine. The addresses
are private to these namespaces (every pair is its own network, so parallel test workers may
reuse them). Bringing a link down (``hosts.b.link(False)``) is what unplugging B's cable looks
like to A.

Root is needed to make namespaces; without it, or without ``ip``, the fixture skips and says why.
The namespaces (and every process still running in them) are removed afterwards, also when the
test fails. ``tools/twohosts.py`` makes the same pair by hand for trying things out.

``create(hostnames=True)`` also gives each host a name of its own, as two real machines have:
every command on host A runs in a fresh UTS namespace whose host name is ``host-a`` (``unshare
--uts``), and ``ip netns exec`` shows it its own ``/etc/hosts`` and ``/etc/resolv.conf`` (from
``/etc/netns/NAME/``). The hosts file is the one a Debian/Ubuntu installer writes: the machine's
own name on ``127.0.1.1``, the other machine's name on its address (what DNS would answer). The
resolver has no name server, so no lookup waits for one (or leaves the namespaces).
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUBNET = "10.231.0"
_counter = itertools.count()


def why_not_available() -> str | None:
    """None when namespaces can be made here, else the reason (for a skip message)."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing: apt-get install -y iproute2"
    if os.geteuid() != 0:
        return "making network namespaces needs root (CI runs as root)"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {res.stderr.strip()}")
    return res


@dataclass(frozen=True)
class Host:
    """One namespace: its name, its address on the veth link, and its end of the link."""

    name: str
    address: str
    ifname: str
    hostname: str | None = None  # its own host name (UTS namespace), with create(hostnames=True)

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as run on this host (the process keeps its pid through every exec)."""
        if self.hostname is None:
            return ["ip", "netns", "exec", self.name, *argv]
        named = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.hostname]
        return ["ip", "netns", "exec", self.name, *named, *argv]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` on this host (in its own process group, so a kill reaches its children)."""
        kwargs.setdefault("start_new_session", True)
        return subprocess.Popen(self.command(argv), **kwargs)

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 120)
        return subprocess.run(self.command(argv), **kwargs)

    def pids(self) -> list[int]:
        """The processes running in this namespace."""
        res = _ip("netns", "pids", self.name, check=False)
        return [int(p) for p in res.stdout.split()]

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def link(self, up: bool) -> None:
        """Bring this host's end of the link up or down (down: the cable is pulled)."""
        _ip("-n", self.name, "link", "set", self.ifname, "up" if up else "down")


@dataclass(frozen=True)
class TwoHosts:
    a: Host
    b: Host


ETC_NETNS = Path("/etc/netns")


def _write_name_files(host: Host, other: Host) -> None:
    """/etc/hosts and /etc/resolv.conf as ``host`` sees them (``ip netns exec`` mounts them)."""
    folder = ETC_NETNS / host.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hosts").write_text(
        f"127.0.0.1 localhost\n127.0.1.1 {host.hostname}\n{other.address} {other.hostname}\n",
        encoding="utf-8",
    )
    (folder / "resolv.conf").write_text("# hosts file only: no name server\n", encoding="utf-8")


def create(tag: str | None = None, hostnames: bool = False) -> TwoHosts:
    """Make the two namespaces and the link between them; :func:`destroy` removes them.
    ``hostnames``: give them the host names ``host-a`` and ``host-b`` (module docstring)."""
    tag = tag or f"{os.getpid() % 100000}{next(_counter)}"
    named = ("host-a", "host-b") if hostnames else (None, None)
    a = Host(f"mk{tag}a", f"{SUBNET}.1", f"mk{tag}va", named[0])
    b = Host(f"mk{tag}b", f"{SUBNET}.2", f"mk{tag}vb", named[1])
    try:
        if hostnames:
            _write_name_files(a, b)
            _write_name_files(b, a)
        for h in (a, b):
            _ip("netns", "add", h.name)
            _ip("-n", h.name, "link", "set", "lo", "up")
        _ip(
            "link",
            "add",
            a.ifname,
            "netns",
            a.name,
            "type",
            "veth",
            "peer",
            "name",
            b.ifname,
            "netns",
            b.name,
        )
        for h in (a, b):
            _ip("-n", h.name, "addr", "add", f"{h.address}/24", "dev", h.ifname)
            _ip("-n", h.name, "link", "set", h.ifname, "up")
    except BaseException:
        destroy(TwoHosts(a, b))
        raise
    return TwoHosts(a, b)


def destroy(hosts: TwoHosts) -> None:
    """Kill what still runs in the namespaces, then delete them (the veth pair goes with them)."""
    for h in (hosts.a, hosts.b):
        h.kill_all()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (hosts.a.pids() or hosts.b.pids()):
        time.sleep(0.05)
    for h in (hosts.a, hosts.b):
        _ip("netns", "del", h.name, check=False)
        shutil.rmtree(ETC_NETNS / h.name, ignore_errors=True)


@contextmanager
def two_hosts(tag: str | None = None, hostnames: bool = False) -> Iterator[TwoHosts]:
    hosts = create(tag, hostnames)
    try:
        yield hosts
    finally:
        destroy(hosts)
