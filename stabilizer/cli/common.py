"""What every command shares: exit statuses, the one-line argument errors, and output."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
from typing import Any, Final, NoReturn, TextIO

PROG: Final = "python -m stabilizer"
EXIT_OK: Final = 0
EXIT_NOT_FOUND: Final = 1     # locate, send, kick: no node holds the client; broadcast: none
EXIT_USAGE: Final = 2         # bad arguments, URL, client id, close code, settings
EXIT_UNAVAILABLE: Final = 3   # Redis unreachable or not answering in time
Row = dict[str, Any]


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Report bad arguments on one line (argparse would print the usage first)."""
        self.exit(EXIT_USAGE, f"{PROG}: {message} (see {PROG} --help)\n")


UNREADABLE: Final = "?"  # a value read from Redis that cannot be shown (a time past year 9999)


def iso(ms: float) -> str:
    """Milliseconds since the epoch as an ISO 8601 UTC instant; UNREADABLE for a time out
    of datetime's (or the platform's) range, or not finite, as Redis may hold."""
    try:
        moment = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    except (OverflowError, ValueError, OSError):
        return UNREADABLE
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def show(text: str) -> str:
    """Ids are raw user strings: escape what would break a table line or the terminal."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


#: A query parameter whose value is a secret (a sentinel's password).
_PASSWORD_PARAMETER: Final = re.compile(r"([?&][a-z_]*password=)[^&]*")


def redacted(url: str) -> str:
    """`url` without its credentials: all before the last '@' of what follows the scheme
    (a password that holds a '/' or '#' unencoded ends a parser's authority early), and
    the value of any ``password`` parameter (a sentinel's)."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    rest = _PASSWORD_PARAMETER.sub(r"\1***", rest)  # first: its value may hold an '@'
    _, at, host = rest.rpartition("@")
    return scheme + separator + ("***@" + host if at else rest)


def emit(out: TextIO, data: list[Row] | Row, columns: list[str], as_json: bool) -> None:
    """Write `data` as JSON, or as a table whose last column is left unpadded."""
    if as_json:
        out.write(json.dumps(data, indent=2) + "\n")
        return
    out.write(table(data if isinstance(data, list) else [data], columns))


def table(rows: list[Row], columns: list[str]) -> str:
    """`rows` as aligned text lines under upper-cased column names (None as UNREADABLE)."""
    cells = [[c.upper() for c in columns]] + [
        [UNREADABLE if r[c] is None else show(str(r[c])) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = []
    for row in cells:
        padded = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append("  ".join([*padded, row[-1]]) + "\n")
    return "".join(lines)
