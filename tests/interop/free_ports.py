"""Print N loopback TCP ports that are free right now, one per line.

Used by .ci/run and ``nox -s interop`` to give each run's servers (Postfix and the
others) ports of their own, so that two runs on one machine never meet::

    read -r A B C < <(python3 tests/interop/free_ports.py 3 | tr '\\n' ' ')
    SMTPS=$(python3 tests/interop/free_ports.py --ending 465)

The ports are found by binding to port 0 and reading what the kernel chose, all
sockets held open together (so the N ports differ), then released. Another
program could take one in between: the server scripts then fail loudly ("port
... is already in use"), never silently share.
"""

from __future__ import annotations

import random
import socket
import sys


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port_ending(digits: str) -> int:
    """A loopback port free right now whose number ends with *digits* (``465``:
    the CLI takes a port ending in 465 for an implicit-TLS one, and its tests
    check that against Postfix's smtps port)."""
    step = 10 ** len(digits)
    candidates = list(range(10000 + int(digits), 65536, step))
    random.shuffle(candidates)
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError(f"no free loopback port ending in {digits}")


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "--ending" and argv[2].isdigit() and len(argv[2]) <= 4:
        try:
            print(free_port_ending(argv[2]))
        except OSError as exc:
            print(f"free_ports.py: {exc}", file=sys.stderr)
            return 1
        return 0
    if len(argv) != 2 or not argv[1].isdigit() or not 0 < int(argv[1]) <= 64:
        print("usage: free_ports.py N (1 to 64) | free_ports.py --ending DIGITS", file=sys.stderr)
        return 2
    print("\n".join(str(port) for port in free_ports(int(argv[1]))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
