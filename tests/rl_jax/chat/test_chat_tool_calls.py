"""Tool-call parsing of good, broken and adversarial model output; it never raises."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rl_jax.chat import ToolCall, format_assistant_text, parse_tool_calls
from rl_jax.chat.tool_calls import MAX_CALLS, ParsedToolCalls


def test_single_canonical_call():
    out = parse_tool_calls('<tool_call>\n{"name": "get_order", "arguments": {"order_id": 17}}\n</tool_call>')
    assert out == ParsedToolCalls("", (ToolCall("get_order", {"order_id": 17}),), ())


def test_prose_before_and_after_is_content_and_calls_keep_order():
    text = (
        "Let me look.\n<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n"
        "<tool_call>{\"name\": \"b\", \"arguments\": {\"x\": [1, {\"y\": \"}\"}]}}</tool_call> trailing words"
    )
    content, calls, errors = parse_tool_calls(text)
    assert content == "Let me look.\n\n trailing words"
    assert calls == (ToolCall("a", {}), ToolCall("b", {"x": [1, {"y": "}"}]}))
    assert errors == ()


def test_no_tool_call_is_plain_content():
    assert parse_tool_calls("  The order shipped.  ") == ParsedToolCalls("The order shipped.", (), ())


def test_arguments_as_json_string_are_decoded():
    out = parse_tool_calls('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>')
    assert out.calls == (ToolCall("f", {"a": 1}),) and out.errors == ()


def test_parameters_key_and_missing_arguments_are_accepted():
    out = parse_tool_calls('<tool_call>{"name": "f", "parameters": {"a": 1}}</tool_call><tool_call>{"name": "g"}</tool_call>')
    assert out.calls == (ToolCall("f", {"a": 1}), ToolCall("g", {}))


def test_id_is_kept_when_given():
    out = parse_tool_calls('<tool_call>{"name": "f", "arguments": {}, "id": "call_1"}</tool_call>')
    assert out.calls[0].id == "call_1"


def test_unclosed_final_call_is_used_and_reported():
    content, calls, errors = parse_tool_calls('ok <tool_call>\n{"name": "f", "arguments": {"q": "x"}}\n')
    assert calls == (ToolCall("f", {"q": "x"}),)
    assert content == "ok"
    assert len(errors) == 1 and "not closed" in errors[0].message


def test_unclosed_call_followed_by_another_call_does_not_swallow_it():
    text = '<tool_call>{"name": "a", "arguments": {}}\n<tool_call>{"name": "b", "arguments": {}}</tool_call>'
    _, calls, errors = parse_tool_calls(text)
    assert [c.name for c in calls] == ["a", "b"]
    assert [e.message for e in errors] == ["<tool_call> was not closed with </tool_call>"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ('{"name": "f", "arguments": {"a": 1,}}', "invalid JSON"),
        ('{"name": "f", "arguments": {"a": 1}', "invalid JSON"),
        ("just words", "no JSON object"),
        ('["f", {}]', '"name"'),
        ('{"arguments": {}}', '"name"'),
        ('{"name": "", "arguments": {}}', '"name"'),
        ('{"name": 3, "arguments": {}}', '"name"'),
        ('{"name": "f", "arguments": [1, 2]}', "JSON object"),
        ('{"name": "f", "arguments": "not json"}', "not valid JSON"),
        ('{"name": "f", "arguments": "[1]"}', "JSON object"),
        ("{" * 100_000, "invalid JSON"),
        ('{"name": "f", "arguments": {"n": ' + "9" * 10_000 + "}}", "invalid JSON"),
    ],
    ids=lambda v: v[:24] if isinstance(v, str) else v,
)
def test_broken_calls_become_errors_with_a_reason(body: str, fragment: str):
    content, calls, errors = parse_tool_calls(f"before <tool_call>{body}</tool_call> after")
    assert calls == ()
    assert content == "before  after"
    assert len(errors) == 1 and fragment in errors[0].message
    assert len(errors[0].raw) <= 160


def test_broken_call_does_not_stop_the_good_ones():
    text = '<tool_call>{"name": "a", "arguments": {</tool_call><tool_call>{"name": "b", "arguments": {}}</tool_call>'
    _, calls, errors = parse_tool_calls(text)
    assert [c.name for c in calls] == ["b"] and len(errors) == 1


def test_stray_closing_tag_and_nested_open_tags_do_not_raise():
    for text in ["</tool_call>", "<tool_call>", "<tool_call><tool_call></tool_call></tool_call>", "<tool_call></tool_call>"]:
        out = parse_tool_calls(text)
        assert isinstance(out, ParsedToolCalls) and out.calls == ()


def test_flood_of_calls_is_capped():
    text = '<tool_call>{"name": "f", "arguments": {}}</tool_call>' * (MAX_CALLS + 50)
    _, calls, errors = parse_tool_calls(text)
    assert len(calls) == MAX_CALLS
    assert len(errors) == 1 and "more than" in errors[0].message


def test_huge_adversarial_inputs_stay_bounded():
    # Many unclosed openings: each search is bounded by the call cap, so this is linear in the input.
    out = parse_tool_calls("<tool_call>" * 200_000)
    assert out.calls == () and len(out.errors) == MAX_CALLS + 1
    out = parse_tool_calls("<tool_call>" + '{"name": "f", "arguments": {"a": "' + "x" * 2_000_000 + '"}}')
    assert out.calls[0].arguments["a"] == "x" * 2_000_000


def test_non_string_input_is_an_error_not_an_exception():
    out = parse_tool_calls(None)  # type: ignore[arg-type]
    assert out.calls == () and out.errors


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)
names = st.text(
    alphabet=st.characters(categories=["L", "N"], include_characters="_-."), min_size=1, max_size=20
).filter(lambda s: s.strip() == s)
calls_strategy = st.lists(
    st.builds(ToolCall, names, st.dictionaries(st.text(max_size=6), json_values, max_size=4)), max_size=4
)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40).filter(lambda s: "<tool_call>" not in s and s.strip() == s), calls_strategy)
def test_formatted_calls_parse_back_exactly(content: str, calls: list[ToolCall]):
    parsed = parse_tool_calls(format_assistant_text(content, calls))
    assert parsed.errors == ()
    assert parsed.calls == tuple(calls)
    assert parsed.content == content


fragments = st.sampled_from(
    ["<tool_call>", "</tool_call>", "{", "}", "[", "]", '"', "\\", ":", ",", '"name"', '"arguments"', "\n", " ",
     '"f"', "null", "1e999", "<tool_response>", "\x00", "\ud7ff", "{}"]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(fragments | st.text(max_size=6), max_size=40).map("".join))
def test_parser_never_raises_on_fuzzed_output(text: str):
    out = parse_tool_calls(text)
    assert isinstance(out, ParsedToolCalls)
    for call in out.calls:
        assert isinstance(call.name, str) and call.name
        assert isinstance(call.arguments, dict)
        json.dumps(call.arguments)  # every accepted call can be sent on as JSON


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_parser_never_raises_on_random_decoded_bytes(data: bytes):
    assert isinstance(parse_tool_calls(data.decode("utf-8", errors="replace")), ParsedToolCalls)
