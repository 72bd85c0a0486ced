"""The engine's device side: a cache of decode slots and the three programs that run over it (pure functions).

Layout. ``S`` slots, each one conversation's keys and values in its own region of ``capacity`` token slots
(plus a pad of ``pad`` slots that absorbs the writes of rows with nothing to write), and one shared prefix
region of ``prefix_capacity`` slots held once (none at all without a prefix cache: attention then skips it).
A slot's sequence is the first ``prefix_len[s]`` tokens of the shared prefix followed by its own ``own_len[s]``
tokens: token ``j`` of its own region sits at RoPE position ``prefix_len[s] + j``. Every slot keeps its own
write position, so requests join and leave between decode steps (``KVCache`` has one write index for the whole
batch, which is why the engine keeps its own cache).
Keys and values are slot-major, ``[S, KVH, slots, Dh]`` (the prefix's ``[1, KVH, P, Dh]``).

Attention is a cascade: a query meets the one copy of the prefix and its slot's own region separately, and the
two softmax parts merge by their maxima and exp-sums. The prefix is read once per step for all slots, not once
per slot: for CoreCraft's ~6.5k shared tokens that is most of a decode step's reads.

Programs (each compiled once per static shape; ``SlotPrograms`` keys them):

- ``prefill``: ``R`` rows of a fixed chunk of ``C`` new tokens, row ``r`` into slot ``slot_ids[r]`` after its
  cached tokens; stores each row's last-token logits as its slot's next-token logits. Unused rows repeat row 0
  (identical writes), so a bucket of rows serves any smaller number.
- ``fill_prefix``: a chunk of the shared prefix into the prefix region.
- ``decode``: up to ``steps`` tokens for every live slot at once (one ``while_loop``): draw from the slot's
  logits, record, feed the token through the model (its keys and values join the slot), until each live slot
  has hit a stop token or its budget.

``view``: attention reads only the first ``view`` slots of each own region (a static bucket the host picks to
cover every row involved), so a short conversation does not pay for the region's whole capacity.

Draws match ``Sampler.generate`` with ``row_keys``: a request's key is its row key and its ``t``-th token of
the turn draws from ``fold_in(key, t)`` through the same ``rl_jax.sampling.functions``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jax.sharding import Mesh

from rl_jax.models import ModelConfig, Transformer
from rl_jax.models.attention.cpu import attention_parts
from rl_jax.models.transformer import rms_norm, rope_tables
from rl_jax.sampling.functions import argmax_first, categorical, token_logprobs, top_p_filter
from rl_jax.sharding import constrain, logical_sharding

OWN_AXES = ("batch", "kv_heads", "length", "head_dim")
PREFIX_AXES = (None, "kv_heads", "length", "head_dim")


@struct.dataclass
class SlotCache:
    """Own regions, the shared prefix region, and each slot's next-token logits."""

    k: tuple[jax.Array, ...]  # num_layers x [S, KVH, capacity + pad, Dh]
    v: tuple[jax.Array, ...]
    prefix_k: tuple[jax.Array, ...]  # num_layers x [1, KVH, prefix_capacity + pad, Dh]; () without a prefix cache
    prefix_v: tuple[jax.Array, ...]
    logits: jax.Array  # [S, V] f32: the distribution each slot's next token is drawn from

    @classmethod
    def init(
        cls, cfg: ModelConfig, slots: int, own_slots: int, prefix_slots: int, dtype: Any, mesh: Mesh | None = None
    ) -> SlotCache:
        kvh, dh = cfg.num_kv_heads, cfg.head_dim

        def buffer(shape: tuple[int, ...], axes: tuple[str | None, ...], kind: Any = dtype) -> jax.Array:
            x = jnp.zeros(shape, kind)
            return x if mesh is None else jax.device_put(x, logical_sharding(mesh, axes))

        def region(rows: int, length: int, axes: tuple[str | None, ...]) -> tuple[jax.Array, ...]:
            if not length:  # no region at all (not a zero-length one: XLA gives those back unsharded)
                return ()
            return tuple(buffer((rows, kvh, length, dh), axes) for _ in range(cfg.num_layers))

        return cls(
            k=region(slots, own_slots, OWN_AXES),
            v=region(slots, own_slots, OWN_AXES),
            prefix_k=region(1, prefix_slots, PREFIX_AXES),
            prefix_v=region(1, prefix_slots, PREFIX_AXES),
            logits=buffer((slots, cfg.vocab_size), ("batch", None), jnp.float32),
        )


