"""``python -m trio_sendmail`` / ``trio-sendmail``: command-line entry point.

For now it offers ``demo``, which runs the embedded loopback server and sends
through it (see the README).
"""

from __future__ import annotations

import argparse
import sys

import trio

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="trio-sendmail", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="send two mails through an embedded loopback server")
    args = parser.parse_args(argv)
    if args.command != "demo":  # pragma: no cover - argparse refuses other commands
        parser.error(f"unknown command {args.command!r}")
    from ._demo import run_demo

    delivered = trio.run(run_demo)
    return 0 if delivered == 2 else 70  # EX_SOFTWARE


if __name__ == "__main__":
    sys.exit(main())
