"""Run a command in private network and PID namespaces, where 127.0.0.1 is the only address.

    python scripts/netns_run.py -- COMMAND [ARGS...]

Ray binds its processes to the machine's interface address by default; inside a fresh network namespace
the only interface is the loopback, so a Ray cluster, Serve's proxy and every replica stay on 127.0.0.1.
The PID namespace makes cleanup certain: when COMMAND exits, the kernel ends every process it left behind
(Ray's daemons included), and nothing outside the namespace is ever signalled.

Needs `unshare` (util-linux) and root. `available()` says whether it works here, and if not, why.
Exit status: COMMAND's, or 125 if the namespaces could not be made.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import struct
import subprocess
import sys

UNSHARE = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child"]
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def available() -> tuple[bool, str]:
    """(True, "") when private namespaces can be made here, else (False, the reason)."""
    if shutil.which("unshare") is None:
        return False, "the `unshare` command (util-linux) is not installed"
    probe = subprocess.run(UNSHARE + ["true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return False, f"`unshare --net --pid` failed (root is needed): {probe.stderr.strip()[:200]}"
    return True, ""


def command(argv: list[str]) -> list[str]:
    """The command line that runs `argv` inside fresh namespaces with the loopback up."""
    return UNSHARE + [sys.executable, os.path.abspath(__file__), "--inside", "--", *argv]


def loopback_up() -> None:
    """`ip link set lo up`, without needing iproute2."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | _IFF_UP))


def main(argv: list[str]) -> int:
    inside = argv[:1] == ["--inside"]
    if inside:
        argv = argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    if not inside:
        ok, why = available()
        if not ok:
            print(f"netns_run: {why}", file=sys.stderr)
            return 125
        return subprocess.run(command(argv)).returncode
    loopback_up()
    # PID 1 of the namespace: run the command as a child and pass its status on (the kernel then ends
    # whatever the command left behind when this process exits).
    return subprocess.run(argv).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
