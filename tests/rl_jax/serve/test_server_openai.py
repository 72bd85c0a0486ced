"""The server through the official ``openai`` client and raw HTTP: tools, streaming and not, n, seeds, stops,
logprobs, errors in OpenAI's shape, auth, and a dropped client's request leaving the engine.

A tiny random Transformer with SmolLM2's real tokenizer and chat template sits behind the plain-sampler engine
(``SamplerEngine``), so what the server renders and decodes is real; what the model says is noise.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import openai
import pytest
from serve_helpers import ServerThread, tiny_config, tiny_model

from rl_jax.chat import load_chat_format
from rl_jax.engine.sampler_engine import SamplerEngine
from rl_jax.sampling import Sampler
from rl_jax.serve import ChatService, ServeConfig

CONTEXT = 1024
NAME = "tiny-smol"
NEW = 12
TOOLS = [{"type": "function", "function": {
    "name": "getOrderDetails", "description": "Look up an order by its id.",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}}]
MESSAGES = [{"role": "system", "content": "You are a support agent."},
            {"role": "user", "content": "What is the total of order ORD-1?"}]


@pytest.fixture(scope="module")
def fmt():
    return load_chat_format()


@pytest.fixture(scope="module")
def sampler(fmt) -> Sampler:
    model = tiny_model(tiny_config(vocab_size=fmt.tokenizer.vocab_size, context=CONTEXT))
    return Sampler(model, pad_id=fmt.tokenizer.pad_token_id or 0)


def _service(sampler: Sampler, fmt, **engine_options) -> ChatService:
    return ChatService(SamplerEngine(sampler, context_limit=CONTEXT, **engine_options), fmt,
                       ServeConfig(model_name=NAME, default_max_tokens=NEW))


@pytest.fixture(scope="module")
def server(sampler, fmt):
    with ServerThread(_service(sampler, fmt, max_wait_s=0.05)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


def _post(url: str, body: bytes | dict, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    async def go() -> tuple[int, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with aiohttp.ClientSession() as session, session.post(
                url + "/chat/completions", data=data,
                headers={"Content-Type": "application/json", **(headers or {})}) as response:
            return response.status, await response.json(content_type=None)

    return asyncio.run(go())


def test_a_reply_with_tools_counts_the_rendered_prompt(client, fmt) -> None:
    reply = client.chat.completions.create(model=NAME, messages=MESSAGES, tools=TOOLS, max_tokens=NEW, seed=1)
    choice = reply.choices[0]
    assert reply.model == NAME and reply.object == "chat.completion" and len(reply.choices) == 1
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length", "tool_calls")
    assert reply.usage.prompt_tokens == len(fmt.encode(MESSAGES, TOOLS, add_generation_prompt=True))
    assert reply.usage.prompt_tokens > len(fmt.encode(MESSAGES, add_generation_prompt=True))  # tools rendered
    assert 1 <= reply.usage.completion_tokens <= NEW


def test_a_conversation_with_tool_calls_and_results_is_accepted(client, fmt) -> None:
    messages = [*MESSAGES,
                {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
                    "name": "getOrderDetails", "arguments": json.dumps({"order_id": "ORD-1"})}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"total": 42.5})}]
    reply = client.chat.completions.create(model=NAME, messages=messages, tools=TOOLS, max_tokens=NEW, seed=2)
    assert reply.usage.prompt_tokens == len(fmt.encode(messages, TOOLS, add_generation_prompt=True))


def test_the_same_seed_gives_the_same_text_streamed_or_not(client) -> None:
    whole = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=NEW, seed=7, temperature=0.9)
    again = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=NEW, seed=7, temperature=0.9)
    other = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=NEW, seed=8, temperature=0.9)
    stream = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=NEW, seed=7, temperature=0.9,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert whole.choices[0].message.content == again.choices[0].message.content == text
    assert other.choices[0].message.content != text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_n_choices_with_logprobs(client) -> None:
    reply = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=NEW, n=3, seed=3,
                                           logprobs=True, top_logprobs=2)
    assert sorted(c.index for c in reply.choices) == [0, 1, 2]
    assert len({c.message.content for c in reply.choices}) > 1  # each choice draws from its own key
    counted = 0
    for choice in reply.choices:
        entries = choice.logprobs.content
        assert entries and all(e.logprob <= 0.0 for e in entries)
        counted += len(entries)
    assert counted == reply.usage.completion_tokens


def test_greedy_is_deterministic_without_a_seed(client) -> None:
    first = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=NEW, temperature=0)
    second = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=NEW, temperature=0)
    assert first.choices[0].message.content == second.choices[0].message.content


def test_a_stop_string_cuts_the_text_before_it(client) -> None:
    base = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=NEW, seed=11)
    text = base.choices[0].message.content
    assert len(text) >= 4, text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=NEW, seed=11, stop=[stop])
    assert cut.choices[0].message.content == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=NEW, seed=11, stop=stop,
                                              stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == text[: text.find(stop)]


def test_max_tokens_bounds_the_answer(client) -> None:
    reply = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=3, seed=5)
    assert reply.usage.completion_tokens <= 3
    if reply.usage.completion_tokens == 3:
        assert reply.choices[0].finish_reason == "length"


def test_models_and_health(client, server) -> None:
    assert [m.id for m in client.models.list()] == [NAME]
    assert client.models.retrieve(NAME).id == NAME
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")

    async def health() -> dict:
        async with aiohttp.ClientSession() as session, session.get(server.url.removesuffix("/v1") + "/health") as r:
            return await r.json()

    assert asyncio.run(health())["status"] == "ok"


def test_an_unknown_model_is_404(client) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=NEW)
    assert caught.value.body["code"] == "model_not_found" and NAME in caught.value.body["message"]


@pytest.mark.parametrize(("body", "param", "words"), [
    (b"{not json", None, "not valid JSON"),
    ({"model": NAME}, "messages", "non-empty array"),
    ({"model": NAME, "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0]", "unknown message role"),
    ({"model": NAME, "messages": MESSAGES, "temperature": 5}, "temperature", "between 0 and 2"),
    ({"model": NAME, "messages": MESSAGES, "max_tokens": 0}, "max_tokens", "at least 1"),
    ({"model": NAME, "messages": MESSAGES, "n": "two"}, "n", "integer"),
    ({"model": NAME, "messages": MESSAGES, "tool_choice": "required", "tools": TOOLS}, "tool_choice", "cannot force"),
    ({"model": NAME, "messages": MESSAGES, "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"model": NAME, "messages": MESSAGES, "tools": [{"type": "function"}]}, "tools[0]", "'function'"),
    ({"messages": MESSAGES}, "model", "must name a model"),
])
def test_malformed_requests_get_400_with_a_message(server, body, param, words) -> None:
    status, reply = _post(server.url, body)
    assert status == 400
    error = reply["error"]
    assert words in error["message"] and error["param"] == param and error["type"] == "invalid_request_error"


def test_an_over_long_prompt_is_refused_as_a_context_error(client) -> None:
    long = [{"role": "user", "content": "word " * CONTEXT}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=NAME, messages=long, max_tokens=NEW)
    assert caught.value.body["code"] == "context_length_exceeded"
    assert "maximum context length is 1024 tokens" in caught.value.body["message"]


def test_an_api_key_is_required_when_set(sampler, fmt) -> None:
    with ServerThread(_service(sampler, fmt), api_key="sesame") as server:
        wrong = openai.OpenAI(base_url=server.url, api_key="guess", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        status, reply = _post(server.url, {"model": NAME, "messages": MESSAGES})
        assert status == 401 and "API key" in reply["error"]["message"]
        right = openai.OpenAI(base_url=server.url, api_key="sesame", max_retries=0)
        assert right.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=2, seed=0).choices


@pytest.mark.parametrize("stream", [False, True])
def test_a_dropped_client_leaves_the_engine(sampler, fmt, stream) -> None:
    # requests gather for 30 s before the sampler runs: the client is gone long before its turn comes
    service = _service(sampler, fmt, max_wait_s=30.0)
    engine = service.engine
    with ServerThread(service) as server:
        async def drop() -> None:
            async with aiohttp.ClientSession() as session:
                post = asyncio.ensure_future(session.post(server.url + "/chat/completions", json={
                    "model": NAME, "messages": MESSAGES, "max_tokens": NEW, "stream": stream, "seed": 0}))
                deadline = time.monotonic() + 30
                while engine.waiting == 0:
                    assert time.monotonic() < deadline, "the request never reached the engine"
                    await asyncio.sleep(0.02)
                post.cancel()  # the client goes away: its connection closes

        asyncio.run(drop())
        deadline = time.monotonic() + 30
        while engine.waiting or engine.stats.cancelled == 0:
            assert time.monotonic() < deadline, "the dropped request still waits in the engine"
            time.sleep(0.02)
    assert engine.stats.cancelled == 1 and engine.stats.calls == 0


def test_concurrent_clients_are_batched_together(sampler, fmt) -> None:
    service = _service(sampler, fmt, max_wait_s=2.0, max_batch=32)
    with ServerThread(service) as server:
        async def clients() -> list:
            client = openai.AsyncOpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=300)
            return await asyncio.gather(*(client.chat.completions.create(
                model=NAME, messages=[{"role": "user", "content": f"Order ORD-{i}?"}], max_tokens=4, seed=i)
                for i in range(32)))

        replies = asyncio.run(clients())
    stats = service.engine.stats
    assert len(replies) == 32 and sum(stats.batch_sizes) == 32
    assert len(stats.batch_sizes) < 32 and max(stats.batch_sizes) > 1  # they shared sampler calls
