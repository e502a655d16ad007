"""Several machines in one job: which network interface gloo uses, who is where, lost nodes.

Three things only a job that spans machines needs (issue 24; docs/distributed.md, "Two
machines"):

* :func:`choose_interface`: gloo listens on the address the machine's *host name* resolves to.
  On Debian and Ubuntu that is ``127.0.1.1`` (the installer's /etc/hosts line), a loopback
  address the other machines cannot reach: their connections are refused and rank 0 waits for
  them for the whole process-group timeout. When the host name resolves only to loopback (or not
  at all), this picks the interface that reaches the rendezvous host and sets
  ``GLOO_SOCKET_IFNAME`` for this process; where it cannot tell, it says what to set.
* :func:`this_node`: this process's host name and the address the others reach it at, gathered
  into ``Context.nodes`` (env.json records them), so a message can name a node.
* :class:`Heartbeat`: a lost node is noticed within ``LOST_AFTER_S`` seconds, not after the
  collectives' timeout. A killed process closes its connections and its peers fail at once, but a
  machine that loses its network (a pulled cable, a crashed kernel) closes nothing: a collective
  would wait for it until the timeout. Each process therefore counts a key up in the job's store
  every ``BEAT_S`` seconds (from a thread, so a busy rank 0 writing a checkpoint still beats) and
  watches the others' keys; a process whose key has not moved for ``LOST_AFTER_S`` seconds, or a
  store that does not answer within that time, is lost: the job ends with a message naming the
  node, the last checkpoint as it was.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import os
import socket
import struct
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any

from mnistkit.errors import PeerStopped, RunError

IFNAME_ENV = "GLOO_SOCKET_IFNAME"
LOST_ENV = "MNISTKIT_DIST_LOST_AFTER"
# A beat a second; lost after 10 s without one. Long enough for a rank whose main thread holds
# the GIL in one long C call (pickling a large checkpoint) and for a busy machine's scheduler,
# short enough that a job on two machines ends well within 30 s of losing one.
BEAT_S = 1.0
LOST_AFTER_S = 10.0
_SIOCGIFADDR = 0x8915  # Linux: the IPv4 address of an interface


def _addresses(name: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return []
    return [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]


def interfaces() -> dict[str, str]:
    """Every interface with an IPv4 address: name -> address (Linux)."""
    out: dict[str, str] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # no IPv4 address
            out[name] = socket.inet_ntoa(packed[20:24])
    return out


def _route_source(address: str) -> str | None:
    """The local address this machine sends from to reach ``address`` (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((address, 9))
            return str(s.getsockname()[0])
    except OSError:
        return None


def choose_interface(master: str, spans_machines: bool) -> tuple[str | None, str]:
    """The interface gloo should listen on, and who chose it (for env.json).

    Sets ``GLOO_SOCKET_IFNAME`` when mnistkit chooses. ``None`` leaves gloo's own choice (one
    machine, or a host name that resolves to a routable address)."""
    if os.environ.get(IFNAME_ENV):
        return os.environ[IFNAME_ENV], f"${IFNAME_ENV}"
    if not spans_machines:
        return None, "one machine"
    hostname = socket.gethostname()
    own = _addresses(hostname)
    if any(not a.is_loopback for a in own):
        return None, f"host name {hostname}"
    local = interfaces()
    candidates = {n: a for n, a in local.items() if not ipaddress.ip_address(a).is_loopback}
    masters = [a for a in _addresses(master) if a.version == 4]
    if masters and not masters[0].is_loopback:  # the rendezvous host is another machine
        source = _route_source(str(masters[0]))
        candidates = {n: a for n, a in candidates.items() if a == source} or candidates
    if len(candidates) == 1:
        name = next(iter(candidates))
        os.environ[IFNAME_ENV] = name
        return name, "mnistkit"
    shown = ", ".join(f"{n} ({a})" for n, a in candidates.items()) or "none found"
    resolved = ", ".join(map(str, own)) or "nothing"
    raise RunError(
        f"this machine's name {hostname} resolves to {resolved} (loopback), where the other "
        f"machines cannot reach it, and mnistkit cannot tell which interface they use "
        f"(candidates: {shown}). Set {IFNAME_ENV}=INTERFACE (the one that reaches the other "
        f"machines) on every machine, or map {hostname} to that address in /etc/hosts"
    )


def this_node(interface: str | None, master: str) -> dict[str, str]:
    """This process's host name and the address the other processes reach it at."""
    hostname = socket.gethostname()
    address = interfaces().get(interface or "", "")
    if not address:
        routable = [a for a in _addresses(hostname) if not a.is_loopback]
        address = str(routable[0]) if routable else ""
    if not address:
        masters = _addresses(master)
        address = (_route_source(str(masters[0])) if masters else None) or "127.0.0.1"
    return {"host": hostname, "address": address}


def describe(nodes: list[dict[str, Any]], ranks: list[int]) -> str:
    """``host-b (10.231.0.2, rank 1)``: the machines of ``ranks``, for a message."""
    parts = []
    for key in dict.fromkeys((nodes[r]["host"], nodes[r]["address"]) for r in ranks if r < len(nodes)):
        mine = [r for r in ranks if r < len(nodes) and (nodes[r]["host"], nodes[r]["address"]) == key]
        which = f"rank {mine[0]}" if len(mine) == 1 else "ranks " + ", ".join(map(str, mine))
        parts.append(f"{key[0]} ({key[1]}, {which})")
    return " and ".join(parts) or "rank " + ", ".join(map(str, ranks))


def ranks_at(nodes: list[dict[str, Any]], address: str, me: int) -> list[int]:
    """The other ranks whose node has ``address`` (from a gloo message: ``[10.231.0.2]:4321``)."""
    return [r for r, n in enumerate(nodes) if n["address"] == address and r != me]


class Heartbeat:
    """This process's beat in the job's store, and a watch on the others' (module docstring).

    ``on_lost(message)`` runs in the watching thread when a node is lost (rank 0 records the
    failure in status.json); then the message is printed and the process exits with
    ``PeerStopped``'s code at once: its main thread may be blocked inside a collective that only
    the timeout would end. The last checkpoint is whole (checkpoints are written atomically).
    """

    def __init__(self, rank: int, world: int, nodes: list[dict[str, Any]], master: str, port: int) -> None:
        self.rank, self.world, self.nodes = rank, world, nodes
        self.master, self.port = master, port
        value = os.environ.get(LOST_ENV)
        try:
            self.lost_after = float(value) if value else LOST_AFTER_S
        except ValueError:
            raise RunError(f"${LOST_ENV}={value!r}: expected a number of seconds") from None
        self.on_lost: Callable[[str], None] | None = None
        self._stop = threading.Event()
        start = time.monotonic()
        self._answered = start
        self._seen = {r: start for r in range(world) if r != rank}
        self._thread = threading.Thread(target=self._watch, name="mnistkit-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()
        threading.Thread(target=self._judge, name="mnistkit-heartbeat-watch", daemon=True).start()

    def stop(self) -> None:
        """Stop watching (the job ends normally, or this process fails by itself)."""
        self._stop.set()

    def _key(self, rank: int) -> str:
        return f"mnistkit/heartbeat/{rank}"

    def _watch(self) -> None:
        """Beat, and read the others' beats: ``self._seen[r]`` is when rank r's count last
        moved, ``self._answered`` when the store last answered. A store op on a link that is
        down can block past the store's own timeout, so another thread judges (:meth:`_judge`)."""
        import torch.distributed as tdist

        try:
            store = tdist.TCPStore(
                self.master,
                self.port,
                is_master=False,
                timeout=dt.timedelta(seconds=self.lost_after),
                wait_for_workers=False,
            )
        except Exception:  # noqa: BLE001 - no watch then; the collectives' timeout still ends it
            self._stop.set()
            return
        last: dict[int, int] = {}
        while not self._stop.wait(BEAT_S):
            try:
                store.add(self._key(self.rank), 1)
                values = {r: store.add(self._key(r), 0) for r in self._seen}
            except Exception:  # noqa: BLE001 - judged by _judge: the store stops answering
                continue
            now = time.monotonic()
            self._answered = now
            for r, v in values.items():
                if last.get(r) != v:
                    last[r], self._seen[r] = v, now

    def _judge(self) -> None:
        while not self._stop.wait(BEAT_S / 2):
            now = time.monotonic()
            if now - self._answered > self.lost_after:
                self._lost([0], f"its job store at {self.master}:{self.port} did not answer")
            lost = [r for r, t in self._seen.items() if now - t > self.lost_after]
            if lost:
                self._lost(lost, "no heartbeat")

    def _lost(self, ranks: list[int], how: str) -> None:
        if self._stop.is_set():  # the job ended normally meanwhile
            return
        message = (
            f"lost node {describe(self.nodes, ranks)}: {how} for {self.lost_after:.0f} s "
            "(its process was killed or its network is down); the last checkpoint is kept, "
            "continue with --resume"
        )
        if self.on_lost is not None:
            try:
                self.on_lost(message)
            except Exception:  # noqa: BLE001 - the message and the exit matter more
                pass
        tag = f" (rank {self.rank})" if self.world > 1 else ""
        sys.stderr.write(textwrap.fill(f"error:{tag} {message}", 80) + "\n")  # as the CLI's errors
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(PeerStopped.exit_code)
