"""The key/value cache: a pytree of fixed-size buffers that jitted prefill and decode steps thread through.

Layout, chosen for CPU/GPU decode speed (measured): one buffer per layer, values ``[batch, kv_heads, slots,
head_dim]`` and keys slot-minor, ``[batch, kv_heads, head_dim, slots]``. A decode step's one query per row then
meets the keys as a multiply over contiguous slots and a sum over ``head_dim``: on the 2-core CPU, 13.6 ms
for 30 layers at batch 16 and 192 slots against 24-30 ms for batched matrix-vector dots over slot-major keys
(BUILD.md). Writing one layer's new keys
never copies another layer's buffer. Donate the cache to the jitted step (``donate_argnums``) so the writes
happen in place.

Slots are shared across the batch: the ``T`` new tokens of every row go to slots ``[index, index + T)``, and
``valid`` marks which slots hold real tokens (False for the left padding of shorter prompts). A query at slot
``i`` attends to the valid slots ``<= i``. The caller keeps ``index + T <= max_len`` (the index is traced, so
it cannot be checked inside jit): XLA clamps an out-of-range write, which would overwrite the last slots. Positions (for RoPE) are given by the caller and are independent of
slots, so left-padded rows keep positions 0, 1, 2, ... for their real tokens.

A cache may also hold a prefix that every row shares, once (``with_shared_prefix``: the sampler's prompts that
begin with the same tokens). Its slots precede all of the rows' own slots; ``valid``, ``index`` and the slot
numbers above then count the rows' own slots only. The prefix's keys are slot-major, ``[1, kv_heads, slots,
head_dim]``, like its values: all rows' queries meet them at once in one product, where dots do well.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct
from jax.sharding import Mesh

from rl_jax.models.config import ModelConfig
from rl_jax.sharding import LogicalRules, sharding_for

# logical axes of one layer's key buffer, value buffer, and of ``valid``
K_LOGICAL_AXES = ("batch", "kv_heads", "head_dim", "length")
V_LOGICAL_AXES = ("batch", "kv_heads", "length", "head_dim")
VALID_LOGICAL_AXES = ("batch", "length")


@struct.dataclass
class KVCache:
    """Per-layer key and value buffers, the slot validity mask, and the next write slot."""

    k: tuple[jax.Array, ...]  # num_layers x [B, KVH, Dh, S] (slot-minor)
    v: tuple[jax.Array, ...]  # num_layers x [B, KVH, S, Dh]
    valid: jax.Array  # bool [B, S]: slot holds a real (non-padding) token
    index: jax.Array  # int32 []: next slot to write, the same for every row
    # A prefix every row shares, held once (``with_shared_prefix``): its slots come before all of the rows' own
    # slots, so every query sees every valid prefix slot. None without one.
    prefix_k: tuple[jax.Array, ...] | None = None  # num_layers x [1, KVH, P, Dh] (slot-major, as values)
    prefix_v: tuple[jax.Array, ...] | None = None
    prefix_valid: jax.Array | None = None  # bool [1, P]

    @classmethod
    def init(
        cls,
        cfg: ModelConfig,
        batch: int,
        max_len: int,
        dtype: jnp.dtype = jnp.float32,
        *,
        mesh: Mesh | None = None,
        rules: LogicalRules | None = None,
    ) -> KVCache:
        """An empty cache of ``max_len`` slots; placed on ``mesh`` by the logical-axis rules (``rules``, else the
        ones in force: batch over data, kv heads over model); a ValueError naming the buffer if a dimension
        does not divide its mesh axes."""
        if batch < 1 or max_len < 1:
            raise ValueError(f"batch and max_len must be >= 1; got batch={batch}, max_len={max_len}")
        kvh, dh = cfg.num_kv_heads, cfg.head_dim

        def buffer(shape: tuple[int, ...], axes: tuple[str, ...], what: str) -> jax.Array:
            return _placed(jnp.zeros(shape, dtype), axes, mesh, rules, what)

        return cls(
            k=tuple(buffer((batch, kvh, dh, max_len), K_LOGICAL_AXES, f"KV cache keys of layer {i}")
                    for i in range(cfg.num_layers)),
            v=tuple(buffer((batch, kvh, max_len, dh), V_LOGICAL_AXES, f"KV cache values of layer {i}")
                    for i in range(cfg.num_layers)),
            valid=_placed(jnp.zeros((batch, max_len), jnp.bool_), VALID_LOGICAL_AXES, mesh, rules,
                          "KV cache validity mask"),
            index=jnp.zeros((), jnp.int32),
        )

    def with_shared_prefix(self, prefix: KVCache) -> KVCache:
        """This (empty) cache with row 0 of ``prefix``'s filled slots as a prefix shared by every row.

        The prefix is held once, not copied per row: attention reads it once for all rows' queries
        (``rl_jax.models.transformer``), which for a long shared prompt is most of a decode step's reads.
        """
        if prefix.prefix_k is not None:
            raise ValueError("the prefix cache has a shared prefix of its own")
        return self.replace(
            prefix_k=tuple(k[:1].transpose(0, 1, 3, 2) for k in prefix.k),  # slot-major: see the module doc
            prefix_v=tuple(v[:1] for v in prefix.v),
            prefix_valid=prefix.valid[:1],
        )

    @property
    def batch(self) -> int:
        return self.valid.shape[0]

    @property
    def max_len(self) -> int:
        return self.valid.shape[1]

    @property
    def num_layers(self) -> int:
        return len(self.k)


def _placed(
    x: jax.Array, logical_axes: tuple[str, ...], mesh: Mesh | None, rules: LogicalRules | None, what: str
) -> jax.Array:
    """``x`` on the mesh by its logical axes (as is without a mesh); inside jit this constrains the layout."""
    if mesh is None:
        return x
    return jax.device_put(x, sharding_for(mesh, logical_axes, x.shape, what, rules))
