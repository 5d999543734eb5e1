"""What a ClientConnection tells about its session: the read-only properties, kept apart
from the connection's machinery (a mixin over the state ClientConnection sets up)."""

from __future__ import annotations

from stabilizer.client.frames import Frames
from stabilizer.client.v2 import ProtocolV2
from stabilizer.pure.client_protocol import ResumeResult, SessionInfo


class SessionView:
    """The session, identity and stream positions of a client connection."""

    _client_id: str | None
    _frames: Frames
    _v2: ProtocolV2 | None

    @property
    def client_id(self) -> str | None:
        """The client id given to connect(), else the one in the last session frame."""
        return self._client_id or (self.session.client_id if self.session else None)

    @property
    def session(self) -> SessionInfo | None:
        """The newest session frame (None until the first connection opens)."""
        return self._frames.session

    @property
    def last_resume(self) -> ResumeResult | None:
        """What the last reconnect recovered (see ``on_resume``)."""
        return self._frames.last_resume

    @property
    def protocol(self) -> int:
        """2 with ``protocol=2`` (the server speaks stabilizer.v2), else 1."""
        return 1 if self._v2 is None else 2

    @property
    def user_id(self) -> str | None:
        """The authenticated user of the current (or last) session; None when anonymous."""
        return self.session.user_id if self.session else None

    @property
    def device(self) -> str | None:
        """v2: the device given to connect(), else the one the server chose (kept)."""
        return self._v2.device if self._v2 else None

    @property
    def expires_at(self) -> float | None:
        """v2: when the credentials expire (Unix seconds; moved on by each refresh)."""
        return self._v2.expires_at if self._v2 else None

    @property
    def node_id(self) -> str | None:
        """The replica serving the current (or last) connection."""
        return self.session.node_id if self.session else None

    @property
    def token(self) -> str | None:
        """The newest reconnect token (persist it to resume from another process)."""
        return self._frames.token

    @property
    def positions(self) -> dict[str, tuple[int, str]]:
        """Per stream, the ``(offset, epoch)`` of the last message handed over."""
        return self._frames.positions.snapshot()
