"""The application's callbacks, called from the client's own task."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

logger = logging.getLogger("stabilizer.client")

T = TypeVar("T")


def notify(callback: Callable[[T], object] | None, value: T) -> None:
    """Call an application callback; its failure is logged, never raised into the client."""
    if callback is None:
        return
    try:
        callback(value)
    except Exception:  # the application's bug must not end the connection
        logger.error("stabilizer client callback %r failed", callback, exc_info=True)
