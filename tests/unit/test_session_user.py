"""Whose a stored session is: read from the baselines its open recorded."""

from __future__ import annotations

from stabilizer.backends.records import SessionState

OPENED = {"all": (3, "e1"), "c:kiosk": (0, "")}


def test_an_opened_session_is_its_users_or_an_anonymous_ones() -> None:
    alices = SessionState(baselines={**OPENED, "u:alice": (1, "e2")})
    anonymous = SessionState(baselines=dict(OPENED))
    assert (alices.user_known, alices.user_id) == (True, "alice")
    assert (anonymous.user_known, anonymous.user_id) == (True, None)
    assert [alices.is_for(user) for user in ("alice", "bob", None)] == [True, False, False]
    assert [anonymous.is_for(user) for user in ("alice", None)] == [False, True]


def test_a_session_without_the_baselines_of_an_open_names_no_user() -> None:
    """User data alone (an earlier version's save for a client whose open failed), or a
    group's baseline with it: nothing says whose it was, so any user may resume it."""
    for baselines in ({}, {"g:room": (2, "e3")}, {"all": (3, "e1")}):
        state = SessionState(user_data={"card": b"x"}, baselines=baselines)
        assert state.user_known is False
        assert all(state.is_for(user) for user in ("alice", None))
