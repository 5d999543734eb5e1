"""JsonFormatter lines and configure_logging's one handler on the stabilizer logger."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from stabilizer.logs import JsonFormatter, bind_node_id, configure_logging, get_logger


@pytest.fixture(autouse=True)
def restore_stabilizer_logger() -> Iterator[None]:
    """configure_logging changes the process-wide logger: put it back after each test."""
    logger = logging.getLogger("stabilizer")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


def record(message: str, *args: object, **attributes: Any) -> logging.LogRecord:
    made = logging.LogRecord("stabilizer.manager", logging.WARNING, __file__, 1, message,
                             args, None)
    made.__dict__.update(attributes)
    return made


def test_a_record_is_one_json_line_with_time_level_logger_and_message() -> None:
    line = JsonFormatter().format(record("client %r connected (conn %s)", "alice", "c1"))

    entry = json.loads(line)
    assert "\n" not in line
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "stabilizer.manager"
    assert entry["message"] == "client 'alice' connected (conn c1)"
    assert entry["time"].endswith("Z")
    assert "T" in entry["time"]
    assert "node_id" not in entry
    assert "exception" not in entry


def test_node_id_comes_from_the_record_then_the_context_then_the_formatter() -> None:
    formatter = JsonFormatter(node_id="default-node")

    assert json.loads(formatter.format(record("x")))["node_id"] == "default-node"
    with bind_node_id("context-node"):
        assert json.loads(formatter.format(record("x")))["node_id"] == "context-node"
        tagged = record("x", node_id="record-node")
        assert json.loads(formatter.format(tagged))["node_id"] == "record-node"
    assert json.loads(formatter.format(record("x")))["node_id"] == "default-node"


def test_an_exception_is_one_field_and_a_multiline_message_stays_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failed = record("loop survived\nsecond line", exc_info=sys.exc_info())

    line = JsonFormatter().format(failed)

    assert line.count("\n") == 0
    entry = json.loads(line)
    assert entry["message"] == "loop survived\nsecond line"
    assert entry["exception"].startswith("Traceback")
    assert "ValueError: boom" in entry["exception"]


def test_odd_client_ids_and_extra_fields_still_make_valid_ascii_json() -> None:
    odd = "caf\u00e9\udcff\u2028"  # a lone surrogate and a line separator
    line = JsonFormatter().format(record("client %r left", odd, conn_id="c9", obj=object()))

    assert line.isascii()
    entry = json.loads(line)
    assert entry["message"] == f"client {odd!r} left"
    assert entry["conn_id"] == "c9"
    assert entry["obj"].startswith("<object object")


def test_configure_logging_is_idempotent_and_switches_format() -> None:
    first, second = io.StringIO(), io.StringIO()
    logger = logging.getLogger("stabilizer")
    before = len(logger.handlers)

    configure_logging("debug", stream=first)
    handler = configure_logging("INFO", json=True, stream=second, node_id="n1")
    get_logger("manager").info("node %s started", "n1")
    get_logger("manager").debug("not at INFO")

    assert len(logger.handlers) == before + 1
    assert handler in logger.handlers
    assert logger.level == logging.INFO
    assert first.getvalue() == ""
    lines = second.getvalue().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["message"] == "node n1 started"
    assert json.loads(lines[0])["node_id"] == "n1"


def test_plain_text_lines_name_the_logger_and_level() -> None:
    out = io.StringIO()
    configure_logging(stream=out)

    logging.getLogger("stabilizer.pool").warning("outbox full for conn %s", "c1")

    assert out.getvalue().rstrip().endswith("WARNING stabilizer.pool: outbox full for conn c1")


def test_configure_logging_rejects_an_unknown_level() -> None:
    with pytest.raises(ValueError, match="unknown log level 'LOUD'"):
        configure_logging("LOUD")


def test_get_logger_stays_inside_the_stabilizer_hierarchy() -> None:
    assert get_logger("stabilizer.pool").name == "stabilizer.pool"
    assert get_logger("stabilizer").name == "stabilizer"
    assert get_logger("myapp.ws").name == "stabilizer.myapp.ws"
