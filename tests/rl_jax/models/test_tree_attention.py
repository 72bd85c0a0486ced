"""The tree segments' attention (ancestors visible, own tokens causal) against a plain masked softmax."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax.models.attention.flash import context_attention


def _reference(q, ctx_k, ctx_v, ctx_valid, k, v, valid, segment=None):
    """Masked softmax over [ancestors | own] keys, GQA by repetition; queries with no visible key give 0. With
    ``segment``, an own key is seen by its segment's queries only."""
    t, h, dh = q.shape[1:]
    group = h // k.shape[2]
    keys = jnp.repeat(jnp.concatenate([ctx_k, k], axis=1), group, axis=2)
    values = jnp.repeat(jnp.concatenate([ctx_v, v], axis=1), group, axis=2)
    p = ctx_k.shape[1]
    own = jnp.arange(t)
    causal = jnp.concatenate([jnp.ones((t, p), bool), own[None, :] <= own[:, None]], axis=1)
    mask = causal[None] & jnp.concatenate([ctx_valid, valid], axis=1)[:, None, :]  # [N, T, S]
    if segment is not None:
        same = segment[:, :, None] == segment[:, None, :]  # [N, T, T]
        mask = mask & jnp.concatenate([jnp.ones((q.shape[0], t, p), bool), same], axis=2)
    scores = jnp.einsum("nthd,nshd->nhts", q, keys) * dh**-0.5
    scores = jnp.where(mask[:, None], scores, -jnp.inf)
    probs = jnp.nan_to_num(jax.nn.softmax(scores, axis=-1))
    return jnp.einsum("nhts,nshd->nthd", probs, values)


def _inputs(seed: int, n: int, p: int, t: int, h: int, kvh: int, dh: int):
    rng = np.random.default_rng(seed)
    f = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
    ctx_valid = np.ones((n, p), bool)
    ctx_valid[:, p - 3:] = False  # a level padded at its end
    ctx_valid[1, 5:9] = False
    valid = np.ones((n, t), bool)
    valid[0, t - 4:] = False  # a row shorter than the longest
    return (f(n, t, h, dh), f(n, p, kvh, dh), f(n, p, kvh, dh), jnp.asarray(ctx_valid),
            f(n, t, kvh, dh), f(n, t, kvh, dh), jnp.asarray(valid))


@pytest.mark.parametrize(("p", "t", "tile"), [(37, 21, 8), (32, 16, 16), (5, 40, 16), (70, 7, 32)])
def test_forward_and_gradients_equal_masked_softmax(p: int, t: int, tile: int) -> None:
    args = _inputs(p + t, n=3, p=p, t=t, h=6, kvh=2, dh=8)
    q, ctx_k, ctx_v, ctx_valid, k, v, valid = args
    row_ok = valid[..., None, None]  # padding queries' outputs are unspecified-but-finite: not compared
    weights = jnp.asarray(np.random.default_rng(0).normal(size=q.shape), jnp.float32) * row_ok

    def loss(fn, q, ctx_k, ctx_v, k, v):
        return jnp.sum(fn(q, ctx_k, ctx_v, ctx_valid, k, v, valid) * weights)

    ours = lambda *a: context_attention(*a, tile, jnp.float32)  # noqa: E731
    chex.assert_trees_all_close(
        context_attention(*args, tile, jnp.float32) * row_ok, _reference(*args) * row_ok, atol=2e-5, rtol=2e-5
    )
    grads = jax.grad(lambda *a: loss(ours, *a), argnums=range(5))(q, ctx_k, ctx_v, k, v)
    expected = jax.grad(lambda *a: loss(_reference, *a), argnums=range(5))(q, ctx_k, ctx_v, k, v)
    chex.assert_trees_all_close(grads, expected, atol=5e-5, rtol=5e-5)


def test_invalid_ancestor_keys_get_no_gradient_and_do_not_change_the_output() -> None:
    q, ctx_k, ctx_v, ctx_valid, k, v, valid = _inputs(1, n=2, p=24, t=10, h=4, kvh=2, dh=8)
    out = context_attention(q, ctx_k, ctx_v, ctx_valid, k, v, valid, 8, jnp.float32)
    noisy_k = jnp.where(ctx_valid[..., None, None], ctx_k, 1e3)
    chex.assert_trees_all_close(
        context_attention(q, noisy_k, ctx_v, ctx_valid, k, v, valid, 8, jnp.float32), out, atol=1e-6
    )
    d_ctx_k = jax.grad(
        lambda c: jnp.sum(context_attention(q, c, ctx_v, ctx_valid, k, v, valid, 8, jnp.float32))
    )(ctx_k)
    chex.assert_trees_all_equal(jnp.where(ctx_valid[..., None, None], 0.0, d_ctx_k), jnp.zeros_like(d_ctx_k))


