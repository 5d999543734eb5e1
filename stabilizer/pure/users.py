"""Users and devices (pure): user id and info rules, device ids, and the client id of an
authenticated connection.

A v2 connection that does not get its client id from the application is ``<device>`` when
anonymous and ``<user_id>/<device>`` when authenticated. A device id never holds "/", so a
client id splits back into (user, device) at its last "/" and no client can take another
user's client id.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from typing import Any, Final

from stabilizer.config_limits import MAX_DEVICE_LENGTH, MAX_USER_ID_LENGTH
from stabilizer.errors import AuthenticationError
from stabilizer.pure.json_input import loads
from stabilizer.pure.text import is_usable_id

#: The largest identity ``info`` (as compact JSON): stored with each of the user's
#: connections, so it stays small.
MAX_INFO_BYTES: Final = 2048
#: How deep stored info is read back (info_json bounds its size, which bounds this).
_INFO_DEPTH: Final = MAX_INFO_BYTES // 2
DEVICE_SEPARATOR: Final = "/"
_DEVICE: Final = re.compile(rf"[A-Za-z0-9._~-]{{1,{MAX_DEVICE_LENGTH}}}")


def is_user_id(user_id: object) -> bool:
    """True for a string a user id can be (what the API accepts without raising): the
    rules check_user_id enforces, decided without raising."""
    return is_usable_id(user_id, MAX_USER_ID_LENGTH)


def check_user_id(user_id: object) -> str:
    """Return `user_id` if usable: a non-empty string of at most 256 characters, valid
    UTF-8.

    Raises:
        AuthenticationError: it is not.
    """
    if not isinstance(user_id, str) or not user_id:
        raise AuthenticationError("the user id must be a non-empty string")
    if len(user_id) > MAX_USER_ID_LENGTH:
        raise AuthenticationError(f"the user id is over {MAX_USER_ID_LENGTH} characters")
    if not user_id.isascii():
        try:
            user_id.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise AuthenticationError("the user id is not valid Unicode text") from exc
    return user_id


def info_json(info: Mapping[str, Any] | None) -> str:
    """The compact JSON of an identity's info ("" for none).

    Raises:
        AuthenticationError: not a JSON object, over MAX_INFO_BYTES, or holding text UTF-8
            cannot encode (a lone surrogate, e.g. from a JSON "\\ud800" escape).
    """
    if info is None:
        return ""
    if not isinstance(info, Mapping):
        raise AuthenticationError("identity info must be a JSON object")
    try:
        text = json.dumps(dict(info), separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise AuthenticationError(f"identity info is not JSON-serializable: {exc}") from exc
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise AuthenticationError("identity info is not valid Unicode text") from exc
    if size > MAX_INFO_BYTES:
        raise AuthenticationError(f"identity info is over {MAX_INFO_BYTES} bytes as JSON")
    return text


def parse_info(text: str) -> dict[str, Any] | None:
    """The info object stored as `text`; None for "" or anything that is not an object."""
    if not text:
        return None
    try:
        value = loads(text, _INFO_DEPTH)
    except ValueError:  # (not what info_json writes: a peer's, or a record damaged)
        return None
    return value if isinstance(value, dict) else None


def is_device(value: object) -> bool:
    """True for a usable device id: 1 to 64 characters of ``A-Z a-z 0-9 . _ ~ -``."""
    return isinstance(value, str) and _DEVICE.fullmatch(value) is not None


def new_device() -> str:
    """A device id for a client that sent none."""
    return secrets.token_hex(8)


def client_id_of(user_id: str | None, device: str) -> str:
    """The client id of a connection: its device, under its user when it has one."""
    return device if user_id is None else f"{user_id}{DEVICE_SEPARATOR}{device}"
