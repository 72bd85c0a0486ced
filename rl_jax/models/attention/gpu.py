"""The GPU backend: ``jax.nn.dot_product_attention``, cuDNN's fused flash attention on NVIDIA GPUs.

cuDNN takes the model's token-major layout ([B, T, N, Dh]) and grouped-query attention (fewer key/value heads)
as they are, skips the blocks above the diagonal (``is_causal``) and brings its own backward pass.

Key padding without a mask. Each row's tokens are reordered so that its valid ones come first, in their
order (a stable sort of the padding flags), and the outputs are put back in place afterwards. Then the
causal mask alone is the whole mask: a real query sees exactly the real tokens before it, and every padding
token sits after all of them. RoPE was applied before, so attention does not see where a token was; the
reordering is two gathers of q, k, v and one of the output (the sampler's left padding, the trainer's right
padding and holes inside a row alike), where a key mask would reach cuDNN as an additive [B, 1, T, T] bias
(read in every score block, and given a gradient in the backward pass).

cuDNN computes in bf16 or f16 only: f32 (or f64) compute takes the same function's XLA implementation, so a
model in f32 on a GPU still runs (as einsums, at XLA's speed). ``implementation="xla"`` forces that on any
platform: it is how the wrapper's layout, reordering and GQA handling are tested on CPU.

Over the sampler's cache the CPU backend's XLA paths run (``CpuAttention.over_cache``: masked einsums, a
shared prefix read once, long prompt rests in query chunks that bound memory): plain XLA, correct anywhere;
cuDNN would need the cache in its own layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp

from rl_jax.models.attention.cpu import CpuAttention
from rl_jax.models.attention.interface import AttentionBackend, Prefix

_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def valid_first(key_valid: jax.Array) -> jax.Array:
    """Per row of ``key_valid [B, T]``, the token order [B, T] that puts its valid tokens first, in order."""
    return jnp.argsort(~key_valid, axis=1, stable=True)


def _reorder(x: jax.Array, order: jax.Array) -> jax.Array:
    """``x [B, T, ...]`` with each row's tokens taken in ``order [B, T]``."""
    return jnp.take_along_axis(x, order.reshape(*order.shape, *([1] * (x.ndim - 2))), axis=1)


@dataclass(frozen=True)
class CudnnAttention(AttentionBackend):
    name: ClassVar[str] = "cudnn"
    implementation: Literal["cudnn", "xla"] = "cudnn"
    attention_chunk: int = 1024  # over the cache: longer query blocks attend chunk by chunk

    def causal(self, q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array, dtype: Any) -> jax.Array:
        implementation = self.implementation if jnp.dtype(dtype) in _CUDNN_DTYPES else "xla"
        order = valid_first(key_valid)
        q, k, v = (_reorder(x.astype(dtype), order) for x in (q, k, v))
        out = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)
        return _reorder(out, jnp.argsort(order, axis=1))  # each output back at its token's place

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
        paths = CpuAttention(attention_chunk=self.attention_chunk)
        return paths.over_cache(q, keys, values, query_slots, key_valid, prefix, dtype)
