"""The GPU backend: ``jax.nn.dot_product_attention``, cuDNN's fused flash attention on NVIDIA GPUs.

cuDNN takes the model's token-major layout ([B, T, N, Dh]) and grouped-query attention (fewer key/value heads)
as they are, skips the blocks above the diagonal (``is_causal``) and brings its own backward pass. The key
mask goes in as a [B, 1, T, T] boolean mask, which JAX hands to cuDNN as an additive bias: exact for any
padding (left, right, inside a row), at the price of reading one bias block per score block.

cuDNN computes in bf16 or f16 only: f32 (or f64) compute takes the same function's XLA implementation, so a
model in f32 on a GPU still runs (as einsums, at XLA's speed). ``implementation="xla"`` forces that on any
platform: it is how the wrapper's layout and masking are tested on CPU.

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


@dataclass(frozen=True)
class CudnnAttention(AttentionBackend):
    name: ClassVar[str] = "cudnn"
    implementation: Literal["cudnn", "xla"] = "cudnn"

    def causal(self, q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array, dtype: Any) -> jax.Array:
        b, t = q.shape[:2]
        q, k, v = (x.astype(dtype) for x in (q, k, v))
        implementation = self.implementation if jnp.dtype(dtype) in _CUDNN_DTYPES else "xla"
        mask = jnp.broadcast_to(key_valid[:, None, None, :], (b, 1, t, t))
        return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation=implementation)

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
