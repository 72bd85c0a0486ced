"""The server over the continuous engine (``SlotEngine``): it answers as the plain-sampler engine does for the
same seed, and a conversation's next turn continues its session, so only the new tokens are prefilled."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import openai
import pytest
from serve_helpers import ServerThread, tiny_config, tiny_model

from rl_jax.chat import load_chat_format
from rl_jax.engine.config import EngineConfig
from rl_jax.engine.engine import SlotEngine
from rl_jax.engine.sampler_engine import SamplerEngine
from rl_jax.sampling import Sampler
from rl_jax.serve import ChatService, ServeConfig

CONTEXT = 1024
NAME = "tiny-smol"
NEW = 10
LONG = 600  # new tokens a dropped request asks for
MESSAGES = [{"role": "system", "content": "You are a support agent."},
            {"role": "user", "content": "What is the total of order ORD-1?"}]


@pytest.fixture(scope="module")
def fmt():
    return load_chat_format()


@pytest.fixture(scope="module")
def model(fmt):
    return tiny_model(tiny_config(vocab_size=fmt.tokenizer.vocab_size, context=CONTEXT))


def _client(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def continuous(model, fmt):
    engine = SlotEngine(model, EngineConfig(slots=4, max_len=CONTEXT, chunk=64, prefill_rows=(1, 4),
                                            decode_steps=4))
    with ServerThread(ChatService(engine, fmt, ServeConfig(model_name=NAME, default_max_tokens=NEW))) as server:
        yield server


def test_continuous_and_plain_engines_answer_alike(continuous, model, fmt) -> None:
    plain = SamplerEngine(Sampler(model, pad_id=fmt.tokenizer.pad_token_id or 0), context_limit=CONTEXT)
    with ServerThread(ChatService(plain, fmt, ServeConfig(model_name=NAME))) as reference:
        for options in ({"temperature": 0}, {"seed": 4, "temperature": 0.8}):
            want = _client(reference).chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=NEW,
                                                              **options)
            got = _client(continuous).chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=NEW,
                                                              **options)
            assert got.choices[0].message.content == want.choices[0].message.content
            assert got.usage.completion_tokens == want.usage.completion_tokens


def test_the_next_turn_reuses_the_conversations_cache(continuous) -> None:
    client = _client(continuous)
    first = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=NEW, seed=1)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    messages = [*MESSAGES, {"role": "assistant", "content": first.choices[0].message.content},
                {"role": "user", "content": json.dumps({"total": 42.5})}]
    second = client.chat.completions.create(model=NAME, messages=messages, max_tokens=NEW, seed=2)
    # the first turn's prompt (and whatever of its answer renders back identically) is not prefilled again
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens
    streamed = list(client.chat.completions.create(
        model=NAME, messages=[*messages, {"role": "assistant", "content": second.choices[0].message.content},
                              {"role": "user", "content": "thanks"}],
        max_tokens=NEW, seed=3, stream=True, stream_options={"include_usage": True}))
    assert streamed[-1].usage.prompt_tokens_details.cached_tokens >= second.usage.prompt_tokens


def test_a_prompt_past_a_slots_room_is_a_context_error(model, fmt) -> None:
    engine = SlotEngine(model, EngineConfig(slots=2, max_len=CONTEXT, own_capacity=32, chunk=32, prefill_rows=(1,),
                                            decode_steps=4))
    with ServerThread(ChatService(engine, fmt, ServeConfig(model_name=NAME))) as server:
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as caught:
                reply = _client(server).chat.completions.create(
                    model=NAME, messages=[{"role": "user", "content": "order " * 64}], max_tokens=NEW, stream=stream)
                list(reply) if stream else None
            assert caught.value.body["code"] == "context_length_exceeded"
            assert "own capacity" in caught.value.body["message"]


@pytest.mark.parametrize("stream", [True, False])
def test_a_dropped_client_frees_its_slot_for_the_next_request(model, fmt, stream) -> None:
    # one slot: had the dropped turn kept it, the next request would start only after its LONG tokens
    engine = SlotEngine(model, EngineConfig(slots=1, max_len=CONTEXT, chunk=64, prefill_rows=(1,), decode_steps=4))
    with ServerThread(ChatService(engine, fmt, ServeConfig(model_name=NAME))) as server:
        async def drop_then_ask() -> int:
            async with aiohttp.ClientSession() as session:
                body = {"model": NAME, "messages": MESSAGES, "max_tokens": LONG, "stream": stream, "seed": 0}
                post = asyncio.ensure_future(session.post(server.url + "/chat/completions", json=body))
                while engine.stats.new_tokens == 0:  # the dropped turn is decoding
                    await asyncio.sleep(0.01)
                post.cancel()
                if post.done() and not post.cancelled():
                    post.result().close()  # a streamed answer had begun: close its connection
            async with aiohttp.ClientSession() as session, session.post(server.url + "/chat/completions", json={
                    "model": NAME, "messages": MESSAGES, "max_tokens": NEW, "seed": 1}) as reply:
                return (await reply.json())["usage"]["completion_tokens"]

        second = server.call(drop_then_ask(), timeout=600)
    assert second >= 1
    assert engine.stats.new_tokens < LONG  # the dropped turn stopped early, the second ran in its slot
