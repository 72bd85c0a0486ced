"""Decoder-only transformer in Flax NNX for the Llama and Qwen2/Qwen3 families.

GQA attention with RoPE (default, linear or llama3 scaling), RMSNorm, SwiGLU; optional QKV bias (Qwen2) and
QK-norm (Qwen3); tied or untied embeddings. Numerics follow transformers' PyTorch code (RMSNorm in f32,
softmax in f32, logits in f32, RoPE angles in f32, silu in torch's form), so f32 logits agree to ~2e-6 on small
random models and to <1e-4 on SmolLM2-135M, whose residual stream carries activations near 25,000.

    logits, cache = model(tokens, positions, attention_mask=None, cache=None)   # logits [B, T, V] f32
    hidden, cache = model.forward_hidden(tokens, positions, attention_mask, cache)  # [B, T, D] after final norm
    logits = model.logits(hidden)             # any leading shape, e.g. only the last position when sampling
    h = model.hidden(tokens, positions, attention_mask)   # training: log-probs via h @ model.unembedding().T

Attention is a backend's (``rl_jax.models.attention``): XLA:CPU's tuned paths on CPU, cuDNN on GPU, Pallas
splash attention on TPU, or the XLA reference, picked by platform unless ``attention_backend`` names one. Without
a cache (training, scoring) the layers call its causal form; with one, its prefill (into an empty cache) or its
attention over the cache.

Layers are stored one of two ways (``Transformer.scan``). Unrolled (the default): a module per layer, each
layer's weights their own buffers, run by a Python loop inside ``jit``; on CPU this decodes ~3x faster than
``lax.scan`` over stacked weights (scan slices copy the weights every step), so the sampler and the engine run
this layout. Scanned (``scan=True``, training): one ``LayerStack`` holding each weight kind stacked over the
layers (one ``[L, ...]`` array with a leading ``layers`` logical axis), run without a cache as one ``lax.scan``:
the program, the gradient and the optimizer see a dozen weight arrays whatever the depth, so compile time stays
flat with depth. ``model.scan = True / False`` converts in place; ``stack_layer_state`` and
``unstack_layer_state`` convert a parameter (or gradient) state. Every parameter carries ``logical_axes``
metadata; ``rl_jax.sharding`` maps them onto a mesh.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rl_jax.models.attention import AttentionBackend, select_backend
from rl_jax.models.attention.interface import ATTENTION_LSE, ATTENTION_OUT
from rl_jax.models.cache import KVCache
from rl_jax.models.config import ModelConfig
from rl_jax.sharding import LOGICAL_AXES_KEY, constrain

_INIT_STD = 0.02  # transformers' default initializer_range


def _param(rngs: nnx.Rngs | None, shape: tuple[int, ...], axes: tuple[str, ...], dtype: Any, init: str) -> nnx.Param:
    if init == "ones":
        value = jnp.ones(shape, dtype)
    elif init == "zeros":
        value = jnp.zeros(shape, dtype)
    else:
        assert rngs is not None
        value = (jax.random.normal(rngs.params(), shape, jnp.float32) * _INIT_STD).astype(dtype)
    return nnx.Param(value, **{LOGICAL_AXES_KEY: axes})


def _acc_dtype(dtype: Any) -> Any:
    """Accumulation dtype: at least f32 (f64 when computing in f64, as exactness tests do)."""
    return jnp.promote_types(dtype, jnp.float32)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """RMSNorm computed in (at least) f32 and cast back, as transformers does (weight applied after)."""
    xf = x.astype(_acc_dtype(x.dtype))
    normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return scale.astype(x.dtype) * normed.astype(x.dtype)


def rope_tables(cfg: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos and sin [B, T, head_dim] in f32 for integer positions [B, T] (half-split layout, as HF).

    Always f32, whatever the compute dtype: transformers computes the angles in f32 too, and exact
    agreement of the angles is what makes the two implementations agree.
    """
    inv_freq = jnp.asarray(cfg.rope_inv_freq(), dtype=jnp.float32)
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate x [B, T, N, Dh] by cos/sin [B, T, Dh]."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin


