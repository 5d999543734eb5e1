"""RFC 6455 framing of the data frames a server writes (pure): one unfragmented message,
unmasked (servers never mask, section 5.1) and uncompressed (no RSV bit set).

connection/transports.py writes these bytes to every recipient of a broadcast whose server
lets it, so a message is framed once however many sockets receive it.
"""

from __future__ import annotations

import struct
from typing import Final

_FIN_TEXT: Final = 0x81  # FIN + opcode 1
_FIN_BINARY: Final = 0x82  # FIN + opcode 2
_SHORT: Final = 126  # lengths below this fit in the 7-bit field
_MEDIUM: Final = 1 << 16  # lengths below this take a 16-bit extended length


def data_frame(payload: bytes, *, text: bool) -> bytes:
    """One whole text (payload in UTF-8) or binary message as a server frames it."""
    head = _FIN_TEXT if text else _FIN_BINARY
    length = len(payload)
    if length < _SHORT:
        header = bytes((head, length))
    elif length < _MEDIUM:
        header = struct.pack("!BBH", head, 126, length)
    else:
        header = struct.pack("!BBQ", head, 127, length)
    return header + payload


def text_frame(text: str) -> bytes:
    """A text message as a server frames it.

    Raises:
        UnicodeEncodeError: `text` holds a lone surrogate (no server can send it either).
    """
    return data_frame(text.encode("utf-8"), text=True)