def _laid_out(cache: SlotCache) -> SlotCache:
    """The cache in the layout ``SlotCache.init`` placed it in (a no-op without a mesh): every program hands it
    on in the layout the next program was compiled for."""
    return cache.replace(
        k=tuple(constrain(x, OWN_AXES) for x in cache.k), v=tuple(constrain(x, OWN_AXES) for x in cache.v),
        prefix_k=tuple(constrain(x, PREFIX_AXES) for x in cache.prefix_k),
        prefix_v=tuple(constrain(x, PREFIX_AXES) for x in cache.prefix_v),
        logits=constrain(cache.logits, ("batch", None)),
    )


# ---------------------------------------------------------------------------------------------- attention


def _parts(q: jax.Array, keys: jax.Array, values: jax.Array, mask: jax.Array, dtype: Any):
    """Unnormalised softmax attention, to merge with another part: q [N, KVH, Q, Dh] over keys/values
    [N, KVH, K, Dh] with mask [N, Q, K] -> weighted sums [N, KVH, Q, Dh], score maxima and exp-sums [N, KVH, Q]
    (accumulated in at least f32)."""
    acc = jnp.promote_types(dtype, jnp.float32)
    scores = jnp.einsum("nkqd,nksd->nkqs", q, keys.astype(dtype), preferred_element_type=acc)
    # a large finite negative, not -inf: a part with no valid key stays finite and weighs nothing in the merge
    scores = jnp.where(mask[:, None], scores * (q.shape[-1] ** -0.5), jnp.finfo(acc).min)
    top = scores.max(axis=-1)
    weights = jnp.exp(scores - top[..., None])
    summed = jnp.einsum("nkqs,nksd->nkqd", weights.astype(dtype), values.astype(dtype), preferred_element_type=acc)
    return summed, top, weights.sum(axis=-1)


# Keys per tile of the online softmax over a long region (the shared prefix): a prefill row's 768 queries x 256
# keys x 3 kv heads of f32 scores are 2.4 MB, near the cache, where the whole row against a 6.9k-slot prefix
# streams 64 MB through memory several times (exp, max, sum).
KEY_TILE = 256


def _tiled_parts(q: jax.Array, keys: jax.Array, values: jax.Array, visible, tiles: jax.Array, dtype: Any):
    """``_parts`` over the first ``tiles`` tiles of ``KEY_TILE`` keys only, one tile at a time with a running
    maximum, exp-sum and weighted sum (the online softmax of FlashAttention): the scores never exist whole, and
    keys past the last tile are not read at all. ``visible(slots [KEY_TILE]) -> [N, Q, KEY_TILE]`` masks each
    tile. ``tiles`` may be traced. A region whose length is not a multiple of the tile has its last tile read
    from ``length - KEY_TILE`` with the slots already visited masked out."""
    acc = jnp.promote_types(dtype, jnp.float32)
    n, kvh, nq, dh = q.shape
    length = keys.shape[2]
    tile = min(KEY_TILE, length)
    lowest = jnp.finfo(acc).min
    q = q * jnp.asarray(dh**-0.5, q.dtype)
    offsets = jnp.arange(tile, dtype=jnp.int32)

    def visit(j, carry):
        top, total, summed = carry
        first = j * tile
        start = jnp.minimum(first, length - tile)
        k = jax.lax.dynamic_slice_in_dim(keys, start, tile, axis=2).astype(dtype)
        v = jax.lax.dynamic_slice_in_dim(values, start, tile, axis=2).astype(dtype)
        slots = start + offsets
        mask = visible(slots) & (slots >= first)[None, None, :]
        scores = jnp.einsum("nkqd,nksd->nkqs", q, k, preferred_element_type=acc)
        scores = jnp.where(mask[:, None], scores, lowest)
        new_top = jnp.maximum(top, scores.max(axis=-1))
        weights = jnp.exp(scores - new_top[..., None])
        rescale = jnp.exp(top - new_top)
        summed = summed * rescale[..., None] + jnp.einsum("nkqs,nksd->nkqd", weights.astype(dtype), v,
                                                          preferred_element_type=acc)
        return new_top, total * rescale + weights.sum(axis=-1), summed

    init = (jnp.full((n, kvh, nq), lowest, acc), jnp.zeros((n, kvh, nq), acc), jnp.zeros((n, kvh, nq, dh), acc))
    top, total, summed = jax.lax.fori_loop(0, tiles, visit, init)
    return summed, top, total


