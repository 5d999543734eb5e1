"""Which error replies are Redis refusing a command for good, and which are passing states
of the server or the cluster that a retry gets past (the backend's loops retry both)."""

from __future__ import annotations

import re
from typing import Final

from redis.exceptions import (
    AskError,
    ClusterDownError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)

#: Error codes of a server that is busy (a long script), loading, a replica or a master
#: without its replicas, a cluster moving slots or without quorum, full (noeviction), or
#: that lost its scripts (restarted empty): transient, as a lost connection is. They are
#: looked for anywhere in the reply: an older Redis wraps a script's error in "ERR Error
#: running script ...: <code> ...".
TRANSIENT_CODES: Final = re.compile(
    r"\b(?:BUSY|LOADING|READONLY|MASTERDOWN|CLUSTERDOWN|TRYAGAIN|MOVED|ASK|NOREPLICAS|OOM"
    r"|NOSCRIPT)\b")
_TRANSIENT_TYPES: Final = (AskError, ClusterDownError, NoScriptError, OutOfMemoryError,
                           ReadOnlyError, TryAgainError)


def is_refusal(exc: BaseException) -> bool:
    """True when `exc` is an error reply that a retry will not get past (WRONGTYPE, a value
    out of range, an ACL's NOPERM, an error raised by a script)."""
    if not isinstance(exc, ResponseError) or isinstance(exc, _TRANSIENT_TYPES):
        return False
    return TRANSIENT_CODES.search(str(exc)) is None
