"""The XLA reference: attention as written in a textbook, on every platform, the oracle the other backends are
tested against. Whole score matrices, a boolean mask, a softmax in f32, differentiated by JAX.

A query that sees no valid key gets output 0 (its probabilities are masked to zero after the softmax).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from rl_jax.models.attention.interface import (
    AttentionBackend,
    Prefix,
    accumulation_dtype,
    from_groups,
    to_groups,
)


def _masked_softmax_attend(
    qg: jax.Array, keys: jax.Array, values: jax.Array, visible: jax.Array, dtype: Any
) -> jax.Array:
    """qg [B, KVH, G, T, Dh] over keys and values [B, KVH, S, Dh] where ``visible [B, T, S]``."""
    acc = accumulation_dtype(dtype)
    scores = jnp.einsum("bkgtd,bksd->bkgts", qg, keys, preferred_element_type=acc) * (qg.shape[-1] ** -0.5)
    visible = visible[:, None, None]
    scores = jnp.where(visible, scores, jnp.finfo(acc).min)
    probs = jax.nn.softmax(scores, axis=-1) * visible  # a row with no visible key: all zero
    return jnp.einsum("bkgts,bksd->bkgtd", probs.astype(dtype), values, preferred_element_type=acc).astype(
        dtype
    )


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array, dtype: Any) -> jax.Array:
    """q [B, T, H, Dh] over k, v [B, T, KVH, Dh]: query t sees valid keys s <= t. -> [B, T, H, Dh]."""
    t = q.shape[1]
    causal = jnp.arange(t)[None, :] <= jnp.arange(t)[:, None]
    visible = causal[None] & key_valid[:, None, :]
    out = _masked_softmax_attend(
        to_groups(q, k.shape[2]), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), visible, dtype
    )
    return from_groups(out)


def attention_over_cache(
    q: jax.Array,
    keys: jax.Array,
    values: jax.Array,
    query_slots: jax.Array,
    key_valid: jax.Array,
    prefix: Prefix | None,
    dtype: Any,
) -> jax.Array:
    """q [B, T, H, Dh] at ``query_slots [T]`` over a cache (keys [B, KVH, Dh, S] slot-minor, values
    [B, KVH, S, Dh], ``key_valid [B, S]``), after a shared prefix if given (copied to every row here: the
    oracle does not economise). -> [B, T, H, Dh]."""
    b, kvh, dh, s = keys.shape
    keys = keys.transpose(0, 1, 3, 2).astype(dtype)
    values = values.astype(dtype)
    own_slots = jnp.arange(s)
    visible = (own_slots[None, :] <= query_slots[:, None])[None] & key_valid[:, None, :]  # [B, T, S]
    if prefix is not None:
        prefix_k, prefix_v, prefix_valid = prefix
        p = prefix_k.shape[2]
        keys = jnp.concatenate([jnp.broadcast_to(prefix_k.astype(dtype), (b, kvh, p, dh)), keys], axis=2)
        values = jnp.concatenate([jnp.broadcast_to(prefix_v.astype(dtype), (b, kvh, p, dh)), values], axis=2)
        prefix_visible = jnp.broadcast_to(prefix_valid[:, None, :], (b, query_slots.shape[0], p))
        visible = jnp.concatenate([prefix_visible, visible], axis=2)
    return from_groups(_masked_softmax_attend(to_groups(q, kvh), keys, values, visible, dtype))


@dataclass(frozen=True)
class ReferenceAttention(AttentionBackend):
    """Plain XLA on any platform: the slowest and the simplest."""

    name: ClassVar[str] = "reference"

    def causal(self, q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array, dtype: Any) -> jax.Array:
        return causal_attention(q, k, v, key_valid, dtype)

    def over_cache(
        self,
        q: jax.Array,
        keys: jax.Array,
        values: jax.Array,
        query_slots: jax.Array,
        key_valid: jax.Array,
        prefix: Prefix | None,
        dtype: Any,
    ) -> jax.Array:
        return attention_over_cache(q, keys, values, query_slots, key_valid, prefix, dtype)