def _tiles_for(slots: jax.Array, tile_length: int) -> jax.Array:
    """Tiles of ``min(KEY_TILE, tile_length)`` keys covering the first ``slots`` slots."""
    tile = min(KEY_TILE, tile_length)
    return (slots + tile - 1) // tile


def _merged(a: tuple[jax.Array, ...] | None, b: tuple[jax.Array, ...]) -> jax.Array:
    """The softmax over both parts' keys at once, from their unnormalised parts (``b``'s alone without ``a``)."""
    if a is None:
        return b[0] / b[2][..., None]
    top = jnp.maximum(a[1], b[1])
    wa, wb = jnp.exp(a[1] - top), jnp.exp(b[1] - top)
    return (a[0] * wa[..., None] + b[0] * wb[..., None]) / (a[2] * wa + b[2] * wb)[..., None]


def _grouped(q: jax.Array, kvh: int) -> jax.Array:
    """[N, T, H, Dh] -> [N, KVH, G*T, Dh] (query head h = kv head h // G)."""
    n, t, h, dh = q.shape
    return q.reshape(n, t, kvh, h // kvh, dh).transpose(0, 2, 3, 1, 4).reshape(n, kvh, (h // kvh) * t, dh)


def _ungrouped(out: jax.Array, t: int) -> jax.Array:
    """[N, KVH, G*T, Dh] -> [N, T, H, Dh]."""
    n, kvh, gt, dh = out.shape
    return out.reshape(n, kvh, gt // t, t, dh).transpose(0, 3, 1, 2, 4).reshape(n, t, kvh * (gt // t), dh)


def _rows_attention(q, prefix_k, prefix_v, prefix_len, own_k, own_v, own_last, dtype):
    """R rows of T queries each (a prefill chunk): q [R, T, H, Dh], own_k/own_v [R, KVH, W, Dh], own_last
    [R, T] (query t sees own slots <= own_last[r, t]) -> [R, T, H, Dh]. Row by row (``lax.map``): one row's
    scores against a long prefix are already large."""
    kvh, t = own_k.shape[1], q.shape[1]

    def one(xs):
        qr, kr, vr, m, last = xs
        qg = _grouped(qr[None], kvh)  # [1, KVH, G*T, Dh]
        g = qg.shape[2] // t
        last_q = jnp.tile(last, g)  # query index i*T + j is query j of head group i
        own_mask = (jnp.arange(kr.shape[1])[None, :] <= last_q[:, None])[None]
        own = _parts(qg, kr[None], vr[None], own_mask, dtype)
        shared = None
        if prefix_k is not None:  # only the tiles holding the row's prefix are read (none when it has none)
            def visible(slots):
                return jnp.broadcast_to((slots < m)[None, None, :], (1, qg.shape[2], slots.shape[0]))

            shared = _tiled_parts(qg, prefix_k, prefix_v, visible, _tiles_for(m, prefix_k.shape[2]), dtype)
        return _ungrouped(_merged(shared, own), t)[0].astype(dtype)

    return jax.lax.map(one, (q, own_k, own_v, prefix_len, own_last))


def _step_attention(q, prefix_k, prefix_v, prefix_len, own_k, own_v, own_pos, dtype):
    """One query per slot (a decode step): q [S, 1, H, Dh] -> [S, 1, H, Dh]. Every slot's queries meet the
    prefix in one product; each slot's own region is its own."""
    s, _, h, dh = q.shape
    kvh = own_k.shape[1]
    g = h // kvh
    qg = _grouped(q, kvh)  # [S, KVH, G, Dh]
    shared = None
    if prefix_k is not None:  # an engine without a prefix region has none to read
        all_queries = qg.transpose(1, 0, 2, 3).reshape(1, kvh, s * g, dh)
        prefix_mask = (jnp.arange(prefix_k.shape[2])[None, :] < jnp.repeat(prefix_len, g)[:, None])[None]
        shared = attention_parts(all_queries, prefix_k.astype(dtype), prefix_v.astype(dtype), prefix_mask, dtype)
        shared = tuple(jnp.moveaxis(x[0].reshape(kvh, s, g, *x.shape[3:]), 1, 0) for x in shared)
    own_mask = jnp.broadcast_to((jnp.arange(own_k.shape[2])[None, :] <= own_pos[:, None])[:, None, :],
                                (s, g, own_k.shape[2]))
    # keys first in the dots (the sampler's one-query order; ``attention_parts``): on the 2-core CPU, SmolLM2-135M
    # at 16 slots, a decode step over 2,048 own slots took 281 ms against 334 with the queries first, and 296
    # against 446 after a 6.9k-slot prefix (BUILD.md); a prefill chunk's many queries keep ``_parts``' order
    own = attention_parts(qg, own_k.astype(dtype), own_v.astype(dtype), own_mask, dtype)
    return _ungrouped(_merged(shared, own), 1).astype(dtype)


# ---------------------------------------------------------------------------------------------- programs


def _prefix_region(cache: SlotCache, layer: int) -> tuple[jax.Array | None, jax.Array | None]:
    """Layer ``layer``'s prefix keys and values (None, None without a prefix region)."""
    return (cache.prefix_k[layer], cache.prefix_v[layer]) if cache.prefix_k else (None, None)


def _embedded(model: Transformer, tokens: jax.Array) -> jax.Array:
    x = jnp.take(model.embed[...], tokens, axis=0).astype(model.dtype)
    return constrain(x, ("batch", "length", "act_embed"))


def _final_logits(model: Transformer, x: jax.Array) -> jax.Array:
    return model.logits(rms_norm(x, model.final_norm[...], model.config.rms_norm_eps))


def prefill_fn(graphdef: nnx.GraphDef, view: int):
    """The prefill program (module docstring): (state, cache, slot_ids [R], tokens [R, C], starts [R] (own
    tokens already cached), prefix_len [R], n_new [R]) -> cache."""

    def prefill(state, cache: SlotCache, slot_ids, tokens, starts, prefix_len, n_new):
        model = nnx.merge(graphdef, state)
        c = tokens.shape[1]
        own_slots = starts[:, None] + jnp.arange(c, dtype=jnp.int32)  # [R, C]
        cos, sin = rope_tables(model.config, prefix_len[:, None] + own_slots)
        x = _embedded(model, tokens)
        new_k, new_v = [], []
        for i, layer in enumerate(model.layers):
            q, k, v = layer.project(x, cos, sin)
            k_buf = cache.k[i].at[slot_ids[:, None], :, own_slots, :].set(k.astype(cache.k[i].dtype))
            v_buf = cache.v[i].at[slot_ids[:, None], :, own_slots, :].set(v.astype(cache.v[i].dtype))
            attn = _rows_attention(q, *_prefix_region(cache, i), prefix_len,
                                   k_buf[slot_ids, :, :view], v_buf[slot_ids, :, :view], own_slots, model.dtype)
            x = layer.finish(x, attn)
            new_k.append(k_buf)
            new_v.append(v_buf)
        last = jnp.take_along_axis(x, (n_new - 1)[:, None, None], axis=1)[:, 0]  # [R, D]
        logits = cache.logits.at[slot_ids].set(_final_logits(model, last).astype(jnp.float32))
        return _laid_out(cache.replace(k=tuple(new_k), v=tuple(new_v), logits=logits))

    return prefill


def fill_prefix_fn(graphdef: nnx.GraphDef):
    """The prefix program: (state, cache, tokens [B, C] (B copies of one chunk: on a mesh every data shard
    computes a row), start) -> cache with the chunk's keys and values at prefix slots [start, start + C) (the
    chunk attends to the prefix before it and causally to itself)."""

    def fill_prefix(state, cache: SlotCache, tokens, start):
        model = nnx.merge(graphdef, state)
        b, c = tokens.shape
        slots = start + jnp.arange(c, dtype=jnp.int32)
        cos, sin = rope_tables(model.config, jnp.broadcast_to(slots, (b, c)))
        x = _embedded(model, tokens)
        new_k, new_v = [], []
        for i, layer in enumerate(model.layers):
            q, k, v = layer.project(x, cos, sin)
            k_buf = jax.lax.dynamic_update_slice(
                cache.prefix_k[i], k[:1].transpose(0, 2, 1, 3).astype(cache.prefix_k[i].dtype), (0, 0, start, 0))
            v_buf = jax.lax.dynamic_update_slice(
                cache.prefix_v[i], v[:1].transpose(0, 2, 1, 3).astype(cache.prefix_v[i].dtype), (0, 0, start, 0))
            qg = _grouped(q, k_buf.shape[1])
            last = jnp.tile(slots, qg.shape[2] // c)

            def visible(key_slots, last=last):
                return jnp.broadcast_to((key_slots[None, :] <= last[:, None])[None], (b, last.shape[0],
                                                                                      key_slots.shape[0]))

            keys, values = (jnp.broadcast_to(buf, (b, *buf.shape[1:])) for buf in (k_buf, v_buf))
            # only the tiles up to the chunk's end: the slots filled so far, not the whole region
            summed, _, total = _tiled_parts(qg, keys, values, visible, _tiles_for(start + c, k_buf.shape[2]),
                                            model.dtype)
            x = layer.finish(x, _ungrouped(summed / total[..., None], c).astype(model.dtype))
            new_k.append(k_buf)
            new_v.append(v_buf)
        return _laid_out(cache.replace(prefix_k=tuple(new_k), prefix_v=tuple(new_v)))

    return fill_prefix


def pick_tokens(keys, logits, greedy_rows, temperature, top_p, *, top_k: int, any_top_p: bool, any_sampled: bool):
    """Each row's next token and its log-prob, as ``sampling.functions.sample_next`` would give that row with its
    own options: greedy rows take the argmax (log-prob at temperature 1), the others draw at their temperature
    (through top-k, then top-p where their top_p < 1). Options vary per row at run time; ``top_k`` and whether
    any row samples or uses top-p shape the program."""
    logits = logits.astype(jnp.float32)
    greedy_tok = argmax_first(logits)
    greedy_logp = token_logprobs(logits, greedy_tok, 1.0)
    if not any_sampled:
        return greedy_tok, greedy_logp
    scaled = logits / jnp.where(greedy_rows, 1.0, temperature)[:, None]
    uses_top_p = (top_p < 1.0)[:, None]
    if 0 < top_k < logits.shape[-1]:
        candidates, ids = jax.lax.top_k(scaled, top_k)
        if any_top_p:
            candidates = jnp.where(uses_top_p, top_p_filter(candidates, top_p), candidates)
        choice = categorical(keys, candidates)
        drawn = jnp.take_along_axis(ids, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
    else:
        drawn = categorical(keys, jnp.where(uses_top_p, top_p_filter(scaled, top_p), scaled) if any_top_p else scaled)
    drawn_logp = jnp.take_along_axis(jax.nn.log_softmax(scaled, axis=-1), drawn[:, None], axis=-1)[:, 0]
    return jnp.where(greedy_rows, greedy_tok, drawn), jnp.where(greedy_rows, greedy_logp, drawn_logp)


def decode_fn(graphdef: nnx.GraphDef, view: int, steps: int, impl: str | None, top_k: int, any_top_p: bool,
              any_sampled: bool):
    """The decode program: (state, cache, live [S], own_len [S], prefix_len [S], emitted [S] (tokens of the turn
    so far), budget [S] (the turn's token limit), key_data [S, ...], greedy [S], temperature [S], top_p [S],
    stops [S, n]) -> (cache, tokens [S, steps], logprobs [S, steps], new [S] (tokens this call), stopped [S])."""

    def decode(state, cache: SlotCache, live, own_len, prefix_len, emitted, budget, key_data, greedy, temperature,
               top_p, stops):
        model = nnx.merge(graphdef, state)
        s = live.shape[0]
        row_keys = None if impl is None else jax.random.wrap_key_data(key_data, impl=impl)
        rows = jnp.arange(s)

        def body(loop):
            i, cache, live, new, stopped, out_tokens, out_logps = loop
            t = emitted + new
            step_keys = None if row_keys is None else jax.vmap(jax.random.fold_in)(row_keys, t.astype(jnp.uint32))
            tok, logp = pick_tokens(step_keys, cache.logits, greedy, temperature, top_p, top_k=top_k,
                                    any_top_p=any_top_p, any_sampled=any_sampled)
            out_tokens = out_tokens.at[:, i].set(jnp.where(live, tok, 0))
            out_logps = out_logps.at[:, i].set(jnp.where(live, logp, 0.0))
            hit_stop = live & jnp.any(tok[:, None] == stops, axis=-1)
            # the drawn token is fed through the model either way: its keys and values belong to the slot's
            # history, which the next turn extends
            pos = own_len + new
            cos, sin = rope_tables(model.config, (prefix_len + pos)[:, None])
            x = _embedded(model, tok[:, None])
            new_k, new_v = [], []
            for li, layer in enumerate(model.layers):
                q, k, v = layer.project(x, cos, sin)
                k_buf = cache.k[li].at[rows, :, pos, :].set(k[:, 0].astype(cache.k[li].dtype))
                v_buf = cache.v[li].at[rows, :, pos, :].set(v[:, 0].astype(cache.v[li].dtype))
                attn = _step_attention(q, *_prefix_region(cache, li), prefix_len,
                                       k_buf[:, :, :view], v_buf[:, :, :view], pos, model.dtype)
                x = layer.finish(x, attn)
                new_k.append(k_buf)
                new_v.append(v_buf)
            logits = jnp.where(live[:, None], _final_logits(model, x[:, 0]).astype(jnp.float32), cache.logits)
            cache = cache.replace(k=tuple(new_k), v=tuple(new_v), logits=logits)
            new = new + live.astype(jnp.int32)
            stopped = stopped | hit_stop
            live = live & ~hit_stop & (emitted + new < budget)
            return i + 1, cache, live, new, stopped, out_tokens, out_logps

        def cond(loop):
            return (loop[0] < steps) & jnp.any(loop[2])

        init = (jnp.int32(0), cache, live, jnp.zeros((s,), jnp.int32), jnp.zeros((s,), jnp.bool_),
                jnp.zeros((s, steps), jnp.int32), jnp.zeros((s, steps), jnp.float32))
        _, cache, _, new, stopped, out_tokens, out_logps = jax.lax.while_loop(cond, body, init)
        return _laid_out(cache), out_tokens, out_logps, new, stopped

    return decode