class DecoderLayer(nnx.Module):
    """Pre-norm attention block and SwiGLU MLP block, each with a residual connection."""

    def __init__(
        self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype: Any, param_dtype: Any, attention_backend: str = "auto"
    ):
        d, f, h, kv, dh = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.cfg = cfg
        self.dtype = dtype
        # a name from rl_jax.models.attention.BACKEND_NAMES ("auto": by platform), resolved when traced
        self.attention_backend = attention_backend
        p = param_dtype
        self.attn_norm = _param(None, (d,), ("norm",), p, "ones")
        self.wq = _param(rngs, (d, h, dh), ("embed", "heads", "head_dim"), p, "normal")
        self.wk = _param(rngs, (d, kv, dh), ("embed", "kv_heads", "head_dim"), p, "normal")
        self.wv = _param(rngs, (d, kv, dh), ("embed", "kv_heads", "head_dim"), p, "normal")
        self.wo = _param(rngs, (h, dh, d), ("heads", "head_dim", "embed"), p, "normal")
        if cfg.attention_bias:
            self.bq = _param(rngs, (h, dh), ("heads", "head_dim"), p, "normal")
            self.bk = _param(rngs, (kv, dh), ("kv_heads", "head_dim"), p, "normal")
            self.bv = _param(rngs, (kv, dh), ("kv_heads", "head_dim"), p, "normal")
        else:
            self.bq = self.bk = self.bv = None
        if cfg.qk_norm:
            self.q_norm = _param(None, (dh,), ("norm",), p, "ones")
            self.k_norm = _param(None, (dh,), ("norm",), p, "ones")
        else:
            self.q_norm = self.k_norm = None
        self.mlp_norm = _param(None, (d,), ("norm",), p, "ones")
        self.w_gate = _param(rngs, (d, f), ("embed", "mlp"), p, "normal")
        self.w_up = _param(rngs, (d, f), ("embed", "mlp"), p, "normal")
        self.w_down = _param(rngs, (f, d), ("mlp", "embed"), p, "normal")
        if cfg.mlp_bias:
            self.b_gate = _param(rngs, (f,), ("mlp",), p, "normal")
            self.b_up = _param(rngs, (f,), ("mlp",), p, "normal")
            self.b_down = _param(rngs, (d,), ("norm",), p, "normal")
        else:
            self.b_gate = self.b_up = self.b_down = None

    def _w(self, p: nnx.Param | None) -> jax.Array | None:
        return None if p is None else p[...].astype(self.dtype)

    def __call__(
        self,
        x: jax.Array,  # [B, T, D]
        cos: jax.Array,
        sin: jax.Array,
        query_slots: jax.Array,  # int32 [T]: the slot of each query (it sees valid key slots <= its own)
        key_valid: jax.Array,  # bool [B, S]
        k_buf: jax.Array | None,  # [B, KVH, S, Dh] or None (no cache: keys are the T new tokens)
        v_buf: jax.Array | None,
        index: jax.Array | None,
        prefix: tuple[jax.Array, jax.Array, jax.Array] | None,  # shared prefix keys, values, valid (or None)
        attention_chunk: int,
        fresh_cache: bool = False,
        causal_max_length: int = 0,
    ) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
        q, k, v = self.project(x, cos, sin)
        if k_buf is None or v_buf is None:
            attn = self.causal_attention(q, k, v, key_valid, attention_chunk, causal_max_length)
        else:
            attn, k_buf, v_buf = self._cached_attention(
                q, k, v, query_slots, key_valid, k_buf, v_buf, index, prefix, attention_chunk, fresh_cache
            )
        return self.finish(x, attn), k_buf, v_buf

    def project(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The attention block's queries [B, T, H, Dh], keys and values [B, T, KVH, Dh] of x [B, T, D]: norm,
        projections (and biases, QK-norm), RoPE."""
        cfg = self.cfg
        y = rms_norm(x, self.attn_norm[...], cfg.rms_norm_eps)
        q = jnp.einsum("btd,dhk->bthk", y, self._w(self.wq))
        k = jnp.einsum("btd,dhk->bthk", y, self._w(self.wk))
        v = jnp.einsum("btd,dhk->bthk", y, self._w(self.wv))
        if self.bq is not None:
            q, k, v = q + self._w(self.bq), k + self._w(self.bk), v + self._w(self.bv)
        q = constrain(q, ("batch", "length", "heads", "head_dim"))
        k = constrain(k, ("batch", "length", "kv_heads", "head_dim"))
        v = constrain(v, ("batch", "length", "kv_heads", "head_dim"))
        if self.q_norm is not None:
            q = rms_norm(q, self.q_norm[...], cfg.rms_norm_eps)
            k = rms_norm(k, self.k_norm[...], cfg.rms_norm_eps)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def causal_attention(
        self, q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array, attention_chunk: int,
        causal_max_length: int,
    ) -> jax.Array:
        """Causal attention of T tokens over themselves, without a cache (training, scoring), by the layer's
        backend. [B, T, H, Dh] -> [B, T, H, Dh]."""
        return self.attention(attention_chunk, causal_max_length).causal(q, k, v, key_valid, self.dtype)

    def attention(self, attention_chunk: int, causal_max_length: int = 0) -> AttentionBackend:
        """The layer's attention backend; the lengths are the CPU paths' settings (``Transformer``'s)."""
        return select_backend(
            self.attention_backend, attention_chunk=attention_chunk, causal_max_length=causal_max_length
        )

    def finish(self, x: jax.Array, attn: jax.Array) -> jax.Array:
        """The rest of the layer after attention: output projection and residual, then the SwiGLU MLP block."""
        cfg = self.cfg
        attn = constrain(attn, ("batch", "length", "heads", "head_dim"))
        x = x + jnp.einsum("bthk,hkd->btd", attn, self._w(self.wo))
        x = constrain(x, ("batch", "length", "act_embed"))

        y = rms_norm(x, self.mlp_norm[...], cfg.rms_norm_eps)
        gate = y @ self._w(self.w_gate)
        up = y @ self._w(self.w_up)
        if self.b_gate is not None:
            gate, up = gate + self._w(self.b_gate), up + self._w(self.b_up)
        # x / (1 + exp(-x)): the form PyTorch's silu uses (XLA's logistic op rounds differently, ~2 vs ~1 ulp)
        hidden = constrain(gate / (1 + jnp.exp(-gate)) * up, ("batch", "length", "mlp"))
        out = hidden @ self._w(self.w_down)
        if self.b_down is not None:
            out = out + self._w(self.b_down)
        return constrain(x + out, ("batch", "length", "act_embed"))

    def _cached_attention(
        self,
        q: jax.Array,  # [B, T, H, Dh]
        k: jax.Array,  # [B, T, KVH, Dh]
        v: jax.Array,
        query_slots: jax.Array,
        key_valid: jax.Array,
        k_buf: jax.Array,
        v_buf: jax.Array,
        index: jax.Array | None,
        prefix: tuple[jax.Array, jax.Array, jax.Array] | None,
        attention_chunk: int,
        fresh_cache: bool,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Attention with a cache: writes the new keys and values into it and attends over it (a prefill into
        an empty cache attends over the new tokens alone); returns [B, T, H, Dh] and the buffers. Uncached
        attention never comes here: ``__call__`` sends it to ``causal_attention``."""
        t = q.shape[1]
        # the key cache is slot-minor, [B, KVH, Dh, S] (cache.py says why)
        k_buf = jax.lax.dynamic_update_slice(k_buf, k.transpose(0, 2, 3, 1).astype(k_buf.dtype), (0, 0, 0, index))
        v_buf = jax.lax.dynamic_update_slice(v_buf, v.transpose(0, 2, 1, 3).astype(v_buf.dtype), (0, 0, index, 0))
        backend = self.attention(attention_chunk)
        if fresh_cache:
            # a prefill: the cache held nothing before these T tokens, so they are all the keys there are
            return backend.prefill(q, k, v, key_valid[:, :t], self.dtype), k_buf, v_buf
        keys, values = k_buf.astype(self.dtype), v_buf.astype(self.dtype)
        return backend.over_cache(q, keys, values, query_slots, key_valid, prefix, self.dtype), k_buf, v_buf


def _layer_runner(
    attention_chunk: int, fresh_cache: bool = False, causal_max_length: int = 0
) -> Callable[..., tuple[jax.Array, jax.Array | None, jax.Array | None]]:
    # static settings are closed over: they must stay Python values under nnx.remat, which traces its arguments
    def run(layer: DecoderLayer, *args: Any) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
        return layer(*args, attention_chunk, fresh_cache, causal_max_length)

    return run


# What a rematerialized layer keeps from its forward pass, by name (None: nothing, everything is recomputed):
# ``jax.checkpoint_policies`` that need no arguments ("dots_saveable": the matmul outputs, not the rest), and
# "attention_saveable": the written-out attentions' output and log-normalisers (``attention.interface``'s
# names), [B, T, H * Dh] + [B, H, T] floats a layer, so the backward pass does not rerun the attention's forward
# loops; backends that bring their own backward pass (cuDNN, splash) save nothing under it.
# "dots_and_attention_saveable": both, the projections' outputs (dots with no batch dimensions) and the
# attention's: the backward pass reruns only elementwise work (norms, rotary, the MLP's gate), ~20 KB a position
# a layer at SmolLM2's sizes.
REMAT_POLICIES = (
    "nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable", "everything_saveable",
    "attention_saveable", "dots_and_attention_saveable",
)


def checkpoint_policy(name: str | None) -> Callable[..., bool] | None:
    """The ``jax.checkpoint`` policy named ``name`` (one of ``REMAT_POLICIES``); None for JAX's default."""
    if name is None:
        return None
    if name not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {name!r}; known: {', '.join(REMAT_POLICIES)} (or None)")
    if name == "attention_saveable":
        return jax.checkpoint_policies.save_only_these_names(ATTENTION_OUT, ATTENTION_LSE)
    if name == "dots_and_attention_saveable":
        return jax.checkpoint_policies.save_from_both_policies(
            jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
            jax.checkpoint_policies.save_only_these_names(ATTENTION_OUT, ATTENTION_LSE),
        )
    return getattr(jax.checkpoint_policies, name)


def _rematerialized(run: Callable[..., Any], policy: str | None = None) -> Callable[..., Any]:
    """``run`` with its layer's activations recomputed in the backward pass (but what ``policy`` keeps).

    A pure ``jax.checkpoint`` over the layer's state (split here, merged inside): ``nnx.remat`` merges the
    layer's variables back in the trace it was called from, which fails ("Cannot mutate Param from a different
    trace level") when the forward runs inside another transform, as the train step's scan and map over
    micro-batches do.
    """

    def wrapped(layer: nnx.Module, *args: Any) -> Any:
        graphdef, state = nnx.split(layer)

        def pure(state: nnx.State, *args: Any) -> Any:
            return run(nnx.merge(graphdef, state), *args)

        return jax.checkpoint(pure, policy=checkpoint_policy(policy))(state, *args)

    return wrapped


LAYERS_AXIS = "layers"  # the logical axis of stacked layer weights (replicated by the default rules)
STACKED = "stacked"  # LayerStack's attribute: stacked parameters' paths read ("layers", "stacked", <weight>)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def _axes(v: nnx.Variable) -> tuple[str, ...] | None:
    return v.get_metadata().get(LOGICAL_AXES_KEY)


def _stack(xs: Sequence[Any]) -> Any:
    """Stack one weight kind over the layers: arrays, abstract arrays, or Variables (logical axes gain
    ``layers`` in front)."""
    first = xs[0]
    if _is_variable(first):
        axes = _axes(first)
        value = _stack([x.get_value() for x in xs])
        return first.replace(value=value, **({} if axes is None else {LOGICAL_AXES_KEY: (LAYERS_AXIS, *axes)}))
    if isinstance(first, jax.ShapeDtypeStruct):
        sharding = first.sharding
        if isinstance(sharding, jax.sharding.NamedSharding):  # the layers axis replicated, the rest as they were
            sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(None, *sharding.spec))
        return jax.ShapeDtypeStruct((len(xs), *first.shape), first.dtype, sharding=sharding)
    return jnp.stack(xs)


def _layer_of(x: Any, i: int) -> Any:
    """Layer ``i``'s slice of a stacked weight (array, abstract array or Variable)."""
    if _is_variable(x):
        axes = _axes(x)
        if axes is not None and (not axes or axes[0] != LAYERS_AXIS):
            raise ValueError(f"not a stacked layer weight: its logical axes are {axes}")
        value = _layer_of(x.get_value(), i)
        return x.replace(value=value, **({} if axes is None else {LOGICAL_AXES_KEY: tuple(axes[1:])}))
    if isinstance(x, jax.ShapeDtypeStruct):
        sharding = x.sharding
        if isinstance(sharding, jax.sharding.NamedSharding):
            sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*sharding.spec[1:]))
        return jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=sharding)
    return x[i]


