"""EngineCore on a tiny random GQA model: the plain sampler's tokens for the same key, slot reuse across turns and
prefix-cache hits equal to fresh prefills, weights swapped in place without a compile, a request joining
mid-batch leaves the others' tokens alone, a fixed set of programs whatever the lengths."""

from __future__ import annotations

import dataclasses

import chex
import numpy as np
import pytest
from engine_helpers import SMALL, collect, prompt, request, run, sampler_reference, tiny_model

from rl_jax.engine import EngineCore

MODEL = tiny_model(0)


@pytest.fixture(scope="module")
def core() -> EngineCore:
    return EngineCore(MODEL, SMALL)


def _assert_same(got, want_tokens, want_logps) -> None:
    assert list(got.tokens) == want_tokens
    chex.assert_trees_all_close(np.asarray(got.logprobs, np.float32), np.asarray(want_logps, np.float32),
                                atol=2e-5)


@pytest.mark.parametrize("options", [
    dict(), dict(seed=1), dict(seed=2, top_k=20), dict(seed=3, top_p=0.8), dict(seed=4, top_k=30, top_p=0.9),
], ids=["greedy", "sampled", "top_k", "top_p", "top_k_top_p"])
def test_engine_tokens_equal_the_sampler_for_the_same_key(core, options):
    requests = [request(prompt(n, seed=n), 11, **options) for n in (5, 13, 30)]
    for got, req in zip(run(core, *requests), requests, strict=True):
        _assert_same(got, *sampler_reference(MODEL, req))
        assert got.finish == "length"


def test_mixed_options_in_one_batch_each_equal_the_sampler(core):
    requests = [request(prompt(9, 1), 10), request(prompt(12, 2), 10, seed=7),
                request(prompt(7, 3), 10, seed=8, top_p=0.7)]
    for got, req in zip(run(core, *requests), requests, strict=True):
        _assert_same(got, *sampler_reference(MODEL, req))


def test_stop_token_ends_the_turn_and_is_kept(core):
    req = request(prompt(10, 4), 12)
    free = run(core, req)[0]
    stop = free.tokens[3]
    got = run(core, dataclasses.replace(req, stop_token_ids=(stop,)))[0]
    assert got.finish == "stop"
    assert got.tokens == free.tokens[: free.tokens.index(stop) + 1]


def test_next_turn_reuses_the_slot_and_equals_a_fresh_prefill_of_the_whole_history():
    core = EngineCore(MODEL, SMALL)
    first = request(prompt(20, 5), 9, seed=11, session="ep")
    turn1 = run(core, first)[0]
    tool_result = prompt(17, 6)
    history = first.prompt + turn1.tokens + tool_result
    second = request(history, 9, seed=12, session="ep")
    turn2 = run(core, second)[0]
    assert turn2.prompt_tokens_computed == len(tool_result)  # only the new tokens were prefilled
    _assert_same(turn2, *sampler_reference(MODEL, second))
    fresh = run(EngineCore(MODEL, SMALL), dataclasses.replace(second, session=None))[0]
    assert fresh.prompt_tokens_computed == len(history)
    _assert_same(turn2, list(fresh.tokens), fresh.logprobs)


def test_a_sessionless_turn_finds_the_slot_its_prompt_extends():
    core = EngineCore(MODEL, SMALL)
    a, b = request(prompt(15, 7), 6), request(prompt(15, 8), 6)
    out_a, _ = run(core, a, b)
    follow = a.prompt + out_a.tokens + (5, 6, 7)
    got = run(core, request(follow, 6))[0]
    assert got.prompt_tokens_computed == 3
    _assert_same(got, *sampler_reference(MODEL, request(follow, 6)))


def test_a_prompt_that_leaves_the_history_is_prefilled_from_where_they_part():
    core = EngineCore(MODEL, SMALL)
    base = prompt(24, 9)
    run(core, request(base, 5, session="s"))
    edited = base[:10] + prompt(6, 10)
    got = run(core, request(edited, 7, session="s"))[0]
    assert got.prompt_tokens_computed == 6
    _assert_same(got, *sampler_reference(MODEL, request(edited, 7)))


def test_prefix_cache_hit_equals_a_miss():
    config = dataclasses.replace(SMALL, prefix_capacity=48, min_shared_prefix=16)
    core = EngineCore(MODEL, config)
    shared = prompt(40, 11)
    first = request(shared + prompt(5, 12), 8, seed=21)
    second = request(shared + prompt(9, 13), 8, seed=22)
    out1 = run(core, first)[0]
    assert core.stats.prefix_tokens == len(first.prompt) - 1  # the first prompt (but its last token) filled it
    out2 = run(core, second)[0]
    assert out2.prompt_tokens_computed == 9  # the 40 shared tokens came from the prefix region
    assert core.stats.prefix_tokens == len(first.prompt) - 1  # computed once
    for got, req in ((out1, first), (out2, second)):
        _assert_same(got, *sampler_reference(MODEL, req))
        miss = run(EngineCore(MODEL, SMALL), req)[0]
        assert miss.prompt_tokens_computed == len(req.prompt)
        _assert_same(got, list(miss.tokens), miss.logprobs)


