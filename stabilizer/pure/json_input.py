"""JSON text that arrives from outside the node (pure): a client's frames and positions,
and what peers and the store hand back (envelope payloads, presence entries, reports).

`loads` is the one decoder for all of it. What it returns can be sent on as it is: it
refuses nesting beyond a bound before the parser runs (the parser would otherwise recurse
once per level and raise RecursionError), the constants NaN and Infinity (no encoder of
ours writes them back), and strings holding a lone surrogate (a ``"\\ud800"`` escape
decodes to text that UTF-8 cannot encode, so the frame that carried it on could be
written to no socket). Every refusal is a ValueError.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final, NoReturn

#: An escape that may decode to half of a surrogate pair (a JSON parser joins whole pairs).
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89abcdefABCDEF]")


class JSONInputError(ValueError):
    """Text from outside that is not JSON this node can use (the message says why)."""


def nesting_within(text: str, limit: int) -> bool:
    """True when no array or object in the JSON `text` nests deeper than `limit`.

    A linear scan that skips string contents: it runs before the JSON parser, which would
    otherwise recurse once per level of an arbitrarily deep input. Text with at most
    `limit` opening brackets in all cannot nest deeper, and skips the scan (two C-speed
    counts instead of a Python loop over every character).
    """
    if text.count("[") + text.count("{") <= limit:
        return True
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return False
        elif char in "]}":
            depth -= 1
    return True


def _no_constant(name: str) -> NoReturn:
    raise JSONInputError(f"it holds {name}, which is no JSON number")


def loads(text: str | bytes, depth: int) -> Any:
    """Decode JSON `text` from outside, nested at most `depth` deep.

    Raises:
        JSONInputError: not JSON, nested deeper, NaN or Infinity, or a lone surrogate.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JSONInputError("it is not UTF-8 text") from exc
    if not nesting_within(text, depth):
        raise JSONInputError(f"it is nested more than {depth} deep")
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except JSONInputError:
        raise
    except (ValueError, RecursionError) as exc:  # (an integer of over 4,300 digits too)
        raise JSONInputError("it is not JSON") from exc
    if _SURROGATE_ESCAPE.search(text) is not None and not encodable(value):
        raise JSONInputError("it holds a lone surrogate, a \\ud800-\\udfff escape that is "
                             "not half of a pair: UTF-8 cannot encode it")
    return value


def encodable(value: object) -> bool:
    """True when every string in the decoded JSON `value` (keys too) encodes as UTF-8."""
    if isinstance(value, str):
        return value.isascii() or _utf8(value)
    if isinstance(value, dict):
        return all(encodable(key) and encodable(item) for key, item in value.items())
    if isinstance(value, list):
        return all(encodable(item) for item in value)
    return True


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