class LayerStack(nnx.Module):
    """The decoder layers with each weight kind stacked along a leading ``layers`` axis.

    One ``DecoderLayer`` (``stacked``) holds ``[L, ...]`` arrays; ``scan_layers`` runs its graph once per layer
    as a ``lax.scan`` over them, and ``stack[i]`` / iteration give read-only views of one layer (slices: what
    the cached path's loop runs inside ``jit``; outside it each view copies its layer's weights).
    """

    def __init__(self, layers: Sequence[DecoderLayer]):
        if not layers:
            raise ValueError("LayerStack needs at least one layer")
        splits = [nnx.split(layer) for layer in layers]
        graphdef = splits[0][0]
        if any(g != graphdef for g, _ in splits[1:]):
            raise ValueError("LayerStack needs layers of one structure")
        stacked = jax.tree.map(lambda *vs: _stack(vs), *(state for _, state in splits), is_leaf=_is_variable)
        self.stacked = nnx.merge(graphdef, stacked)
        self.count = len(layers)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> DecoderLayer:
        if not -self.count <= i < self.count:
            raise IndexError(f"layer {i} of {self.count}")
        graphdef, state = nnx.split(self.stacked)
        return nnx.merge(graphdef, jax.tree.map(lambda v: _layer_of(v, i % self.count), state, is_leaf=_is_variable))

    def __iter__(self) -> Iterator[DecoderLayer]:
        return (self[i] for i in range(self.count))

    def per_layer(self) -> list[DecoderLayer]:
        """One module per layer, each holding its own copy of its weights (the unrolled layout)."""
        return list(self)


