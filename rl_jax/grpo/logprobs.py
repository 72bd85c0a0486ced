"""Per-token log-probabilities (and entropies) of target tokens under a softmax policy with temperature.

Two entry points with one meaning:

* ``token_logprobs_from_logits``: from logits ``[B, T, V]`` already in memory (small models, tests).
* ``token_logprobs_from_hidden``: from the final hidden states ``h [B, T, D]`` and the unembedding
  ``w [V, D]`` (logits = h @ w.T / temperature), never holding the ``[B, T, V]`` logits in float32 at once.
  The sequence is cut into chunks of at most ``chunk_size`` positions; each chunk's logits are made, reduced to a
  log-prob (and entropy) and dropped. The chunk function is rematerialised (``jax.checkpoint``), so the
  backward pass recomputes one chunk's logits at a time instead of storing every chunk's. Peak memory is
  ``B * chunk_size * V`` floats instead of ``B * T * V``; at V = 49k, T = 4k, B = 8 that is 6 GiB -> 200 MiB.

The target's logit is picked from the chunk's logits with a one-hot mask rather than a gather, so with the
vocabulary sharded over the model axis it reduces locally and all-reduces, like the log-sum-exp beside it.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

Array = chex.Array


class TokenLogProbs(NamedTuple):
    logp: Array              # [B, T] float32: log pi(target_t | context)
    entropy: Array | None    # [B, T] float32 entropy of the tempered distribution, or None if not asked


def _reduce_logits(logits: Array, targets: Array, with_entropy: bool) -> tuple[Array, Array | None]:
    """logits [..., V] f32, targets [...] int -> (logp [...], entropy [...] or None)."""
    lse = jax.nn.logsumexp(logits, axis=-1)
    vocab = jnp.arange(logits.shape[-1], dtype=targets.dtype)
    target_logit = jnp.sum(jnp.where(vocab == targets[..., None], logits, 0.0), axis=-1)
    logp = target_logit - lse
    if not with_entropy:
        return logp, None
    log_probs = logits - lse[..., None]  # centred first: lse - sum(p * logits) cancels badly at large logits
    entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
    return logp, entropy


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def token_logprobs_from_logits(
    logits: Array, targets: Array, temperature: float = 1.0, *, with_entropy: bool = False
) -> TokenLogProbs:
    """Log-probs of ``targets [B, T]`` under ``softmax(logits [B, T, V] / temperature)``, computed in f32."""
    chex.assert_rank(logits, 3)
    chex.assert_rank(targets, 2)
    chex.assert_equal_shape_prefix([logits, targets], 2)
    _check_temperature(temperature)
    scaled = logits.astype(jnp.float32) / temperature
    logp, entropy = _reduce_logits(scaled, targets.astype(jnp.int32), with_entropy)
    return TokenLogProbs(logp, entropy)


def token_logprobs_from_hidden(
    hidden: Array,
    unembedding: Array,
    targets: Array,
    temperature: float = 1.0,
    *,
    chunk_size: int = 256,
    with_entropy: bool = False,
) -> TokenLogProbs:
    """Log-probs of ``targets [B, T]`` from ``hidden [B, T, D]`` and ``unembedding [V, D]``, chunked over T.

    The matmul runs in the inputs' dtype with float32 accumulation (bf16 weights stay bf16); everything after
    it is float32. ``T`` need not be a multiple of ``chunk_size``: it is cut into the fewest chunks of at most
    ``chunk_size`` positions, all of one size (padded by fewer positions than there are chunks).
    """
    chex.assert_rank(hidden, 3)
    chex.assert_rank(unembedding, 2)
    chex.assert_rank(targets, 2)
    chex.assert_equal_shape_prefix([hidden, targets], 2)
    if hidden.shape[-1] != unembedding.shape[-1]:
        raise ValueError(f"hidden size {hidden.shape[-1]} != unembedding size {unembedding.shape[-1]} ([V, D])")
    _check_temperature(temperature)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    batch, length, dim = hidden.shape
    # as few chunks as chunk_size allows, of equal size: padding stays under one position per chunk
    # (448 positions at chunk_size 256 are two chunks of 224, not 512 positions' work)
    n_chunks = -(-length // chunk_size)
    chunk = -(-length // n_chunks)
    pad = n_chunks * chunk - length
    targets = targets.astype(jnp.int32)
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    # [n_chunks, B, chunk, ...]: the batch axis stays second so its data sharding carries through the loop
    h_chunks = hidden.reshape(batch, n_chunks, chunk, dim).swapaxes(0, 1)
    t_chunks = targets.reshape(batch, n_chunks, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def one_chunk(w: Array, h: Array, t: Array) -> tuple[Array, Array | None]:
        logits = jnp.einsum("bcd,vd->bcv", h, w, preferred_element_type=jnp.float32) / temperature
        return _reduce_logits(logits, t, with_entropy)

    logp, entropy = jax.lax.map(lambda xs: one_chunk(unembedding, *xs), (h_chunks, t_chunks))

    def unchunk(x: Array) -> Array:
        return x.swapaxes(0, 1).reshape(batch, n_chunks * chunk)[:, :length]

    return TokenLogProbs(unchunk(logp), unchunk(entropy) if with_entropy else None)
