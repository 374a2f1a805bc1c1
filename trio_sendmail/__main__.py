"""``python -m trio_sendmail`` / ``trio-sendmail``: the command line.

``trio-sendmail [send] …`` submits one message (like ``sendmail(8)``),
``trio-sendmail bulk …`` sends a folder of ``.eml`` files or an mbox, and
``trio-sendmail demo`` runs the embedded loopback demo (see the README and
docs/cli.rst).
"""

from __future__ import annotations

import sys

from ._cli import main

__all__ = ["main"]


if __name__ == "__main__":
    sys.exit(main())
