"""Prompts sharing a prefix prefill it once: same continuations, log-probs and logits as separate prefills."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax.models import KVCache
from rl_jax.sampling import PrefillPlan, Sampler, SamplingConfig, token_logprobs
from rl_jax.sharding import make_mesh, shard_module
from tests.rl_jax.sampling.test_sampling_sampler import CFG, GREEDY, HOT, NEW, _full_logits, _model

PREFIX = [11, 250, 7, 7, 42, 3, 99, 18, 200, 5, 61, 77]  # 12 tokens every prompt starts with
PROMPTS = [[*PREFIX, 1, 2, 3], [*PREFIX, 9], [*PREFIX, 4, 5, 6, 7, 8, 9, 10, 12], [*PREFIX, 9]]
SHARE = 4  # the tests' threshold: any prefix of 4 tokens or more is shared


def _sharp_model():
    """The sampler tests' tiny model with its query and key weights scaled up: its attention then depends
    strongly on which tokens sit where (with the small default weights it is nearly uniform), so a prefix
    copied to the wrong rows or positions off by the prefix's length changes the logits."""
    model = _model()
    for layer in model.layers:
        layer.wq[...] = layer.wq[...] * 25.0
        layer.wk[...] = layer.wk[...] * 25.0
    return model


@pytest.fixture(scope="module")
def model():
    return _sharp_model()


@pytest.fixture(scope="module")
def samplers(model) -> tuple[Sampler, Sampler]:
    return Sampler(model, min_shared_prefix=SHARE), Sampler(model, min_shared_prefix=None)


def test_the_plan_shares_the_longest_common_prefix_but_each_prompt_keeps_a_token(samplers):
    shared, plain = samplers
    config = SamplingConfig(temperature=0.0, max_new_tokens=NEW)
    assert shared.plan(PROMPTS, config) == PrefillPlan(batch=4, length=16 + 16, new=16, shared=12, prefix_slots=16)
    assert plain.plan(PROMPTS, config) == PrefillPlan(batch=4, length=24, new=16)
    # identical prompts (a GRPO group): all but the last token is shared
    assert shared.plan([PROMPTS[1]] * 3, config).shared == len(PROMPTS[1]) - 1
    # a prefix under the threshold, a single prompt, or prompts differing from the first token: no sharing
    assert shared.plan([[*PREFIX[:3], 1], [*PREFIX[:3], 2]], config).shared == 0
    assert shared.plan([PROMPTS[0]], config).shared == 0
    assert shared.plan([[1, *PREFIX], [2, *PREFIX]], config).shared == 0
    assert "sharing their first 12 tokens" in shared.plan(PROMPTS, config).describe(4)
    with pytest.raises(ValueError, match="min_shared_prefix"):
        Sampler(_model(), min_shared_prefix=0)


def test_shared_prefill_gives_the_logits_of_separate_prefills(samplers):
    shared, plain = samplers
    cache, logits, packed, shape = shared.prefill(PROMPTS, GREEDY)
    _, want, want_packed, _ = plain.prefill(PROMPTS, GREEDY)
    chex.assert_trees_all_close(logits, want, atol=1e-5)
    np.testing.assert_array_equal(packed.lengths, want_packed.lengths)
    np.testing.assert_array_equal(packed.live, want_packed.live)
    assert shape == (4, 32, 16)
    # the prefix once (12 tokens in 16 slots), then each row's rest of its prompt in its own 16 + 16 slots
    assert cache.prefix_valid.shape == (1, 16) and cache.valid.shape == (4, 16 + 16)
    chex.assert_shape(cache.prefix_k, (1, CFG.num_kv_heads, 16, CFG.head_dim))
    assert int(np.asarray(cache.prefix_valid).sum()) == len(PREFIX)
    np.testing.assert_array_equal(np.asarray(cache.valid).sum(axis=1), [len(p) - len(PREFIX) for p in PROMPTS])
    assert int(cache.index) == 16
    # each row's real tokens, read off the packed layout in slot order, are its prompt
    for row, prompt in enumerate(PROMPTS):
        assert packed.tokens[row][packed.mask[row]].tolist() == prompt
        assert packed.positions[row][packed.mask[row]].tolist() == list(range(len(prompt)))
    assert [r.kind for r in shared.compile_log] == ["prefill_shared"]