def scan_layers(
    layers: LayerStack,
    run: Callable[[nnx.Module, Any], Any],
    carry: Any,
    *,
    remat: bool,
    policy: str | None = None,
) -> Any:
    """``carry = run(layer, carry)`` for each layer in order, as one ``lax.scan`` over the stacked weights.

    The program holds one layer's body instead of every layer's, so it compiles in about a layer's time, and
    with ``remat`` the backward loop recomputes one layer's activations at a time: memory holds the layers'
    inputs (the scan's carries) and one layer's intermediates. With the layers unrolled, XLA:CPU's schedule
    kept every layer's attention and MLP intermediates alive whether or not they were rematerialized (BUILD.md:
    tree training). The gradient comes back stacked like the weights: one array per weight kind.
    ``policy`` names what each rematerialized layer keeps (``REMAT_POLICIES``; None: nothing).
    """
    graphdef, state = nnx.split(layers.stacked)
    # each step's slice is one layer's weight: its logical axes without the leading ``layers``
    state = jax.tree.map(
        lambda v: v.replace(**{LOGICAL_AXES_KEY: tuple(_axes(v)[1:])}) if _axes(v) is not None else v,
        state, is_leaf=_is_variable,
    )

    def body(carry: Any, state: nnx.State) -> tuple[Any, None]:
        return run(nnx.merge(graphdef, state), carry), None

    if remat:  # inside a scan the loop already keeps the recomputation apart: no CSE barrier needed
        body = jax.checkpoint(body, prevent_cse=False, policy=checkpoint_policy(policy))
    carry, _ = jax.lax.scan(body, carry, state)
    return carry


