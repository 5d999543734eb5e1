"""stabilizer: production-grade WebSockets for FastAPI, across many replicas.

Every name fastapi-websocket-stabilizer 1.1.0 documents imports from here, so switching starts
with ``from stabilizer import WebSocketConnectionManager, WebSocketConfig``; the deliberate
differences are in docs/migration.md.
"""

from stabilizer.auth.identity import (
    Authenticator,
    CallableAuthenticator,
    Credentials,
    Identity,
)
from stabilizer.backends.base import Backend, Presence
from stabilizer.backends.memory import MemoryBackend, MemoryHub
from stabilizer.channel_options import ChannelOptions
from stabilizer.channels import PublishRequest, SubscribeRequest
from stabilizer.config import (
    CloseCode,
    CompressionMode,
    HeartbeatType,
    MemoryEvictionPolicy,
    RateLimitAction,
    ShutdownMode,
    WebSocketConfig,
    should_reconnect,
)
from stabilizer.emitter import Emitter, SyncEmitter
from stabilizer.errors import (
    AckTimeoutError,
    AckUnsupportedError,
    AuthenticationError,
    AuthUnavailable,
    BackendNotReached,
    BackendRefused,
    BackendUnavailable,
    BroadcastFailedError,
    ConfigError,
    ConnectionLimitExceededError,
    ConnectionNotFoundError,
    ConnectionTimeoutError,
    CredentialsExpiredError,
    InvalidClientIdError,
    InvalidTokenError,
    MemoryLimitExceededError,
    NotAMemberError,
    PresenceDisabledError,
    RPCError,
    ShutdownError,
    TokenError,
    TokenExpiredError,
    UserConnectionLimitError,
    WebSocketStabilizerError,
    WireError,
)
from stabilizer.logs import JsonFormatter, configure_logging
from stabilizer.manager import WebSocketConnectionManager
from stabilizer.results import BroadcastResult, ClusterEvent, ConnectionEvent, ShutdownReport
from stabilizer.rpc import RPCCall
from stabilizer.session import Session

__version__ = "0.1.0"

__all__ = [
    "AckTimeoutError",
    "AckUnsupportedError",
    "AuthUnavailable",
    "AuthenticationError",
    "Authenticator",
    "Backend",
    "BackendNotReached",
    "BackendRefused",
    "BackendUnavailable",
    "BroadcastFailedError",
    "BroadcastResult",
    "CallableAuthenticator",
    "ChannelOptions",
    "CloseCode",
    "ClusterEvent",
    "CompressionMode",
    "ConfigError",
    "ConnectionEvent",
    "ConnectionLimitExceededError",
    "ConnectionNotFoundError",
    "ConnectionTimeoutError",
    "Credentials",
    "CredentialsExpiredError",
    "Emitter",
    "HeartbeatType",
    "Identity",
    "InvalidClientIdError",
    "InvalidTokenError",
    "JsonFormatter",
    "MemoryBackend",
    "MemoryEvictionPolicy",
    "MemoryHub",
    "MemoryLimitExceededError",
    "NotAMemberError",
    "Presence",
    "PresenceDisabledError",
    "PublishRequest",
    "RPCCall",
    "RPCError",
    "RateLimitAction",
    "Session",
    "ShutdownError",
    "ShutdownMode",
    "ShutdownReport",
    "SubscribeRequest",
    "SyncEmitter",
    "TokenError",
    "TokenExpiredError",
    "UserConnectionLimitError",
    "WebSocketConfig",
    "WebSocketConnectionManager",
    "WebSocketStabilizerError",
    "WireError",
    "__version__",
    "configure_logging",
    "should_reconnect",
]