def test_greedy_continuations_equal_separate_prefills(samplers):
    shared, plain = samplers
    got, want = shared.generate(PROMPTS, GREEDY), plain.generate(PROMPTS, GREEDY)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.lengths, want.lengths)
    chex.assert_trees_all_close(got.logprobs, want.logprobs, atol=1e-5)


def test_sampled_logprobs_equal_a_forward_pass_over_each_whole_sequence(model, samplers):
    shared, _ = samplers
    out = shared.generate(PROMPTS[:3], HOT, jax.random.key(2))
    assert any(r.kind == "prefill_shared" for r in shared.compile_log)
    for row, prompt in enumerate(PROMPTS[:3]):
        new = out.tokens[row, : out.lengths[row]].tolist()
        logits = _full_logits(model, prompt + new)[len(prompt) - 1 : -1]
        expected = token_logprobs(logits, jnp.asarray(new), HOT.temperature)
        chex.assert_trees_all_close(out.logprobs[row, : len(new)], expected, atol=2e-5, rtol=1e-5)


def test_a_shared_prefix_is_row_zero_of_the_prefix_cache_held_once():
    head = KVCache.init(CFG, 2, 5)
    v = tuple(jnp.arange(2 * 5 * CFG.num_kv_heads * CFG.head_dim, dtype=jnp.float32).reshape(x.shape) for x in head.v)
    k = tuple(x.transpose(0, 1, 3, 2) for x in v)  # the prefill's cache holds keys slot-minor
    valid = jnp.array([[False, True, True, True, True], [True] * 5])
    head = KVCache(k=k, v=v, valid=valid, index=jnp.int32(5))
    cache = KVCache.init(CFG, 3, 8).with_shared_prefix(head)
    # the prefix's keys are held slot-major, like its values
    chex.assert_shape(cache.prefix_k + cache.prefix_v, (1, CFG.num_kv_heads, 5, CFG.head_dim))
    for buf in cache.prefix_k + cache.prefix_v:
        np.testing.assert_array_equal(buf, v[0][:1])
    np.testing.assert_array_equal(cache.prefix_valid, [[False, True, True, True, True]])
    chex.assert_shape(cache.k, (3, CFG.num_kv_heads, CFG.head_dim, 8))  # the rows' own slots, still empty
    assert int(cache.index) == 0 and not np.asarray(cache.valid).any()
    with pytest.raises(ValueError, match="shared prefix of its own"):
        KVCache.init(CFG, 3, 8).with_shared_prefix(cache)


def test_shared_prefix_on_a_4x2_mesh_equals_unsharded():
    want = Sampler(_sharp_model(), min_shared_prefix=SHARE).generate(PROMPTS, HOT, jax.random.key(4))
    mesh = make_mesh(4, 2)
    sharded = Sampler(shard_module(_sharp_model(), mesh), mesh=mesh, min_shared_prefix=SHARE)
    got = sharded.generate(PROMPTS, HOT, jax.random.key(4))
    assert [r.kind for r in sharded.compile_log] == ["prefill_shared", "decode"]
    np.testing.assert_array_equal(got.tokens, want.tokens)
    chex.assert_trees_all_close(got.logprobs, want.logprobs, atol=1e-5)


def test_a_rest_longer_than_the_attention_chunk_goes_in_chunks_to_the_same_continuations():
    """The rows' rests (up to 8 tokens here) over a chunk of 2 queries: the cascade runs chunk by chunk and
    gives the continuations of separate prefills."""
    model = _sharp_model()
    model.attention_chunk = 2
    got = Sampler(model, min_shared_prefix=SHARE).generate(PROMPTS, GREEDY)
    want = Sampler(model, min_shared_prefix=None).generate(PROMPTS, GREEDY)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    chex.assert_trees_all_close(got.logprobs, want.logprobs, atol=1e-5)
