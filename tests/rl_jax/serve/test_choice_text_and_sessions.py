"""Sampled tokens to what the client sees (text deltas held back at stop strings and tool calls, calls parsed
into OpenAI's shape), and how the server recognises a conversation's next turn."""

from __future__ import annotations

import json

import pytest

from rl_jax.chat import load_chat_format
from rl_jax.chat.messages import Message, ToolCall
from rl_jax.serve.choice_text import ChoiceText
from rl_jax.serve.sessions import SessionBook


@pytest.fixture(scope="module")
def tok():
    return load_chat_format().tokenizer


def _feed(text: ChoiceText, ids: list[int], step: int = 1) -> list[str]:
    return [text.add(ids[i : i + step]) for i in range(0, len(ids), step)]


def test_a_tool_call_is_held_back_and_returned_whole(tok) -> None:
    written = 'Let me check.\n<tool_call>\n{"name": "getOrderDetails", "arguments": {"order_id": "ORD-1"}}\n</tool_call>'
    ids = [*tok.encode(written), tok.stop_token_ids[0]]
    text = ChoiceText(tok, parse_tools=True)
    streamed = "".join(_feed(text, ids)) + text.rest()
    final = text.final(length_cut=False)
    assert streamed == "Let me check.\n" and "<tool" not in streamed
    assert final.finish_reason == "tool_calls" and final.message["content"] == "Let me check."
    (call,) = final.message["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "getOrderDetails"
    assert json.loads(call["function"]["arguments"]) == {"order_id": "ORD-1"}
    assert final.typed.tool_calls[0].arguments == {"order_id": "ORD-1"}


def test_without_tools_a_tool_call_is_plain_text(tok) -> None:
    written = '<tool_call>\n{"name": "x", "arguments": {}}\n</tool_call>'
    text = ChoiceText(tok)
    streamed = "".join(_feed(text, tok.encode(written)))
    final = text.final(length_cut=True)
    assert streamed + text.rest() == written == final.message["content"]
    assert final.finish_reason == "length" and "tool_calls" not in final.message


def test_a_broken_call_keeps_the_text_as_written(tok) -> None:
    written = '<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n<tool_call>\n{oops\n</tool_call>'
    text = ChoiceText(tok, parse_tools=True)
    _feed(text, tok.encode(written), step=3)
    final = text.final(length_cut=False)
    assert final.message["content"] == written and [c["function"]["name"] for c in final.message["tool_calls"]] == ["a"]


def test_a_stop_string_split_across_tokens_is_never_sent(tok) -> None:
    written = "The total is 42 dollars. END of answer"
    text = ChoiceText(tok, stop_strings=["END"])
    deltas = _feed(text, tok.encode(written))
    assert "".join(deltas) + text.rest() == "The total is 42 dollars. "
    assert text.stopped and text.final(length_cut=True).finish_reason == "stop"
    assert text.add(tok.encode(" more")) == ""  # nothing after the stop


def test_an_incomplete_character_waits_for_its_last_byte(tok) -> None:
    ids = tok.encode("naïve café ☕")
    text = ChoiceText(tok)
    deltas = _feed(text, ids)
    assert all("\ufffd" not in d for d in deltas) and "".join(deltas) + text.rest() == "naïve café ☕"


def test_the_stop_token_is_not_text(tok) -> None:
    text = ChoiceText(tok)
    assert "".join(_feed(text, [*tok.encode("Done."), tok.stop_token_ids[0]])) == "Done."
    assert text.stop_token_seen and text.final(length_cut=False).message["content"] == "Done."


def _conversation(answer: Message) -> list[Message]:
    return [Message("system", "be brief"), Message("user", "hi"), answer, Message("tool", "{}", tool_call_id="c9")]


def test_the_next_turn_continues_the_session_once() -> None:
    ended: list[str] = []
    book = SessionBook(ended.append)
    opening = [Message("system", "be brief"), Message("user", "hi")]
    session = book.claim("m", (), opening)
    answer = Message("assistant", "", (ToolCall("lookup", {"id": 1}, "call_ours"),))
    book.remember("m", (), [*opening, answer], session)
    # the client sends the call back under its own id and with arguments as a JSON string: same conversation
    echoed = Message("assistant", "", (ToolCall("lookup", {"id": 1}, "call_theirs"),))
    assert book.claim("m", (), _conversation(echoed)) == session
    assert book.claim("m", (), _conversation(echoed)) != session  # a second client resending it: a new one
    assert book.claim("m", (), _conversation(Message("assistant", "other"))) != session
    assert ended == []


def test_forgotten_sessions_are_ended_past_the_capacity() -> None:
    ended: list[str] = []
    book = SessionBook(ended.append, capacity=2)
    for i in range(3):
        book.remember("m", (), [Message("user", str(i)), Message("assistant", "ok")], f"s{i}")
    assert ended == ["s0"] and len(book) == 2
