"""The TPU backend: Pallas splash attention (``jax.experimental.pallas.ops.tpu.splash_attention``).

Splash attention is the TPU flash-attention kernel that skips masked blocks (here: those above the diagonal),
with its own backward kernels. Its kernel works on one sequence ([heads, T, Dh]); grouped-query attention is
its multi-query form (G query heads over one key/value head) mapped over the key/value heads, and the batch
is mapped over too. Key padding goes in as segment ids: a valid token is segment 1, a padding token 0, and a
query sees keys of its own segment only, so every real query sees exactly the valid keys up to it (a padding
query sees padding keys; its output is undefined, as the interface says). T is padded to whole blocks with
padding tokens.

``interpret=True`` runs the same kernels through Pallas' interpreter on any platform: how they are tested on
CPU. Over the sampler's cache the CPU backend's XLA paths run, as on GPU (``gpu.py`` says why).

The kernel is written for one device: under a mesh (``jax.set_mesh``) it runs inside a ``shard_map``, each
device on its shard of the batch and the heads as the logical-axis rules place them (``rl_jax.sharding``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from rl_jax.models.attention.cpu import CpuAttention
from rl_jax.models.attention.interface import AttentionBackend, Prefix, from_groups, to_groups
from rl_jax.sharding import logical_to_spec

# the lane width: splash's blocks are whole multiples of it
_LANES = 128


@functools.lru_cache(maxsize=32)
def _splash_kernel(length: int, group: int, block: int, interpret: bool) -> Any:
    """A causal multi-query splash kernel over ``length`` tokens for ``group`` query heads, built once per
    shape (the mask's block structure is computed on the host) and outside any trace: its block tables are
    constants, which a cached kernel built inside one trace would leak into the next."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    mask = masks.MultiHeadMask([masks.CausalMask((length, length)) for _ in range(group)])
    blocks = splash.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    with jax.ensure_compile_time_eval():
        return splash.make_splash_mqa_single_device(mask, block_sizes=blocks, interpret=interpret)


@dataclass(frozen=True)
class SplashAttention(AttentionBackend):
    name: ClassVar[str] = "pallas"
    block: int = 512  # query and key block; shorter sequences take one block of their padded length
    interpret: bool = False
    attention_chunk: int = 1024  # over the cache: longer query blocks attend chunk by chunk

    def causal(self, q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array, dtype: Any) -> jax.Array:
        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty:
            return self._one_device(q, k, v, key_valid, dtype)
        # under a mesh the kernel runs per shard (XLA cannot partition a kernel): the batch over its axes and
        # the heads over theirs, as the sharding rules place the projections' outputs; each shard's query
        # heads are the groups of its key/value heads when both kinds of heads split over the same axes
        q_spec = logical_to_spec(("batch", "length", "heads", "head_dim"), mesh_axis_names=mesh.axis_names)
        kv_spec = logical_to_spec(
            ("batch", "length", "kv_heads", "head_dim"), mesh_axis_names=mesh.axis_names
        )
        if q_spec[1] is not None or q_spec[3] is not None or q_spec[2] != kv_spec[2]:
            raise ValueError(
                "splash attention splits the batch and the heads only, query and key/value heads over the "
                f"same mesh axes; the sharding rules give queries {q_spec} and keys {kv_spec}"
            )
        return jax.shard_map(
            functools.partial(self._one_device, dtype=dtype),
            mesh=mesh,
            in_specs=(q_spec, kv_spec, kv_spec, PartitionSpec(q_spec[0], None)),
            out_specs=q_spec,
            check_vma=False,
        )(q, k, v, key_valid)

    def _one_device(
        self, q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array, dtype: Any
    ) -> jax.Array:
        from jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_kernel import SegmentIds

        _, t, h, dh = q.shape
        kvh = k.shape[2]
        block = min(self.block, -(-t // _LANES) * _LANES)
        padded = -(-t // block) * block
        pad = ((0, 0), (0, padded - t), (0, 0), (0, 0))
        # splash does not scale the scores: the queries come scaled
        q = jnp.pad((q * jnp.asarray(dh**-0.5, q.dtype)).astype(dtype), pad)
        k, v = (jnp.pad(x.astype(dtype), pad) for x in (k, v))
        segments = jnp.pad(key_valid, ((0, 0), (0, padded - t))).astype(jnp.int32)
        kernel = _splash_kernel(padded, h // kvh, block, self.interpret)

        def one_sequence(q: jax.Array, k: jax.Array, v: jax.Array, segment: jax.Array) -> jax.Array:
            # q [KVH, G, T, Dh], k and v [KVH, T, Dh]: multi-query attention per key/value head
            ids = SegmentIds(q=segment, kv=segment)
            return jax.vmap(lambda qh, kh, vh: kernel(qh, kh, vh, segment_ids=ids))(q, k, v)

        out = jax.vmap(one_sequence)(
            to_groups(q, kvh), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), segments
        )
        return from_groups(out)[:, :t]

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
