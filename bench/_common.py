"""Helpers shared by the controller, the servers and the load generators."""

from __future__ import annotations

import os
import resource
import signal
import sys
import threading
import time
from typing import Final

#: The only address load is ever sent to.
HOST: Final = "127.0.0.1"


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def exit_with_parent(max_seconds: float, grace: float = 10.0) -> None:
    """End this process when stdin closes (the controller is gone) or after `max_seconds`.

    SIGTERM first, so a server can shut down; a hard exit `grace` seconds later if that did
    not end the process.
    """

    def terminate(why: str) -> None:
        print(f"[{os.getpid()}] stopping: {why}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        os._exit(3)

    def watch_stdin() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        terminate("controller closed stdin")

    def watch_clock() -> None:
        time.sleep(max_seconds)
        terminate(f"lifetime of {max_seconds:g}s reached")

    threading.Thread(target=watch_stdin, daemon=True, name="watch-stdin").start()
    threading.Thread(target=watch_clock, daemon=True, name="watch-clock").start()
