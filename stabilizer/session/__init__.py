"""Sessions: one socket from handshake to release."""

from stabilizer.session.session import Session, SessionServices

__all__ = ["Session", "SessionServices"]
