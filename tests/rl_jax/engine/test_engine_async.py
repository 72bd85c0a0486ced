"""SlotEngine (the asyncio TokenEngine) and the rollout pool's Generator over it: concurrent requests share the
engine, streams deliver the sampler's tokens, a caller that goes away frees its slot."""

from __future__ import annotations

import asyncio
import dataclasses

import chex
import numpy as np
import pytest
from engine_helpers import SMALL, prompt, request, sampler_reference, tiny_model

from rl_jax.engine import SlotEngine
from rl_jax.engine.rollout_generator import EngineGenerator
from rl_jax.rollout.types import Generation
from rl_jax.sampling import SamplingConfig

MODEL = tiny_model(0)


def test_concurrent_streams_each_equal_the_sampler():
    engine = SlotEngine(MODEL, SMALL)
    requests = [request(prompt(5 + 3 * i, 90 + i), 10, seed=100 + i) for i in range(6)]  # more than the slots

    async def consume(req):
        chunks = [chunk async for chunk in engine.stream(req)]
        assert all(c.finish is None for c in chunks[:-1]) and chunks[-1].finish == "length"
        return [t for c in chunks for t in c.tokens], [p for c in chunks for p in c.logprobs]

    async def main():
        try:
            return await asyncio.gather(*(consume(r) for r in requests))
        finally:
            await engine.aclose()

    for (tokens, logps), req in zip(asyncio.run(main()), requests, strict=True):
        want_tokens, want_logps = sampler_reference(MODEL, req)
        assert tokens == want_tokens
        chex.assert_trees_all_close(np.asarray(logps, np.float32), want_logps, atol=2e-5)


def test_a_staggered_burst_after_an_idle_spell_starts_as_one_batch():
    """Requests arriving a few ms apart (HTTP clients) join the first step instead of the first arrival
    prefilling and decoding alone; once they would fill the slots the engine starts without waiting out the
    window."""
    def staggered(max_wait_s: float):
        engine = SlotEngine(MODEL, SMALL, max_wait_s=max_wait_s)

        async def main():
            async def arrive(i: int):
                await asyncio.sleep(0.02 * i)
                return await engine.generate(request(prompt(5 + i, 120 + i), 4, seed=i))

            try:
                started = asyncio.get_running_loop().time()
                outs = await asyncio.gather(*(arrive(i) for i in range(SMALL.slots)))
                return outs, asyncio.get_running_loop().time() - started
            finally:
                await engine.aclose()

        outs, seconds = asyncio.run(main())
        assert all(len(o.tokens) == 4 for o in outs)
        return engine.stats, seconds

    gathered, seconds = staggered(600.0)
    assert (gathered.prefill_calls, gathered.decode_calls) == (1, 1)
    assert seconds < 300  # the slots filled: it did not wait out the 600 s window
    alone, _ = staggered(0.0)  # without a window the first arrival runs alone
    assert alone.prefill_calls > 1 and alone.decode_calls > 1


def test_a_cancelled_caller_frees_its_slot():
    engine = SlotEngine(MODEL, dataclasses.replace(SMALL, slots=1))

    async def main():
        try:
            long_turn = asyncio.create_task(engine.generate(request(prompt(10, 110), 100)))
            while engine.stats.decode_calls == 0:  # it holds the only slot and is decoding
                await asyncio.sleep(0.01)
            long_turn.cancel()
            with pytest.raises(asyncio.CancelledError):
                await long_turn
            return await asyncio.wait_for(engine.generate(request(prompt(8, 111), 5)), 120)
        finally:
            await engine.aclose()

    got = asyncio.run(main())
    assert got.finish == "length" and len(got.tokens) == 5
    assert engine.stats.new_tokens < 100 + 5  # the cancelled turn stopped early


def test_the_rollout_generator_over_the_engine_keeps_sessions_and_the_samplers_tokens():
    sampling = SamplingConfig(temperature=0.9, max_new_tokens=8)
    engine = SlotEngine(MODEL, SMALL)
    generator = EngineGenerator(engine, sampling)
    first = request(prompt(14, 120), 8, seed=130)

    async def main():
        try:
            async with generator.running():
                with generator.episode():
                    one = await generator.generate(first.prompt, 50, first.key, session="ep-1")
                    history = first.prompt + one.tokens + prompt(6, 121)
                    two = await generator.generate(history, 8, first.key, session="ep-1")
            return one, two, history
        finally:
            await engine.aclose()

    one, two, history = asyncio.run(main())
    assert isinstance(one, Generation) and not one.stopped
    assert list(one.tokens) == sampler_reference(MODEL, first)[0]  # the per-turn ceiling (8) applies
    assert list(two.tokens) == sampler_reference(MODEL, dataclasses.replace(first, prompt=history))[0]
    assert engine.stats.prefilled_tokens == len(first.prompt) + 6  # the second turn prefilled the new tokens only
    stats = generator.reset_stats()  # the engine's stage seconds come with the generator's counters
    assert stats.calls == 2 and stats.prefill_seconds > 0 and stats.decode_seconds > 0
    assert generator.reset_stats().prefill_seconds == 0.0  # and are reset with them
