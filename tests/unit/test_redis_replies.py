"""Which error replies are refusals (BackendRefused) and which pass (BackendUnavailable)."""

from __future__ import annotations

import pytest
from redis.exceptions import (
    ClusterDownError,
    ConnectionError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
    TimeoutError,
    TryAgainError,
)

from stabilizer.backends.redis.replies import is_refusal

SCRIPT = "script: 5eb5e7a504c00ebd882d6d14eb5716b9ee35d2ff, on @user_script:36."


@pytest.mark.parametrize("exc", [
    ResponseError(f"value is not an integer or out of range {SCRIPT}"),
    ResponseError(f"WRONGTYPE Operation against a key holding the wrong kind of value {SCRIPT}"),
    ResponseError("NOPERM this user has no permissions to run the 'info' command"),
    ResponseError("Command # 2 (HGET x y) of pipeline caused error: WRONGTYPE Operation"),
    ResponseError("ERR Error running script (call to f_1): @user_script:3: WRONGTYPE ..."),
])
def test_an_error_a_retry_does_not_cure_is_a_refusal(exc: Exception) -> None:
    assert is_refusal(exc)


@pytest.mark.parametrize("exc", [
    ResponseError("BUSY Redis is busy running a script. You can only call SCRIPT KILL"),
    ResponseError("LOADING Redis is loading the dataset in memory"),
    ResponseError("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is no"),
    ResponseError("NOREPLICAS Not enough good replicas to write."),
    ResponseError("OOM command not allowed when used memory > 'maxmemory'."),
    ResponseError("ERR Error running script (call to f_1): @user_script:3: READONLY You "
                  "can't write against a read only replica."),
    ResponseError("Command # 1 (EVALSHA ab 1 k) of pipeline caused error: CLUSTERDOWN The "
                  "cluster is down"),
    ReadOnlyError("You can't write against a read only replica."),
    NoScriptError("No matching script. Please use EVAL."),
    ClusterDownError("The cluster is down"),
    TryAgainError("Multiple keys request during rehashing of slot"),
    ConnectionError("Connection reset by peer"),
    TimeoutError("Timeout reading from socket"),
    OSError("Network is unreachable"),
])
def test_a_passing_state_or_a_lost_connection_is_not_a_refusal(exc: Exception) -> None:
    assert not is_refusal(exc)
