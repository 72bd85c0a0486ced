"""Pure next-token sampling: filters on known logits, the draw's distribution, log-probs, configs, buckets."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax.sampling import (
    Buckets,
    SamplingConfig,
    categorical,
    sample_next,
    tempered_logprobs,
    token_logprobs,
    top_k_filter,
    top_p_filter,
)
from rl_jax.sampling.buckets import pack_prompts

PROBS = np.array([0.05, 0.5, 0.15, 0.3], np.float32)  # ranked: 1 (0.5), 3 (0.3), 2 (0.15), 0 (0.05)
LOGITS = jnp.log(jnp.asarray(PROBS))[None]


def _kept(filtered: jax.Array) -> set[int]:
    return set(np.flatnonzero(np.isfinite(np.asarray(filtered[0]))).tolist())


def test_top_k_keeps_exactly_the_k_largest_logits():
    assert _kept(top_k_filter(LOGITS, 1)) == {1}
    assert _kept(top_k_filter(LOGITS, 2)) == {1, 3}
    assert _kept(top_k_filter(LOGITS, 3)) == {1, 2, 3}
    assert _kept(top_k_filter(LOGITS, 0)) == {0, 1, 2, 3}  # 0 disables the filter
    kept = top_k_filter(LOGITS, 2)
    np.testing.assert_array_equal(np.asarray(kept[0, [1, 3]]), np.asarray(LOGITS[0, [1, 3]]))


@pytest.mark.parametrize(
    ("top_p", "expected"),
    [(0.3, {1}), (0.5, {1}), (0.7, {1, 3}), (0.85, {1, 2, 3}), (0.99, {0, 1, 2, 3})],
)
def test_top_p_keeps_the_smallest_most_likely_set_reaching_the_mass(top_p, expected):
    assert _kept(top_p_filter(LOGITS, top_p)) == expected


def test_top_p_always_keeps_the_most_likely_token_and_matches_a_sort_on_random_rows():
    logits = jax.random.normal(jax.random.key(0), (8, 1000)) * 3.0
    for top_p in (1e-6, 0.5, 0.9):
        filtered = np.asarray(top_p_filter(logits, top_p))
        for row in range(8):
            probs = np.asarray(jax.nn.softmax(logits[row]), np.float64)
            order = np.argsort(-probs)
            mass_before = np.cumsum(probs[order]) - probs[order]
            expected = set(order[mass_before < top_p].tolist())
            assert set(np.flatnonzero(np.isfinite(filtered[row])).tolist()) == expected


def test_categorical_draws_follow_the_softmax_and_never_pick_excluded_tokens():
    # 600 entries span several CDF blocks, the last one partial; mass sits in blocks 0 and 2 only
    vocab = 600
    probs = np.zeros(vocab, np.float32)
    probs[[3, 255, 256 + 257, 599]] = [0.1, 0.2, 0.3, 0.4]
    logits = jnp.where(probs > 0, jnp.log(jnp.maximum(probs, 1e-30)), -jnp.inf)
    n = 40_000
    keys = jax.random.split(jax.random.key(1), n)
    draws = np.asarray(jax.jit(categorical)(keys, jnp.broadcast_to(logits, (n, vocab))))
    assert set(np.unique(draws).tolist()) == {3, 255, 513, 599}
    freq = np.bincount(draws, minlength=vocab)[[3, 255, 513, 599]] / n
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.015)  # ~6 standard deviations


def test_greedy_picks_the_first_argmax_and_scores_at_temperature_one():
    logits = jnp.array([[0.0, 2.0, 2.0, -1.0], [5.0, 1.0, 0.0, 0.0]])
    tokens, logps = sample_next(None, logits, 0.0, 1.0, greedy=True, top_k=0, use_top_p=False)
    chex.assert_trees_all_equal(tokens, jnp.array([1, 0], jnp.int32))
    chex.assert_trees_all_close(logps, jax.nn.log_softmax(logits)[jnp.arange(2), tokens], atol=1e-6)


def test_filtered_draws_stay_in_the_filter_but_log_probs_are_untruncated():
    logits = jax.random.normal(jax.random.key(2), (512, 300)) * 2.0
    keys = jax.random.split(jax.random.key(3), 512)
    temperature = 0.7
    for top_k, top_p, use_top_p in ((0, 0.6, True), (20, 0.6, True)):
        tokens, logps = jax.jit(
            lambda k, lg, tk=top_k, tp=top_p, up=use_top_p: sample_next(
                k, lg, temperature, tp, greedy=False, top_k=tk, use_top_p=up
            )
        )(keys, logits)
        chex.assert_shape(tokens, (512,))
        chex.assert_type(tokens, jnp.int32)
        allowed = logits / temperature
        if top_k:
            allowed = top_k_filter(allowed, top_k)
        if use_top_p:
            allowed = top_p_filter(allowed, top_p)
        assert bool(jnp.all(jnp.isfinite(allowed[jnp.arange(512), tokens])))
        expected = jax.nn.log_softmax(logits / temperature)[jnp.arange(512), tokens]
        chex.assert_trees_all_close(logps, expected, atol=1e-5)


def test_token_logprobs_use_the_tempered_softmax():
    logits = jnp.array([[1.0, 2.0, 3.0]])
    chex.assert_trees_all_close(
        token_logprobs(logits, jnp.array([2]), 0.5), jax.nn.log_softmax(logits / 0.5)[:, 2], atol=1e-6
    )
    chex.assert_trees_all_close(tempered_logprobs(logits, 0.0), jax.nn.log_softmax(logits), atol=1e-6)


def test_same_keys_same_draws_and_other_keys_other_draws():
    logits = jnp.zeros((64, 1000))
    keys_a = jax.random.split(jax.random.key(7), 64)
    keys_b = jax.random.split(jax.random.key(8), 64)
    draw = jax.jit(categorical)
    chex.assert_trees_all_equal(draw(keys_a, logits), draw(keys_a, logits))
    assert not np.array_equal(np.asarray(draw(keys_a, logits)), np.asarray(draw(keys_b, logits)))


@pytest.mark.parametrize(
    "kwargs",
    [dict(temperature=-0.1), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5), dict(max_new_tokens=0),
     dict(stop_token_ids=(-2,))],
)
def test_invalid_sampling_config_is_refused(kwargs):
    with pytest.raises(ValueError):
        SamplingConfig(**kwargs)


def test_sampling_config_program_key_ignores_run_time_values():
    a = SamplingConfig(temperature=0.7, top_p=0.9, stop_token_ids=(1,))
    b = SamplingConfig(temperature=1.3, top_p=0.5, stop_token_ids=(2, 3))
    assert a.program_key == b.program_key
    assert SamplingConfig(temperature=0.0, top_k=5).program_key == SamplingConfig(temperature=0.0).program_key


def test_length_buckets_are_powers_of_two_and_three_quarters():
    b = Buckets(min_length=16)
    assert [b.length(n) for n in (1, 16, 17, 24, 25, 33, 49, 96, 97, 128, 129)] == [
        16, 16, 24, 24, 32, 48, 64, 96, 128, 128, 192,
    ]
    assert [b.batch(n) for n in (1, 2, 3, 5, 16, 17)] == [1, 2, 4, 8, 16, 32]


def test_prompts_are_left_padded_with_positions_from_zero():
    packed = pack_prompts([[5, 6, 7], [9]], batch=4, length=5, pad_id=0, vocab_size=10)
    np.testing.assert_array_equal(packed.tokens[:2], [[0, 0, 5, 6, 7], [0, 0, 0, 0, 9]])
    np.testing.assert_array_equal(packed.mask[1], [False, False, False, False, True])
    np.testing.assert_array_equal(packed.positions[0, 2:], [0, 1, 2])
    np.testing.assert_array_equal(packed.positions[1, 4], 0)
    np.testing.assert_array_equal(packed.lengths, [3, 1, 1, 1])
    np.testing.assert_array_equal(packed.live, [True, True, False, False])
    assert packed.mask[2:, -1].all()  # filler rows still attend to one slot


@pytest.mark.parametrize(
    ("prompts", "message"),
    [([], "at least one"), ([[1], []], "empty"), ([[1, 99]], "outside"), ([[1] * 9], "more than")],
)
def test_bad_prompts_are_refused_with_a_reason(prompts, message):
    with pytest.raises(ValueError, match=message):
        pack_prompts(prompts, batch=4, length=8, pad_id=0, vocab_size=10)
