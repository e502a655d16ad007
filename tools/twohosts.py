"""Make, use and remove the two-host test bed by hand (the same one tests/netns.py gives tests).

    python tools/twohosts.py up            # namespaces mkdevA/mkdevB, 10.231.0.1 and .2
    python tools/twohosts.py up --hostnames   # ... named host-a and host-b (tests/netns.py)
    python tools/twohosts.py exec a -- mnistkit run recipes/quickstart.yaml
    python tools/twohosts.py down

Root only. Traffic between the hosts stays on the veth pair between the two namespaces.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import netns  # noqa: E402

TAG = "dev"


def _hosts() -> netns.TwoHosts:
    named = (netns.ETC_NETNS / f"mk{TAG}a" / "hosts").exists()  # made by `up --hostnames`
    return netns.TwoHosts(
        netns.Host(f"mk{TAG}a", f"{netns.SUBNET}.1", f"mk{TAG}va", "host-a" if named else None),
        netns.Host(f"mk{TAG}b", f"{netns.SUBNET}.2", f"mk{TAG}vb", "host-b" if named else None),
    )


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("up", "down", "exec"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    why = netns.why_not_available()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    if argv[0] == "up":
        hosts = netns.create(TAG, hostnames="--hostnames" in argv[1:])
        for label, h in (("A", hosts.a), ("B", hosts.b)):
            name = f", host name {h.hostname}" if h.hostname else ""
            print(f"host {label}: namespace {h.name}, address {h.address}, link {h.ifname}{name}")
        return 0
    if argv[0] == "down":
        netns.destroy(_hosts())
        return 0
    if len(argv) < 3 or argv[1].lower() not in ("a", "b"):
        print("usage: twohosts.py exec a|b -- COMMAND ...", file=sys.stderr)
        return 2
    host = _hosts().a if argv[1].lower() == "a" else _hosts().b
    cmd = argv[3:] if argv[2] == "--" else argv[2:]
    os.execvp("ip", host.command(cmd))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
