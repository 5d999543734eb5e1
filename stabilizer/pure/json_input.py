"""JSON text that arrives from outside the node (pure): a client's frames and positions,
and what peers and the store hand back (envelope payloads, presence entries, reports).

`loads` is the one decoder for all of it. What it returns can be sent on as it is: it
refuses nesting beyond a bound before the parser runs (the parser would otherwise recurse
once per level and raise RecursionError), the constants NaN and Infinity and numbers too
large for a float, such as ``1e999`` (no encoder of ours writes them back; the parser would
make them infinite), and strings holding a lone surrogate (a ``"\\ud800"`` escape decodes
to text that UTF-8 cannot encode, so the frame that carried it on could be written to no
socket). Every refusal is a ValueError.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final, NoReturn

#: An escape that may decode to half of a surrogate pair (a JSON parser joins whole pairs).
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89abcdefABCDEF]")
#: For bytes.translate: objects' braces become brackets (the depth counts both alike)...
_AS_BRACKETS: Final = bytes.maketrans(b"{}", b"[]")
#: ... and every other byte goes (no byte of a multi-byte UTF-8 character is a bracket).
_NOT_BRACKETS: Final = bytes(byte for byte in range(256) if byte not in b"[]{}")


class JSONInputError(ValueError):
    """Text from outside that is not JSON this node can use (the message says why)."""


def nesting_within(text: str, limit: int) -> bool:
    """True when no array or object in the JSON `text` nests deeper than `limit`
    (brackets inside strings do not count).

    It runs before the JSON parser, which would otherwise recurse once per level of an
    arbitrarily deep input, and costs about what parsing does: a few passes of str and
    bytes methods, never a Python step per character. It is exact for JSON text. Text
    that is not JSON (a backslash outside every string, a close bracket with nothing open)
    may be refused where counting brackets would let it through, never the other way
    round: the parser refuses such text anyway.
    """
    return _within(text, limit) is True


def _within(text: str, limit: int) -> bool | None:
    """nesting_within, or None for text with a backslash outside every string."""
    if text.count("[") + text.count("{") <= limit:
        return True  # (cannot nest deeper: two counts, the common case)
    outside = _outside_strings(text)
    if outside is None:
        return None
    brackets = outside.encode("utf-8", "surrogatepass").translate(_AS_BRACKETS, _NOT_BRACKETS)
    if brackets.count(b"[") <= limit:
        return True
    if b"[" * (limit + 1) in brackets:
        return False  # (a run of opens deeper than the limit: no need to peel)
    # Each pass peels every innermost pair, "[]": in JSON, the deepest level of each
    # branch. Text nested at most `limit` deep has no bracket left after `limit` passes;
    # a pass that peels nothing leaves brackets that no JSON text holds.
    for _ in range(limit):
        peeled = brackets.replace(b"[]", b"")
        if b"[" not in peeled:
            return True
        if len(peeled) == len(brackets):
            return False
        brackets = peeled
    return False


def _outside_strings(text: str) -> str | None:
    """`text` without its strings, quotes included (an unterminated one runs to the end);
    None when a backslash stands outside every string, as in no JSON text."""
    if '"' not in text:
        return None if "\\" in text else text
    if "\\" in text:
        # Inside a string a backslash escapes the next character: escaped backslashes go,
        # and an escaped quote becomes \' (no quote). A backslash outside every string
        # that would change what the split below sees leaves one behind there.
        text = text.replace("\\\\", "").replace('\\"', "\\'")
    outside = "".join(text.split('"')[::2])
    return None if "\\" in outside else outside


def _no_constant(name: str) -> NoReturn:
    raise JSONInputError(f"it holds {name}, which is no JSON number")


def _finite(number: str) -> float:
    value = float(number)
    if math.isinf(value):  # (no JSON number is NaN)
        raise JSONInputError(f"it holds {number[:40]}, a number too large for a float")
    return value


def loads(text: str | bytes, depth: int) -> Any:
    """Decode JSON `text` from outside, nested at most `depth` deep.

    Raises:
        JSONInputError: not JSON, nested deeper, NaN or Infinity or a number too large for
            a float, or a lone surrogate.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JSONInputError("it is not UTF-8 text") from exc
    within = _within(text, depth)
    if within is None:
        raise JSONInputError("it is not JSON (a backslash outside a string)")
    if not within:
        raise JSONInputError(f"it is nested more than {depth} deep")
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
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
