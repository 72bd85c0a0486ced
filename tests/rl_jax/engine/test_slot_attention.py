"""The engine's attention pieces against the whole-matrix softmax: the key-tiled online softmax over a long region
(the shared prefix) and the keys-first decode form give ``_parts``' attention, whatever the region's length
against the tile and however many of its keys a row sees."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax.engine import slots
from rl_jax.models.attention.cpu import attention_parts

N, KVH, Q, DH = 2, 3, 5, 16


def _normalised(parts):
    summed, _, total = parts
    return summed / total[..., None]


def _inputs(length: int, seed: int = 0):
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (N, KVH, Q, DH), jnp.float32)
    k = jax.random.normal(keys[1], (N, KVH, length, DH), jnp.float32) * 2.0
    v = jax.random.normal(keys[2], (N, KVH, length, DH), jnp.float32)
    return q, k, v


@pytest.mark.parametrize("length", [700, 512, 100])  # a clamped last tile, whole tiles, one short tile
@pytest.mark.parametrize("seen", [(1, 700), (255, 256), (257, 444), (600, 3)])
def test_tiled_parts_equal_the_whole_softmax(length, seen):
    seen = np.minimum(np.asarray(seen, np.int32), length)
    q, k, v = _inputs(length)
    whole_mask = jnp.broadcast_to((jnp.arange(length)[None, :] < seen[:, None])[:, None, :], (N, Q, length))
    want = _normalised(slots._parts(q, k, v, whole_mask, jnp.float32))

    def visible(key_slots):
        return jnp.broadcast_to((key_slots[None, :] < seen[:, None])[:, None, :], (N, Q, key_slots.shape[0]))

    tiles = jax.jit(lambda m: slots._tiles_for(m, length))(jnp.int32(seen.max()))  # a traced tile count
    got = jax.jit(lambda q, k, v, t: _normalised(slots._tiled_parts(q, k, v, visible, t, jnp.float32)))(q, k, v, tiles)
    chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)


def test_tiled_parts_read_only_their_tiles():
    """Keys past the last tile asked for do not reach the result, even unmasked (the prefix fill reads only the
    slots filled so far)."""
    length = 3 * slots.KEY_TILE
    q, k, v = _inputs(length, seed=1)
    poisoned_k = k.at[:, :, slots.KEY_TILE:].set(jnp.nan)
    poisoned_v = v.at[:, :, slots.KEY_TILE:].set(jnp.nan)

    def everything(key_slots):
        return jnp.ones((N, Q, key_slots.shape[0]), jnp.bool_)

    got = _normalised(slots._tiled_parts(q, poisoned_k, poisoned_v, everything, 1, jnp.float32))
    want = _normalised(slots._parts(q, k[:, :, : slots.KEY_TILE], v[:, :, : slots.KEY_TILE],
                                    jnp.ones((N, Q, slots.KEY_TILE), jnp.bool_), jnp.float32))
    chex.assert_tree_all_finite(got)
    chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)


def test_a_row_that_sees_nothing_weighs_nothing_in_the_merge():
    q, k, v = _inputs(300, seed=2)
    own = slots._parts(q, k, v, jnp.ones((N, Q, 300), jnp.bool_), jnp.float32)

    def nothing(key_slots):
        return jnp.zeros((N, Q, key_slots.shape[0]), jnp.bool_)

    empty = slots._tiled_parts(q, k * 5, v * 5, nothing, 2, jnp.float32)
    chex.assert_trees_all_close(slots._merged(empty, own), _normalised(own), atol=1e-6)
    none = slots._tiled_parts(q, k, v, nothing, 0, jnp.float32)  # no tile at all (a row without a prefix)
    chex.assert_trees_all_close(slots._merged(none, own), _normalised(own), atol=1e-6)


def test_the_decode_steps_keys_first_parts_equal_parts():
    """The decode step's parts (``attention_parts``, keys first) merge with the tiled prefix parts as ``_parts``
    do: the same unnormalised sums, maxima and exp-sums."""
    q, k, v = _inputs(333, seed=3)
    mask = jax.random.bernoulli(jax.random.key(4), 0.6, (N, Q, 333)).at[:, :, 0].set(True)
    for got, want in zip(attention_parts(q, k, v, mask, jnp.float32), slots._parts(q, k, v, mask, jnp.float32),
                         strict=True):
        chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)