def _converted_layer_state(state: nnx.State, stack: bool) -> nnx.State:
    flat = list(nnx.to_flat_state(state))
    out: list[tuple[tuple, Any]] = []
    grouped: dict[tuple, list[tuple[int, Any]]] = {}
    for path, value in flat:
        if stack and len(path) > 2 and path[0] == LAYERS_AXIS and isinstance(path[1], int):
            grouped.setdefault(path[2:], []).append((path[1], value))
        elif not stack and len(path) > 2 and path[0] == LAYERS_AXIS and path[1] == STACKED:
            x = value.get_value() if _is_variable(value) else value
            out += [((LAYERS_AXIS, i, *path[2:]), _layer_of(value, i)) for i in range(x.shape[0])]
        else:
            out.append((path, value))
    for rest, items in grouped.items():
        items.sort(key=lambda item: item[0])
        if [i for i, _ in items] != list(range(len(items))):
            raise ValueError(f"layers {[i for i, _ in items]} of {rest}: not 0..L-1")
        out.append(((LAYERS_AXIS, STACKED, *rest), _stack([v for _, v in items])))
    return nnx.from_flat_state(out)


def stack_layer_state(state: nnx.State) -> nnx.State:
    """A state of the unrolled layout (paths ``layers/<i>/<weight>``: parameters, gradients, their shapes) in
    the scanned one (``layers/stacked/<weight>``, ``[L, ...]``); other entries unchanged."""
    return _converted_layer_state(state, stack=True)


