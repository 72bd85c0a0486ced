"""SamplerEngine: the plain sampler behind the TokenEngine interface. Its tokens equal Sampler.generate's for the
same keys; concurrent requests share one call; options split calls; a cancelled request is dropped."""

from __future__ import annotations

import asyncio
import dataclasses

import chex
import jax
import numpy as np
import pytest
from serve_helpers import tiny_config, tiny_model

from rl_jax.engine.api import GenerationRequest
from rl_jax.engine.sampler_engine import SamplerEngine
from rl_jax.sampling import Sampler, SamplingConfig

CONTEXT = 128
PROMPTS = [(3, 14, 15, 92, 65), (35, 89), tuple(range(100, 120))]
NEW = 8
STOPS = (7, 11)


@pytest.fixture(scope="module")
def sampler() -> Sampler:
    return Sampler(tiny_model(tiny_config(context=CONTEXT)))


def _request(prompt: tuple[int, ...], seed: int, **options) -> GenerationRequest:
    base = dict(max_new_tokens=NEW, key=jax.random.key(seed), temperature=0.9, top_k=40, stop_token_ids=STOPS)
    return GenerationRequest(prompt=prompt, **{**base, **options})


def _reference(sampler: Sampler, requests: list[GenerationRequest]) -> list[tuple[list[int], np.ndarray]]:
    config = SamplingConfig(temperature=requests[0].temperature, top_k=requests[0].top_k,
                            top_p=requests[0].top_p, max_new_tokens=NEW, stop_token_ids=STOPS)
    keys = None if config.greedy else jax.random.wrap_key_data(
        jax.numpy.stack([jax.random.key_data(r.key) for r in requests]))
    out = sampler.generate([list(r.prompt) for r in requests], config, row_keys=keys)
    return [(out.tokens[i, : out.lengths[i]].tolist(), out.logprobs[i, : out.lengths[i]])
            for i in range(len(requests))]


def test_concurrent_requests_share_one_call_and_equal_the_sampler(sampler: Sampler) -> None:
    requests = [_request(p, seed) for seed, p in enumerate(PROMPTS)]

    async def run() -> tuple[list, SamplerEngine]:
        engine = SamplerEngine(sampler, context_limit=CONTEXT, max_wait_s=0.2)
        try:
            return await asyncio.gather(*(engine.generate(r) for r in requests)), engine
        finally:
            await engine.aclose()

    chunks, engine = asyncio.run(run())
    assert engine.stats.batch_sizes == [3]
    for chunk, (tokens, logprobs) in zip(chunks, _reference(sampler, requests), strict=True):
        assert list(chunk.tokens) == tokens
        chex.assert_trees_all_close(np.asarray(chunk.logprobs, np.float32), logprobs, atol=1e-6)
        assert chunk.finish == ("stop" if tokens[-1] in STOPS else "length")
        assert len(tokens) == NEW or tokens[-1] in STOPS


def test_streaming_a_single_request_equals_the_sampler_alone(sampler: Sampler) -> None:
    request = _request(PROMPTS[2], seed=5, top_p=0.9)

    async def run() -> list:
        engine = SamplerEngine(sampler, context_limit=CONTEXT)
        try:
            return [chunk async for chunk in engine.stream(request)]
        finally:
            await engine.aclose()

    chunks = asyncio.run(run())
    tokens, _ = _reference(sampler, [request])[0]
    assert [t for c in chunks for t in c.tokens] == tokens
    assert chunks[-1].finish is not None and chunks[-1].prompt_tokens_computed == len(PROMPTS[2])


def test_different_sampling_options_go_to_separate_calls(sampler: Sampler) -> None:
    hot = _request(PROMPTS[0], seed=1)
    greedy = dataclasses.replace(_request(PROMPTS[1], seed=2), temperature=0.0, key=None)

    async def run() -> tuple[list, SamplerEngine]:
        engine = SamplerEngine(sampler, context_limit=CONTEXT, max_wait_s=0.2)
        try:
            return await asyncio.gather(engine.generate(hot), engine.generate(greedy)), engine
        finally:
            await engine.aclose()

    (hot_chunk, greedy_chunk), engine = asyncio.run(run())
    assert sorted(engine.stats.batch_sizes) == [1, 1]
    assert list(hot_chunk.tokens) == _reference(sampler, [hot])[0][0]
    assert list(greedy_chunk.tokens) == _reference(sampler, [greedy])[0][0]


def test_a_request_near_the_end_of_the_context_is_cut_there(sampler: Sampler) -> None:
    prompt = tuple(range(1, CONTEXT - 2))  # 125 tokens: room for 3
    request = _request(prompt, seed=3, stop_token_ids=(), max_new_tokens=NEW)

    async def run():
        engine = SamplerEngine(sampler, context_limit=CONTEXT)
        try:
            return await engine.generate(request)
        finally:
            await engine.aclose()

    chunk = asyncio.run(run())
    assert len(chunk.tokens) == 3 and chunk.finish == "context"


def test_a_cancelled_request_is_dropped_before_its_call(sampler: Sampler) -> None:
    async def run() -> SamplerEngine:
        engine = SamplerEngine(sampler, context_limit=CONTEXT, max_wait_s=30.0, max_batch=8)
        try:
            task = asyncio.create_task(engine.generate(_request(PROMPTS[0], seed=4)))
            await asyncio.sleep(0.05)
            assert engine.waiting == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert engine.waiting == 0
            return engine
        finally:
            await engine.aclose()

    engine = asyncio.run(run())
    assert engine.stats.cancelled == 1 and engine.stats.calls == 0
