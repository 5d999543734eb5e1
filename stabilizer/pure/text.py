"""Text rules shared by every layer (pure): id validation, message encoding, close reasons,
retry advice and backoff."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from typing import Any, Final, TypeAlias, TypeGuard

from stabilizer.errors import InvalidClientIdError

#: What a caller may send: text, binary, or a JSON object/array (serialized once).
Message: TypeAlias = str | bytes | Mapping[str, Any] | Sequence[Any]
JSONValue: TypeAlias = Any

MAX_CLOSE_REASON_BYTES: Final = 123
MAX_GROUP_LENGTH: Final = 256


def is_usable_id(value: object, max_length: int) -> TypeGuard[str]:
    """True for an id the API can look up: a non-empty str of at most `max_length`
    characters that UTF-8 can encode (ids often come from clients, so the annotation is no
    guarantee, and a lone surrogate from a JSON "\\ud800" escape is a str no store can key).

    ASCII text, the usual id, is decided without an encode attempt.
    """
    if not isinstance(value, str) or not 0 < len(value) <= max_length:
        return False
    return value.isascii() or _encodes(value)


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_client_id(client_id: object, max_length: int) -> str:
    """Return `client_id` if usable as a client id (see is_usable_id).

    Raises:
        InvalidClientIdError: not a string, empty, longer than `max_length` characters, or
            not encodable as UTF-8 (lone surrogates).
    """
    if is_usable_id(client_id, max_length):
        return client_id
    if not isinstance(client_id, str):
        raise InvalidClientIdError(f"client_id must be a string, got {type(client_id).__name__}")
    if not client_id:
        raise InvalidClientIdError("client_id cannot be empty")
    if len(client_id) > max_length:
        raise InvalidClientIdError(
            f"client_id is {len(client_id)} characters; the limit is {max_length}"
        )
    raise InvalidClientIdError("client_id is not valid Unicode text (it holds a lone "
                               "surrogate, which UTF-8 cannot encode)")


def check_group(group: object) -> str:
    """Return `group` if usable as a group name (the client id rules, 256 characters).

    Raises:
        ValueError: not a non-empty string of at most 256 characters.
    """
    try:
        return check_client_id(group, MAX_GROUP_LENGTH)
    except InvalidClientIdError as exc:
        raise ValueError(str(exc).replace("client_id", "group")) from exc


def encode_message(message: object) -> str | bytes:
    """Serialize a message once: text and bytes pass through, JSON values become text.

    Raises:
        TypeError: for a value that is neither text, bytes nor JSON-serializable, or text
            that no text frame can carry (a lone surrogate, which UTF-8 cannot encode).
    """
    if isinstance(message, bytes):
        return message
    if isinstance(message, str):
        return _sendable(message)
    if isinstance(message, bytearray | memoryview):
        return bytes(message)
    if isinstance(message, Mapping | list | tuple):
        try:
            text = json.dumps(message, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False)
        except (ValueError, RecursionError) as exc:  # circular, too deep, NaN or infinity
            raise TypeError(f"message is not JSON-serializable: {exc}") from exc
        return _sendable(text)
    raise TypeError(f"message must be str, bytes, dict or list, got {type(message).__name__}")


def _sendable(text: str) -> str:
    """`text` if UTF-8 encodes it: checked once per message, not once per recipient."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise TypeError("message text holds a lone surrogate (UTF-8 cannot encode it; "
                            "no text frame can carry it)") from exc
    return text


def json_value(message: object) -> object:
    """The JSON object or array a message is, else None (text and bytes are sent as they
    are; a socket driven by its own send_json gets the object, as the seed did)."""
    return message if isinstance(message, Mapping | list | tuple) else None


def truncate_reason(reason: str) -> str:
    """Cut a close reason to the 123 UTF-8 bytes a close frame allows."""
    raw = reason.encode("utf-8", "replace")  # lone surrogates become "?"
    return raw[:MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore")


def retry_advice(jitter: float, *, floor: float = 0.25) -> str:
    """A close reason telling one client when to come back: ``{"retry_ms": N}``.

    N is drawn uniformly from [floor, floor + jitter] seconds, so the clients of a node that
    restarts spread their reconnects over the window instead of stampeding.
    """
    delay_ms = int((floor + random.uniform(0, jitter)) * 1000)
    return json.dumps({"retry_ms": delay_ms}, separators=(",", ":"))


def backoff_delay(failures: int, *, base: float = 0.1, cap: float = 5.0) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**failures)]."""
    return random.uniform(0, min(cap, base * (2 ** min(failures, 16))))


#: Close codes an application may close a user's connections with (RFC 6455: 1000, the
#: server-side codes, and the 3000-4999 ranges for libraries and applications).
_SENDABLE: Final = frozenset({1000, 1001, 1008, 1011, 1012, 1013})


def check_close_code(code: object) -> int:
    """Return `code` if a server may close a WebSocket with it.

    Raises:
        ValueError: it is not 1000, a server-side code (1001, 1008, 1011-1013) or 3000-4999.
    """
    if isinstance(code, bool) or not isinstance(code, int) or not (
            code in _SENDABLE or 3000 <= code <= 4999):
        raise ValueError(f"close code must be 1000, 1001, 1008, 1011-1013 or 3000-4999, "
                         f"got {code!r}")
    return code


#: The most presence entries a listing asks Redis for in one round trip.
MAX_SCAN_BATCH: Final = 100_000


def check_batch(batch: object) -> int:
    """Return `batch` if it is a usable count of entries per round trip of a listing.

    Raises:
        ValueError: it is not an integer from 1 to MAX_SCAN_BATCH.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or not (
            1 <= batch <= MAX_SCAN_BATCH):
        raise ValueError(f"batch must be an integer from 1 to {MAX_SCAN_BATCH:,}, "
                         f"got {batch!r}")
    return batch
