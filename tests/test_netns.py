"""The two-host test bed itself (tests/netns.py): the hosts reach each other over their link and
nothing else, a pulled link cuts them apart, and nothing is left behind."""

from __future__ import annotations

import subprocess
import sys

import netns
import pytest

pytestmark = pytest.mark.multihost

# One TCP round trip: host A listens on its link address, host B connects and reads a line.
SERVER = (
    "import socket,sys;s=socket.create_server((sys.argv[1],0));print(s.getsockname()[1],flush=True);"
    "c,_=s.accept();c.sendall(b'hello from A\\n');c.close()"
)
CLIENT = (
    "import socket,sys;c=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=5);"
    "print(c.makefile().readline().strip())"
)


def test_hosts_talk_over_their_link(two_hosts: netns.TwoHosts) -> None:
    a, b = two_hosts.a, two_hosts.b
    server = a.popen([sys.executable, "-c", SERVER, a.address], stdout=subprocess.PIPE, text=True)
    port = server.stdout.readline().strip()
    got = b.run([sys.executable, "-c", CLIENT, a.address, port])
    assert got.stdout.strip() == "hello from A", got.stderr
    server.wait(timeout=10)
    # B sees only its own link and loopback: no route out of the pair.
    routes = b.run(["ip", "-4", "route"]).stdout
    assert routes.split() and "default" not in routes


def _reaches(b: netns.Host, address: str, port: str) -> bool:
    probe = "import socket,sys;socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=2)"
    return b.run([sys.executable, "-c", probe, address, port]).returncode == 0


def test_a_pulled_link_cuts_the_hosts_apart(two_hosts: netns.TwoHosts) -> None:
    a, b = two_hosts.a, two_hosts.b
    listen = (
        "import socket,sys,time;s=socket.create_server((sys.argv[1],0),backlog=8);"
        "print(s.getsockname()[1],flush=True);time.sleep(60)"
    )
    server = a.popen([sys.executable, "-c", listen, a.address], stdout=subprocess.PIPE, text=True)
    port = server.stdout.readline().strip()
    assert _reaches(b, a.address, port)
    b.link(False)
    assert not _reaches(b, a.address, port)
    b.link(True)
    assert _reaches(b, a.address, port)


def test_the_namespaces_and_their_processes_are_removed() -> None:
    why = netns.why_not_available()
    if why:
        pytest.skip(why)
    with netns.two_hosts() as hosts:
        # It says "in" once it runs inside B's namespace (`ip netns exec` enters it, then execs).
        sleeper = hosts.b.popen(["sh", "-c", "echo in; exec sleep 600"], stdout=subprocess.PIPE, text=True)
        assert sleeper.stdout.readline().strip() == "in"
        assert sleeper.pid in hosts.b.pids()
    assert sleeper.wait(timeout=15) != 0  # killed with the namespace
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert hosts.a.name not in listed and hosts.b.name not in listed
