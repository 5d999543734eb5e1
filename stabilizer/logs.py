"""Logging: the ``stabilizer`` logger hierarchy, a JSON formatter and a one-call setup.

Every module logs to ``logging.getLogger(__name__)``, so all records come from
``stabilizer.*`` and no handler is installed unless the application asks::

    configure_logging("INFO", json=True)   # one JSON object per line on stderr

Records carry ids (client, conn, node), never tokens or message payloads.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json as jsonlib
import logging
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Final, TextIO

ROOT: Final = "stabilizer"

#: The node id put on JSON records that do not carry a ``node_id`` attribute themselves.
node_id_var: Final[ContextVar[str | None]] = ContextVar("stabilizer_node_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD: Final = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_CORE: Final = ("time", "level", "logger", "message", "node_id", "exception", "stack")
_HANDLER_MARK: Final = "_stabilizer_handler"


def get_logger(name: str) -> logging.Logger:
    """Return the logger `name` inside the ``stabilizer`` hierarchy."""
    if name == ROOT or name.startswith(ROOT + "."):
        return logging.getLogger(name)
    return logging.getLogger(f"{ROOT}.{name}")


@contextlib.contextmanager
def bind_node_id(node_id: str) -> Iterator[None]:
    """Label the JSON records logged in this context (and tasks started in it) with
    `node_id`."""
    token = node_id_var.set(node_id)
    try:
        yield
    finally:
        node_id_var.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, node_id, exception.

    `node_id` comes from the record (``extra={"node_id": ...}``), else from `node_id_var`,
    else from the formatter's default; other ``extra`` fields are kept as they are. Output
    is ASCII, so any client id (even one with lone surrogates) stays one valid line.
    """

    def __init__(self, *, node_id: str | None = None) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as one line of JSON."""
        entry: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        node_id = getattr(record, "node_id", None) or node_id_var.get() or self.node_id
        if node_id:
            entry["node_id"] = str(node_id)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in _CORE and not key.startswith("_"):
                entry[key] = value
        return jsonlib.dumps(entry, default=repr)


def configure_logging(
    level: str | int = "INFO",
    json: bool = False,
    *,
    stream: TextIO | None = None,
    node_id: str | None = None,
) -> logging.Handler:
    """Set the ``stabilizer`` logger's level and give it one stream handler; return it.

    Idempotent: calling it again replaces the handler it added before (never a second
    one). `json` selects JsonFormatter; `node_id` labels JSON records that carry none.
    Records still propagate to the root logger, as with any library.

    Raises:
        ValueError: `level` is not a logging level name or number.
    """
    resolved = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(resolved, int):
        raise ValueError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING or ERROR")
    logger = logging.getLogger(ROOT)
    for old in [h for h in logger.handlers if getattr(h, _HANDLER_MARK, False)]:
        logger.removeHandler(old)
        old.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(JsonFormatter(node_id=node_id) if json else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    ))
    logger.addHandler(handler)
    logger.setLevel(resolved)
    return handler


class RateLimitedLog:
    """Log a recurring problem at most once per `interval` seconds, counting the rest."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last = float("-inf")
        self._suppressed = 0

    def warning(self, msg: str, *args: object, exc: BaseException | None = None) -> None:
        """Log a warning unless one was logged within the interval."""
        now = time.monotonic()
        if now - self._last < self._interval:
            self._suppressed += 1
            return
        if self._suppressed:
            msg = f"{msg} ({self._suppressed} similar suppressed)"
        self._logger.warning(msg, *args, exc_info=exc)
        self._last = now
        self._suppressed = 0


__all__ = ["ROOT", "JsonFormatter", "RateLimitedLog", "bind_node_id", "configure_logging",
           "get_logger", "node_id_var"]
