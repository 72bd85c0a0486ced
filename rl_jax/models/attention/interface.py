"""What an attention backend implements: the three forms of attention the model and the sampler call.

Every form takes the token-major layout the projections produce (queries [B, T, H, Dh], keys and values
[B, T, KVH, Dh] with H a multiple of KVH: grouped-query attention) and returns [B, T, H, Dh] in the compute
dtype, with the softmax and its sums in at least f32:

* ``causal``: T tokens over themselves without a cache (training, scoring): causal, keys masked by
  ``key_valid [B, T]``, differentiable in q, k and v.
* ``prefill``: the same over a prompt written into an empty cache (generation: no gradient needed).
* ``over_cache``: queries at ``query_slots [T]`` over the sampler's cache (keys slot-minor [B, KVH, Dh, S],
  values [B, KVH, S, Dh], ``key_valid [B, S]``), each seeing the valid slots up to its own, and optionally a
  prefix every row shares, held once (keys and values [1, KVH, P, Dh], valid [1, P]), before the rows' slots.

A padding token's query has no defined output: no real token reads it, no loss counts it, and backends
differ there (zeros, an average of masked keys or of valid ones). Compare backends on the real rows.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

# a shared prefix's keys, values [1, KVH, P, Dh] and validity [1, P]
Prefix = tuple[jax.Array, jax.Array, jax.Array]


# Names on what the written-out attentions (the CPU backend's causal tiles, the flash loops, tree training's
# context attention) save for their backward passes: the output [B, H, T, Dh] and the log-normalisers
# [B, H, T]. The remat policy "attention_saveable" keeps exactly these, so a rematerialized layer's backward pass
# reruns the projections and the MLP but not the attention's forward loops, its costliest part on long rows.
ATTENTION_OUT = "attention_out"
ATTENTION_LSE = "attention_lse"


def named_residuals(out: jax.Array, lse: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``out`` and ``lse`` tagged with ``ATTENTION_OUT`` and ``ATTENTION_LSE`` for remat policies (an identity
    otherwise)."""
    return checkpoint_name(out, ATTENTION_OUT), checkpoint_name(lse, ATTENTION_LSE)


def accumulation_dtype(dtype: Any) -> Any:
    """Accumulation dtype: at least f32 (f64 when computing in f64, as exactness tests do)."""
    return jnp.promote_types(dtype, jnp.float32)


def to_groups(q: jax.Array, kv_heads: int) -> jax.Array:
    """Queries [B, T, H, Dh] -> [B, KVH, G, T, Dh], each key/value head's G query heads together."""
    b, t, h, dh = q.shape
    return q.reshape(b, t, kv_heads, h // kv_heads, dh).transpose(0, 2, 3, 1, 4)


def from_groups(out: jax.Array) -> jax.Array:
    """[B, KVH, G, T, Dh] -> [B, T, H, Dh]: ``to_groups`` undone."""
    b, kvh, g, t, dh = out.shape
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, kvh * g, dh)


@dataclass(frozen=True)
class AttentionBackend(abc.ABC):
    """One implementation of the three forms. Frozen and hashable: a static setting of the traced program.

    ``prefill`` defaults to ``causal``: the same attention, whose backward pass a prefill never runs.
    """

    name: ClassVar[str]

    @abc.abstractmethod
    def causal(self, q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array, dtype: Any) -> jax.Array: ...

    def prefill(
        self, q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array, dtype: Any
    ) -> jax.Array:
        return self.causal(q, k, v, key_valid, dtype)

    @abc.abstractmethod
    def over_cache(
        self,
        q: jax.Array,
        keys: jax.Array,
        values: jax.Array,
        query_slots: jax.Array,
        key_valid: jax.Array,
        prefix: Prefix | None,
        dtype: Any,
    ) -> jax.Array: ...
