"""When the server asks a v2 connection for fresh credentials, and which of the ``refresh``
frames the client sends it checks (pure: the clock, Unix seconds, is an argument).

The server asks ``grace`` seconds before the credentials expire (at once when they expire
sooner), once per expiry: never again for credentials that expire no later than the ones
it last asked about (a client whose token source hands back the same token would answer
every request with it), and no sooner than half the grace after its last request (tokens
that live less than the grace, or a server clock ahead of the issuer's). Each refresh costs
the authenticator a check: an answer to a request is checked, other refreshes at most once
per half grace. A refresh the server could not check (its key source out of reach) is not
the client's fault: the server asks again half a grace later, while that is before the
close.
"""

from __future__ import annotations

import math


class Renewal:
    """The refresh requests of one connection, and the checks of what it sends."""

    __slots__ = ("_answered", "_last_ask", "_last_check", "asked_about", "grace", "spacing")

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.spacing = grace / 2  # the least time between two requests, or two checks
        self.asked_about: float | None = None  # the expiry the last request was about
        self._last_ask = -math.inf
        self._last_check = -math.inf
        self._answered = True  # no request waits for its answer

    def ask_at(self, expires_at: float) -> float | None:
        """When to ask for credentials fresher than ones expiring at `expires_at` (in the
        past: at once); None when they are no fresher than those asked about already."""
        if self.asked_about is not None and expires_at <= self.asked_about:
            return None
        return max(expires_at - self.grace, self._last_ask + self.spacing)

    def asked(self, expires_at: float, now: float) -> None:
        """A request went out at `now`, about credentials expiring at `expires_at`."""
        self.asked_about = expires_at
        self._last_ask = now
        self._answered = False

    def retry_at(self, expires_at: float, now: float) -> float | None:
        """When to ask again after a refresh that could not be checked at `now`, for
        credentials expiring at `expires_at`; None when that would come after the close."""
        when = now + self.spacing
        return when if when < expires_at + self.grace else None

    def take(self, now: float) -> bool:
        """Count a refresh frame the client sent at `now`; True when it is to be checked:
        the first answer to a request, or half a grace after the last check."""
        if self._answered and now - self._last_check < self.spacing:
            return False
        self._answered = True
        self._last_check = now
        return True
