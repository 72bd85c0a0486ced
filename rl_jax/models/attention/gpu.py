"""The GPU backend: ``jax.nn.dot_product_attention``, cuDNN's fused flash attention on NVIDIA GPUs.

cuDNN takes the model's token-major layout ([B, T, N, Dh]) and grouped-query attention (fewer key/value heads)
as they are, skips the blocks above the diagonal (``is_causal``) and brings its own backward pass.

Key padding. A row padded at its end only (the trainer's layout: ``rl_jax.train.batch`` right-pads) needs no
mask at all: under the causal mask no real query reaches a padding key, which all come after it. Training
checks that on the device and then runs cuDNN with the causal mask alone; a batch with padding anywhere else
takes the same function's XLA implementation with the key mask (exact, slower): cuDNN would take that mask as
an additive [B, 1, T, T] bias and compute the bias's gradient too. A prefill (the sampler's left-padded
prompts, no backward pass) hands cuDNN the mask as that bias.

cuDNN computes in bf16 or f16 only: f32 (or f64) compute takes the XLA implementation, so a model in f32 on a
GPU still runs (as einsums, at XLA's speed). ``implementation="xla"`` forces that on any platform: it is how
the wrapper's layout, masking and branches are tested on CPU.

Over the sampler's cache the reference's einsums run: decode is a memory-bound read of the cache, which XLA
fuses well on GPUs, and cuDNN would need the cache in its own layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp

from rl_jax.models.attention.interface import AttentionBackend, Prefix
from rl_jax.models.attention.reference import attention_over_cache

_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def padded_at_the_end_only(key_valid: jax.Array) -> jax.Array:
    """True (a device scalar) if no row of ``key_valid [B, T]`` has a valid key after an invalid one."""
    return jnp.all(key_valid[:, :-1] | ~key_valid[:, 1:])


@dataclass(frozen=True)
class CudnnAttention(AttentionBackend):
    name: ClassVar[str] = "cudnn"
    implementation: Literal["cudnn", "xla"] = "cudnn"

    def _implementation(self, dtype: Any) -> Literal["cudnn", "xla"]:
        return self.implementation if jnp.dtype(dtype) in _CUDNN_DTYPES else "xla"

    def causal(self, q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array, dtype: Any) -> jax.Array:
        q, k, v = (x.astype(dtype) for x in (q, k, v))
        fast = self._implementation(dtype)

        def causal_only(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
            return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=fast)

        def masked(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
            return jax.nn.dot_product_attention(
                q, k, v, mask=_key_mask(key_valid, q.shape[1]), is_causal=True, implementation="xla"
            )

        return jax.lax.cond(padded_at_the_end_only(key_valid), causal_only, masked, q, k, v)

    def prefill(
        self, q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array, dtype: Any
    ) -> jax.Array:
        q, k, v = (x.astype(dtype) for x in (q, k, v))
        return jax.nn.dot_product_attention(
            q,
            k,
            v,
            mask=_key_mask(key_valid, q.shape[1]),
            is_causal=True,
            implementation=self._implementation(dtype),
        )

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


def _key_mask(key_valid: jax.Array, t: int) -> jax.Array:
    """[B, 1, T, T]: every query sees the valid keys (the causal mask is applied on top)."""
    return jnp.broadcast_to(key_valid[:, None, None, :], (key_valid.shape[0], 1, t, t))
