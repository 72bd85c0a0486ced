"""Pure next-token sampling over a batch of logits: greedy, temperature, top-k, top-p, log-probs.

Every function maps arrays to arrays (no state, no host work), so the sampler's compiled programs and the
tests call the very same code. Shapes: ``logits`` [B, V]; one PRNG key per row (``keys`` [B]) so a row's
draw depends only on its own key, never on which other rows share the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_NEG_INF = float("-inf")


def tempered_logprobs(logits: jax.Array, temperature: jax.Array | float) -> jax.Array:
    """``log_softmax(logits / temperature)`` in f32; a temperature of 0 (greedy) scores at temperature 1."""
    t = jnp.asarray(temperature, jnp.float32)
    t = jnp.where(t > 0, t, 1.0)
    return jax.nn.log_softmax(logits.astype(jnp.float32) / t, axis=-1)


def token_logprobs(logits: jax.Array, tokens: jax.Array, temperature: jax.Array | float) -> jax.Array:
    """Log-prob of ``tokens`` [...] under ``softmax(logits / temperature)`` (logits [..., V]).

    This is what the sampler returns and what a trainer recomputes from a forward pass over the sampled
    sequence: the untruncated tempered distribution, before any top-k/top-p filtering.
    """
    logp = tempered_logprobs(logits, temperature)
    return jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
    """Keep exactly the ``k`` largest logits per row (ties broken towards the lower token id); -inf elsewhere."""
    vocab = logits.shape[-1]
    if k <= 0 or k >= vocab:
        return logits
    _, idx = jax.lax.top_k(logits, k)
    keep = jnp.put_along_axis(jnp.zeros(logits.shape, bool), idx, True, axis=-1, inplace=False)
    return jnp.where(keep, logits, _NEG_INF)


def top_p_filter(logits: jax.Array, top_p: jax.Array | float) -> jax.Array:
    """Keep the most likely tokens whose probability mass first reaches ``top_p``; -inf elsewhere.

    The kept set is ``{i : p_i >= t}`` for the largest threshold ``t`` whose set still holds mass >= top_p,
    i.e. transformers' TopPLogitsWarper except that tokens tied with the last kept one are all kept. The most
    likely token always survives. Found by bisection on the probabilities' float bits (31 passes over the
    row, exact), because sorting a 50k-entry vocabulary per step is far slower on CPU.
    """
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    bits = jax.lax.bitcast_convert_type(probs, jnp.int32)  # order-preserving for non-negative floats
    top_p = jnp.asarray(top_p, jnp.float32)
    batch_shape = logits.shape[:-1]

    def halve(_: int, bounds: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        lo, hi = bounds  # invariant: mass(bits >= lo) >= top_p > mass(bits >= hi)
        mid = lo + (hi - lo) // 2
        mass = jnp.sum(jnp.where(bits >= mid[..., None], probs, 0.0), axis=-1)
        enough = mass >= top_p
        return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

    lo = jnp.zeros(batch_shape, jnp.int32)
    hi = jnp.full(batch_shape, jax.lax.bitcast_convert_type(jnp.float32(1.0), jnp.int32) + 1)
    lo, _ = jax.lax.fori_loop(0, 31, halve, (lo, hi))
    return jnp.where(bits >= lo[..., None], logits, _NEG_INF)


def argmax_first(logits: jax.Array) -> jax.Array:
    """Index of the row maximum (first on ties), as int32; two plain reductions, which XLA:CPU runs several
    times faster than its variadic argmax reduction."""
    top = jnp.max(logits, axis=-1, keepdims=True)
    ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    return jnp.min(jnp.where(logits == top, ids, logits.shape[-1]), axis=-1)


_CDF_BLOCK = 256


def categorical(keys: jax.Array, logits: jax.Array) -> jax.Array:
    """One draw per row from ``softmax(logits)`` ([B, V], -inf = excluded) by inverting the CDF.

    One uniform per row rather than a Gumbel variate per vocabulary entry, and a two-level CDF (block sums,
    then one block) rather than a full-length cumulative sum: both are several times cheaper on CPU.
    Excluded tokens (-inf) are never drawn.
    """
    logits = logits.astype(jnp.float32)
    rows, vocab = logits.shape
    weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    block = min(_CDF_BLOCK, vocab)
    n_blocks = -(-vocab // block)
    if n_blocks * block != vocab:
        weights = jnp.pad(weights, ((0, 0), (0, n_blocks * block - vocab)))
    blocks = weights.reshape(rows, n_blocks, block)
    block_mass = jnp.sum(blocks, axis=-1)
    block_cdf = jnp.cumsum(block_mass, axis=-1)
    u = jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(keys)
    target = u * block_cdf[:, -1]
    # the first block whose cumulative mass exceeds the target; a block with zero mass can never be it
    b = jnp.sum(block_cdf <= target[:, None], axis=-1).astype(jnp.int32)
    last_block = n_blocks - 1 - argmax_first(jnp.flip(block_mass > 0, axis=-1).astype(jnp.float32))
    b = jnp.minimum(b, last_block)  # u * total may round up to total
    mass_before = jnp.take_along_axis(block_cdf - block_mass, b[:, None], axis=-1)[:, 0]
    inner = jnp.take_along_axis(blocks, b[:, None, None], axis=1)[:, 0]
    inner_cdf = mass_before[:, None] + jnp.cumsum(inner, axis=-1)
    i = jnp.sum(inner_cdf <= target[:, None], axis=-1).astype(jnp.int32)
    last_in_block = block - 1 - argmax_first(jnp.flip(inner > 0, axis=-1).astype(jnp.float32))
    return b * block + jnp.minimum(i, last_in_block)


def sample_next(
    keys: jax.Array,
    logits: jax.Array,
    temperature: jax.Array | float,
    top_p: jax.Array | float,
    *,
    greedy: bool,
    top_k: int,
    use_top_p: bool,
) -> tuple[jax.Array, jax.Array]:
    """Pick the next token of each row and return ``(tokens [B] int32, logprobs [B] f32)``.

    ``greedy``, ``top_k`` and ``use_top_p`` shape the program (static); ``temperature`` and ``top_p`` are
    run-time values. Log-probs are under the untruncated tempered distribution (see ``token_logprobs``).
    With top-k, the top-p filter and the draw work on the k candidates only (``lax.top_k``).
    """
    logits = logits.astype(jnp.float32)
    if greedy:
        tokens = argmax_first(logits)
        return tokens, token_logprobs(logits, tokens, 1.0)
    scaled = logits / jnp.asarray(temperature, jnp.float32)
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        candidates, candidate_ids = jax.lax.top_k(scaled, top_k)
        if use_top_p:
            candidates = top_p_filter(candidates, top_p)
        choice = categorical(keys, candidates)
        tokens = jnp.take_along_axis(candidate_ids, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
    else:
        tokens = categorical(keys, top_p_filter(scaled, top_p) if use_top_p else scaled)
    logp = jax.nn.log_softmax(scaled, axis=-1)
    return tokens, jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]