@pytest.mark.parametrize(("p", "t", "tile"), [(37, 30, 8), (16, 40, 16), (0, 24, 8)])
def test_packed_rows_see_their_own_segment_and_every_ancestor(p: int, t: int, tile: int) -> None:
    """Several rows end to end in one lane (``segment`` ids): each query sees the valid ancestors and the own
    keys of its segment only; forward and gradients equal the masked softmax, and the output of a segment does
    not change when another segment's tokens do."""
    q, ctx_k, ctx_v, ctx_valid, k, v, valid = _inputs(p + t + 1, n=3, p=p, t=t, h=6, kvh=2, dh=8)
    rng = np.random.default_rng(t)
    segment = np.zeros((3, t), np.int32)
    for row in range(3):  # cut points anywhere, tile boundaries or not; lane 2 holds a single row
        cuts = np.sort(rng.choice(np.arange(1, t), 2, replace=False)) if row < 2 else []
        for c in cuts:
            segment[row, c:] += 1
    segment = jnp.asarray(segment)
    row_ok = valid[..., None, None]
    weights = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32) * row_ok

    def ours(q, ctx_k, ctx_v, k, v):
        return context_attention(q, ctx_k, ctx_v, ctx_valid, k, v, valid, tile, jnp.float32, segment=segment)

    def reference(q, ctx_k, ctx_v, k, v):
        return _reference(q, ctx_k, ctx_v, ctx_valid, k, v, valid, segment)

    chex.assert_trees_all_close(ours(q, ctx_k, ctx_v, k, v) * row_ok, reference(q, ctx_k, ctx_v, k, v) * row_ok,
                                atol=2e-5, rtol=2e-5)
    grads = jax.grad(lambda *a: jnp.sum(ours(*a) * weights), argnums=range(5))(q, ctx_k, ctx_v, k, v)
    expected = jax.grad(lambda *a: jnp.sum(reference(*a) * weights), argnums=range(5))(q, ctx_k, ctx_v, k, v)
    chex.assert_trees_all_close(grads, expected, atol=5e-5, rtol=5e-5)
    # lane 0's first segment: its output ignores the keys and values of the segments after it
    first = np.asarray(segment[0] == 0)
    later = jnp.asarray(~first)[None, :, None, None]
    noisy = ours(q, ctx_k, ctx_v, jnp.where(later, 1e2, k), jnp.where(later, -1e2, v))
    chex.assert_trees_all_close(noisy[0, first], ours(q, ctx_k, ctx_v, k, v)[0, first], atol=1e-6)
    # and without the ids the rows would see each other: the test can tell
    mixed = context_attention(q, ctx_k, ctx_v, ctx_valid, k, v, valid, tile, jnp.float32)
    assert not np.allclose(np.asarray(mixed * row_ok), np.asarray(reference(q, ctx_k, ctx_v, k, v) * row_ok),
                           atol=1e-3)


def test_own_tiles_no_query_of_a_tile_can_see_are_not_visited() -> None:
    """A lane of two rows of two tiles each: the second row's query tiles skip the first row's key tiles
    altogether. Shown with NaN values there, which a masked-but-visited tile would carry into the output
    (0 x NaN), forward and backward."""
    q, ctx_k, ctx_v, ctx_valid, k, v, valid = _inputs(3, n=2, p=8, t=32, h=4, kvh=2, dh=8)
    valid = jnp.ones_like(valid)
    segment = jnp.asarray(np.repeat([[1, 2], [1, 2]], 16, axis=1), jnp.int32)  # both lanes alike
    poisoned = v.at[:, :16].set(jnp.nan)

    def second_row(v):
        out = context_attention(q, ctx_k, ctx_v, ctx_valid, k, v, valid, 8, jnp.float32, segment=segment)
        return out[:, 16:]

    clean = _reference(q, ctx_k, ctx_v, ctx_valid, k, v, valid, segment)[:, 16:]
    chex.assert_trees_all_close(second_row(poisoned), clean, atol=2e-5, rtol=2e-5)
    d_q = jax.grad(lambda q_: jnp.sum(context_attention(
        q_, ctx_k, ctx_v, ctx_valid, k, poisoned, valid, 8, jnp.float32, segment=segment)[:, 16:]))(q)
    assert np.isfinite(np.asarray(d_q[:, 16:])).all()  # the first row's own outputs are NaN: theirs too
    # the first row does read those values
    first = context_attention(q, ctx_k, ctx_v, ctx_valid, k, poisoned, valid, 8, jnp.float32, segment=segment)
    assert np.isnan(np.asarray(first[:, :16])).all()
