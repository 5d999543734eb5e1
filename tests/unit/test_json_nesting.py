"""The depth check that runs before the JSON parser (pure/json_input.py): exact for JSON
text (brackets inside strings do not count, escaped quotes and backslashes neither end nor
begin one), never more lenient than counting brackets outside strings, and as cheap as
parsing. Before, a frame with more than 16 brackets anywhere, inside a string say, made
a Python loop step through every character: 1 MB of "[" in a message's data cost ~50 times
what parsing it did."""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from stabilizer.pure import json_input
from stabilizer.pure.json_input import JSONInputError, loads, nesting_within

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "stabilizer-unit-hypothesis")
FUZZ = settings(max_examples=300, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


def counted_depth_within(text: str, limit: int) -> bool:
    """The reference: one step per character, a counter of the brackets outside strings."""
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


def depth_of(value: object) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    return 0


@pytest.mark.parametrize(("text", "limit", "within"), [
    ('{"all": [1, "e"]}', 2, True),
    ('{"all": [[1], "e"]}', 2, False),
    ('{"[[[[": [1, "{{{{"]}', 2, True),  # brackets inside strings do not nest
    ('{"a\\"[[[": [1, "e"]}', 2, True),  # nor after an escaped quote
    ('{"a\\\\": [[[1]]]}', 2, False),  # an escaped backslash, then the string ends
    ('{"a\\\\\\"[[[": [1]}', 2, True),  # a backslash and a quote, both escaped
    ('["\\\\\\\\", [[1]]]', 2, False),
    ('["\\\\\\\\\\"[[[[", 1]', 1, True),
    ('["\\n[[[", "\\u005b[[[", "\\/[[["]', 1, True),  # other escapes end where they do
    ('["x", "[[[' + "\\" + '"]', 1, True),  # an unterminated string runs to the end
    ('["x", "[[[\\', 1, True),  # even ending in a backslash
    ('[{"a": [{"b": 1}]}]', 4, True), ('[{"a": [{"b": []}]}]', 4, False),
    ('[[], [[]], [[[]]], []]', 4, True), ('[[], [[]], [[[[]]]], []]', 4, False),
    ('[{"é": "[[[[☕"}, ["ü", {"x": "}}}}"}]]', 3, True),
    ("[" * 100_000, 2, False),
    ("[" * 20 + "]" * 20, 19, False), ("[" * 20 + "]" * 20, 20, True),
    ("[]" * 50_000, 1, True),
    ("", 2, True),
    ("[[]]", 2, True), ("[[[]]]", 2, False),  # as many brackets as the limit: no scan
    ('["' + "x" * 10_000 + '"]', 1, True),
])
def test_nesting_is_measured_outside_strings(text: str, limit: int, within: bool) -> None:
    assert nesting_within(text, limit) is within
    assert counted_depth_within(text, limit) is within


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ ab/é☕\n', max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(alphabet='[]{}"\\ a', max_size=4), children, max_size=3),
    max_leaves=30,
)


@FUZZ
@given(value=json_values, limit=st.integers(0, 8), ensure_ascii=st.booleans())
def test_for_json_text_the_answer_is_exactly_the_depth_against_the_limit(
        value: Any, limit: int, ensure_ascii: bool) -> None:
    text = json.dumps(value, ensure_ascii=ensure_ascii)
    within = depth_of(value) <= limit
    assert nesting_within(text, limit) is within
    assert counted_depth_within(text, limit) is within


@FUZZ
@given(text=st.text(alphabet='[]{}"\\ a,:', max_size=60), limit=st.integers(0, 6))
def test_text_that_is_no_json_is_never_let_through_deeper(text: str, limit: int) -> None:
    if nesting_within(text, limit):
        assert counted_depth_within(text, limit)


def test_text_with_a_backslash_outside_every_string_is_not_json() -> None:
    text = '\\"' + "[" * 20 + '"'  # a counter would see one string holding the brackets
    assert not nesting_within(text, 16)
    with pytest.raises(JSONInputError, match="not JSON"):
        loads(text, 16)


def python_steps(call: Callable[[], object]) -> int:
    """How many lines of json_input's own Python run during `call`."""
    steps = 0
    code_file = json_input.__file__

    def trace(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal steps
        if frame.f_code.co_filename != code_file:
            return None
        if event == "line":
            steps += 1
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        call()
    finally:
        sys.settrace(previous)
    return steps


def shapes(n: int) -> list[str]:
    """Frames of about `n` characters that are hard on a depth check."""
    return [
        '{"type":"message","data":"' + "[" * n + '"}',  # brackets inside a string
        '{"type":"message","data":"' + '\\"[\\\\' * (n // 5) + '"}',  # escapes among them
        '{"type":"message","data":"x","p":[' + ",".join(["[]"] * (n // 3)) + "]}",
        '{"type":"message","data":"x","p":[' + ",".join(['"[{"'] * (n // 5)) + "]}",
        '{"p":[' + ",".join(["[" * 14 + "1" + "]" * 14] * (n // 30)) + "]}",  # 16 deep
        '{"p":' + "[" * (n // 2) + "]" * (n // 2) + "}",  # far too deep
        '{"p":' + "[[]" * (n // 3) + "}",  # not JSON
    ]


@pytest.mark.parametrize("shape", range(len(shapes(100))))
def test_the_check_takes_as_many_python_steps_for_a_megabyte_as_for_a_kilobyte(
        shape: int) -> None:
    """Its cost grows with the frame only inside str and bytes methods, as the parser's
    does inside the parser: a frame of 1 MB takes no more Python steps than one of 1 KB."""
    small, large = shapes(1_000)[shape], shapes(1_000_000)[shape]
    assert nesting_within(small, 16) is counted_depth_within(small, 16)
    assert nesting_within(large, 16) is counted_depth_within(large, 16)
    assert python_steps(lambda: nesting_within(large, 16)) <= python_steps(
        lambda: nesting_within(small, 16)) + 10