def test_weights_swapped_in_place_give_the_new_models_tokens_without_a_compile():
    config = dataclasses.replace(SMALL, prefix_capacity=48, min_shared_prefix=16)
    core = EngineCore(MODEL, config)
    req = request(prompt(30, 14), 8, seed=31, session="ep")
    before = run(core, req)[0]
    _assert_same(before, *sampler_reference(MODEL, req))
    programs, compiles = core.compiled_programs, len(core.compile_log)
    other = tiny_model(1)
    core.load_state(other)
    after = run(core, req)[0]
    assert after.prompt_tokens_computed == 1  # the prefix was refilled for the new weights; nothing stale kept
    _assert_same(after, *sampler_reference(other, req))
    assert list(after.tokens) != list(before.tokens)
    assert (core.compiled_programs, len(core.compile_log)) == (programs, compiles)


def test_a_request_joining_mid_batch_leaves_the_others_tokens_unchanged():
    a = request(prompt(12, 15), 14, seed=41)
    b = request(prompt(26, 16), 10, seed=42)
    alone = run(EngineCore(MODEL, SMALL), a)[0]
    core = EngineCore(MODEL, SMALL)
    first = core.submit(a)
    events = core.step()  # a is prefilled and decodes its first tokens alone
    assert any(turn_id == first for turn_id, _ in events)
    second = core.submit(b)
    events += core.run_until_idle()
    joined, other = collect(events, [first, second])
    assert joined.tokens == alone.tokens
    assert joined.logprobs == alone.logprobs  # bit for bit: a row's computation never sees the other rows
    _assert_same(other, *sampler_reference(MODEL, b))


def test_more_requests_than_slots_wait_for_a_free_slot(core):
    requests = [request(prompt(6 + i, 20 + i), 5, seed=50 + i) for i in range(7)]
    for got, req in zip(run(core, *requests), requests, strict=True):
        _assert_same(got, *sampler_reference(MODEL, req))


def test_the_program_set_stays_fixed_across_new_lengths():
    """Every program is one of a set fixed by the config (row bucket x chunk bucket x view for prefill), so no
    prompt or history length compiles anything outside it; lengths seen before compile nothing new."""
    core = EngineCore(MODEL, SMALL)
    fixed = {("prefill", r, c, v) for r in SMALL.prefill_rows for c in SMALL.chunk_buckets for v in SMALL.views}
    lengths = (1, 2, 3, 5, 7, 8, 9, 11, 14, 17, 25, 40)
    for n in lengths:  # lengths across every chunk bucket, alone and in pairs
        run(core, request(prompt(n, n), 6), request(prompt(n + 2, n), 3, seed=n))
        run(core, request(prompt(n, n + 100), 4))
    prefill_keys = {r.key for r in core.compile_log if r.key[0] == "prefill"}
    assert prefill_keys <= fixed
    assert {key[2] for key in prefill_keys} == set(SMALL.chunk_buckets)  # every chunk bucket was used
    assert all(r.key[0] in ("prefill", "decode") for r in core.compile_log)
    programs = core.compiled_programs
    for n in lengths:  # the same lengths, other tokens: nothing compiles
        run(core, request(prompt(n, n + 200), 6), request(prompt(n + 2, n + 300), 3, seed=n + 1))
        run(core, request(prompt(n, n + 400), 4))
    assert core.compiled_programs == programs


def test_a_burst_as_large_as_the_slots_prefills_in_one_call_at_its_chunk_bucket():
    core = EngineCore(MODEL, SMALL)  # 4 slots, chunk buckets 2, 4, 8
    requests = [request(prompt(3 + i % 2, 90 + i), 5, seed=90 + i) for i in range(4)]  # 3- and 4-token prompts
    got = run(core, *requests)
    assert (core.stats.prefill_calls, core.stats.prefill_positions) == (1, 4 * 4)  # 4 rows x 4, not 4 x 8
    assert core.stats.prefilled_tokens == 14
    for out, req in zip(got, requests, strict=True):
        _assert_same(out, *sampler_reference(MODEL, req))


def test_cancelling_a_turn_frees_its_slot():
    core = EngineCore(MODEL, dataclasses.replace(SMALL, slots=1))
    long_turn = core.submit(request(prompt(10, 70), 60))
    core.step()
    core.cancel(long_turn)
    got = run(core, request(prompt(8, 71), 5))[0]
    assert got.finish == "length"
    assert not core.has_work()


def test_a_turn_that_reaches_the_context_ends_with_context():
    core = EngineCore(MODEL, SMALL)
    got = run(core, request(prompt(SMALL.max_len - 4, 80), 10))[0]
    assert got.finish == "context" and len(got.tokens) == 4


def test_over_long_and_out_of_vocabulary_prompts_are_refused(core):
    with pytest.raises(ValueError, match="no room"):
        core.submit(request(prompt(SMALL.max_len, 81), 4))
    with pytest.raises(ValueError, match="token ids"):
        core.submit(request((1, 2, 10_000), 4))