def unstack_layer_state(state: nnx.State) -> nnx.State:
    """The inverse of ``stack_layer_state``: a scanned layout's state with one entry per layer and weight."""
    return _converted_layer_state(state, stack=False)


class Transformer(nnx.Module):
    """A decoder-only language model: ``logits, cache = model(tokens, positions, attention_mask, cache)``."""

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        remat: bool = False,
        remat_policy: str | None = None,
        scan: bool = False,
        attention_chunk: int = 1024,
        causal_max_length: int = 2048,
        attention_backend: str = "auto",
    ):
        select_backend(attention_backend)  # an unknown name, or a kernel this platform lacks, fails here
        self.config = cfg
        self.dtype = dtype
        # recompute each layer's activations in the backward pass (training memory ~ one layer's activations)
        self.remat = remat
        # what a rematerialized layer keeps from its forward pass (REMAT_POLICIES; None: nothing)
        checkpoint_policy(remat_policy)
        self.remat_policy = remat_policy
        # the CPU backend's two lengths:
        # longer query blocks over a cache (long prompts' rests) attend chunk by chunk to bound memory; uncached
        # sequences past both this and causal_max_length attend in square tiles of min(512, this) in loops
        self.attention_chunk = attention_chunk
        # without a cache (training, scoring) sequences up to this length attend in causal tiles whatever
        # attention_chunk says: their memory is linear in T (the backward pass recomputes each tile's
        # probabilities) and at T = 2,048 a SmolLM2 train step ran 32-34 s against 57-61 s in query chunks
        # (BUILD.md); past it the unrolled tiles' program (and compile time) grows with T: loops take over
        self.causal_max_length = causal_max_length
        self.embed = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), param_dtype, "normal")
        layers = [
            DecoderLayer(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype, attention_backend=attention_backend)
            for _ in range(cfg.num_layers)
        ]
        # made one by one either way, so a seed gives the same weights in both layouts
        self.layers: nnx.List | LayerStack = LayerStack(layers) if scan else nnx.List(layers)
        self.final_norm = _param(None, (cfg.hidden_size,), ("norm",), param_dtype, "ones")
        if cfg.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = _param(
                rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), param_dtype, "normal"
            )

    @property
    def scan(self) -> bool:
        """Whether the layers are stored stacked (``LayerStack``) and, without a cache (training, scoring), run
        as one ``lax.scan``: compile time and backward memory of one layer, not of all of them. Setting it
        converts the storage in place (a copy of the layer weights: on a mesh, lay the model out again with
        ``rl_jax.sharding.shard_module``)."""
        return isinstance(self.layers, LayerStack)

    @scan.setter
    def scan(self, value: bool) -> None:
        if bool(value) != self.scan:
            self.layers = LayerStack(list(self.layers)) if value else nnx.List(self.layers.per_layer())

    def _layer_modules(self) -> list[DecoderLayer]:
        """The modules that hold the layers' static settings (one stacked module, or one per layer)."""
        return [self.layers.stacked] if isinstance(self.layers, LayerStack) else list(self.layers)

    @property
    def attention_backend(self) -> str:
        """The attention backend's name (``rl_jax.models.attention.BACKEND_NAMES``); "auto" picks by platform."""
        return self._layer_modules()[0].attention_backend

    def set_attention_backend(self, name: str) -> None:
        """Every layer's attention by the backend ``name``: checked here (a ValueError for an unknown name or a
        kernel this platform lacks), used from the next trace on (a static setting, like ``remat``)."""
        select_backend(name)
        for layer in self._layer_modules():
            layer.attention_backend = name

    def unembedding(self) -> jax.Array:
        """The output projection [V, D] (the tied embedding or lm_head): logits = hidden @ w.T."""
        return (self.embed if self.lm_head is None else self.lm_head)[...]

    def forward_hidden(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        attention_mask: jax.Array | None = None,
        cache: KVCache | None = None,
        *,
        fresh_cache: bool = False,
    ) -> tuple[jax.Array, KVCache | None]:
        """Final-norm hidden states [B, T, D] (compute dtype) and the updated cache (None without one).

        ``fresh_cache=True`` promises the cache holds nothing yet (``cache.index == 0``: a prefill). Then the
        T tokens are all the keys: attention skips the cache's empty slots and the tiles above the diagonal,
        one tile of scores at a time on CPU (see ``rl_jax.models.attention.cpu.prefill_attention``).
        """
        cfg = self.config
        if tokens.ndim != 2 or positions.shape != tokens.shape:
            raise ValueError(
                f"tokens and positions must both be [batch, time]; got {tokens.shape} and {positions.shape}"
            )
        b, t = tokens.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), jnp.bool_)
        attention_mask = attention_mask.astype(jnp.bool_)

        if cache is None:
            # without a cache the T tokens occupy slots 0..T-1
            query_slots, key_valid, index = jnp.arange(t, dtype=jnp.int32), attention_mask, None
        else:
            if cache.num_layers != cfg.num_layers or cache.valid.shape[0] != b:
                raise ValueError(
                    f"cache was built for {cache.num_layers} layers x batch {cache.valid.shape[0]}; "
                    f"model has {cfg.num_layers} layers and the input batch is {b}"
                )
            index = cache.index
            key_valid = jax.lax.dynamic_update_slice(cache.valid, attention_mask, (0, index))
            query_slots = index + jnp.arange(t, dtype=jnp.int32)

        x = jnp.take(self.embed[...], tokens, axis=0).astype(self.dtype)
        x = constrain(x, ("batch", "length", "act_embed"))
        cos, sin = rope_tables(cfg, positions)
        new_k: list[jax.Array] = []
        new_v: list[jax.Array] = []
        if fresh_cache and (cache is None or cache.prefix_k is not None):
            raise ValueError("fresh_cache=True needs the (empty) cache to fill, without a shared prefix")
        run_layer = _layer_runner(self.attention_chunk, fresh_cache, self.causal_max_length)
        if cache is None and self.scan:
            x = scan_layers(
                self.layers,
                lambda layer, h: run_layer(layer, h, cos, sin, query_slots, key_valid, None, None, None, None)[0],
                x, remat=self.remat, policy=self.remat_policy,
            )
            return rms_norm(x, self.final_norm[...], cfg.rms_norm_eps), None
        if self.remat:
            run_layer = _rematerialized(run_layer, self.remat_policy)
        for i, layer in enumerate(self.layers):
            k_buf = None if cache is None else cache.k[i]
            v_buf = None if cache is None else cache.v[i]
            prefix = None if cache is None or cache.prefix_k is None else (
                cache.prefix_k[i], cache.prefix_v[i], cache.prefix_valid
            )
            x, k_buf, v_buf = run_layer(layer, x, cos, sin, query_slots, key_valid, k_buf, v_buf, index, prefix)
            if cache is not None:
                new_k.append(k_buf)
                new_v.append(v_buf)
        h = rms_norm(x, self.final_norm[...], cfg.rms_norm_eps)
        if cache is None:
            return h, None
        return h, cache.replace(k=tuple(new_k), v=tuple(new_v), valid=key_valid, index=index + t)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Logits [..., V] from final hidden states [..., D]: f32 (f64 when computing in f64)."""
        w = self.unembedding().astype(self.dtype)
        return jnp.einsum("...d,vd->...v", hidden, w, preferred_element_type=_acc_dtype(self.dtype))

    def hidden(
        self, tokens: jax.Array, positions: jax.Array, attention_mask: jax.Array | None = None
    ) -> jax.Array:
        """Final-norm hidden states [B, T, D] without a cache (for chunked log-prob computation)."""
        return self.forward_hidden(tokens, positions, attention_mask)[0]

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        attention_mask: jax.Array | None = None,
        cache: KVCache | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Logits [B, T, V] in f32 and the updated cache (None when called without one)."""
        h, cache = self.forward_hidden(tokens, positions, attention_mask, cache)
        logits = constrain(self.logits(h), ("batch", "length", "act_vocab"))
        return logits, cache
