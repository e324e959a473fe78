"""``igdeadlock`` and ``python -m igdeadlock``: the command line."""

import signal
import sys
from typing import List


def run() -> int:
    # Ctrl-C while the modules load is kept for the command line to answer,
    # not shown as a traceback.
    interrupts: List[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: interrupts.append(signum))
    from igdeadlock.cli import main

    return main(interrupted=lambda: bool(interrupts))


if __name__ == "__main__":
    sys.exit(run())
