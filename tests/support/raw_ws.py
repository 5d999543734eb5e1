"""A WebSocket client on a bare TCP stream, for tests that check the bytes a server writes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
import zlib
from dataclasses import dataclass


@dataclass(frozen=True)
class WireFrame:
    """One frame as it crossed the wire, header included."""

    raw: bytes
    opcode: int
    rsv1: bool
    payload: bytes


class RawClient:
    """A client that shows what the server wrote, frame by frame, byte for byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        # permessage-deflate keeps one context for the whole stream (RFC 7692 7.2.2)
        self._inflater = zlib.decompressobj(-15)

    def message(self, frame: WireFrame) -> bytes:
        """The message a data frame carries, inflated if compressed (call it for every
        frame, in order: each compressed frame may refer to the ones before)."""
        if not frame.rsv1:
            return frame.payload
        return self._inflater.decompress(frame.payload + b"\x00\x00\xff\xff")

    @classmethod
    async def connect(cls, port: int, path: str, *, deflate: bool = False,
                      receive_buffer: int | None = None,
                      subprotocol: str | None = None) -> RawClient:
        """Open the handshake (offering permessage-deflate and `subprotocol` if asked); the
        server must accept."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:  # before connect: it bounds the advertised window
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                 "Sec-WebSocket-Version: 13"]
        if deflate:
            lines.append("Sec-WebSocket-Extensions: permessage-deflate")
        if subprotocol is not None:
            lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
        response = await reader.readuntil(b"\r\n\r\n")
        if not response.startswith(b"HTTP/1.1 101"):
            raise AssertionError(f"handshake refused: {response!r}")
        return cls(reader, writer)

    async def frame(self) -> WireFrame:
        """The next frame the server wrote (servers never mask: checked)."""
        head = await self.reader.readexactly(2)
        if head[1] & 0x80:
            raise AssertionError("the server masked a frame")
        length = head[1] & 0x7F
        extended = b""
        if length == 126:
            extended = await self.reader.readexactly(2)
            length = struct.unpack("!H", extended)[0]
        elif length == 127:
            extended = await self.reader.readexactly(8)
            length = struct.unpack("!Q", extended)[0]
        payload = await self.reader.readexactly(length)
        return WireFrame(head + extended + payload, head[0] & 0x0F, bool(head[0] & 0x40),
                         payload)

    def send_frame(self, opcode: int, body: bytes, *, fin: bool = True) -> None:
        """Write one masked frame (a body under 64 KiB)."""
        self.writer.write(masked_frame(opcode, body, fin=fin))

    def send_text_and_close(self, text: str, code: int = 1000) -> None:
        """Write a text message and a close frame in one write: the server reads
        both at once, before its application has the text."""
        self.writer.write(masked_frame(0x1, text.encode())
                          + masked_frame(0x8, struct.pack("!H", code)))

    def send_text(self, text: str) -> None:
        """Write a short text message in one frame."""
        self.send_frame(0x1, text.encode())

    def send_close(self, code: int = 1000) -> None:
        """Write a close frame."""
        self.send_frame(0x8, struct.pack("!H", code))

    async def at_eof(self) -> bool:
        """True when the server closed the stream with nothing more written."""
        return await self.reader.read(1) == b""

    async def aclose(self) -> None:
        """Drop the TCP connection."""
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def masked_frame(opcode: int, body: bytes, *, fin: bool = True) -> bytes:
    """One frame as a client writes it, masked (a body under 64 KiB)."""
    assert len(body) < 65_536
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(body))
    head = bytes(((0x80 if fin else 0) | opcode,))
    length = (bytes((0x80 | len(body),)) if len(body) < 126
              else bytes((0x80 | 126,)) + struct.pack("!H", len(body)))
    return head + length + mask + masked
