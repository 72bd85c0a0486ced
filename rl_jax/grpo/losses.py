"""The GRPO policy loss: clipped importance-ratio surrogate, optional KL to a reference, token aggregation.

A loss takes arrays and a small frozen config, nothing else; the model application sits one level up.

``policy_loss`` returns ``LossTerms(numerator, denominator, metrics)`` rather than a mean, so gradient
accumulation is exact: sum the terms of the micro-batches (``add_terms``), differentiate the numerators, and
divide by the total denominator once. The denominator carries no gradient. With the adaptive rule, compute
the bounds on the global batch first (``compute_clip_bounds``, or ``bapo_contribution_sums`` summed over
micro-batches then ``bapo_select_bounds``) and pass them as ``bounds=`` to every micro-batch's loss.

Masks: ``loss_mask`` is 1 on tokens the policy generated and 0 on prompt, tool-output and padding tokens
(multi-turn episodes interleave them). Masked entries may hold anything, NaN included: they are replaced
before any arithmetic, so they contribute nothing to the value and exactly zero to the gradient.

Aggregation (``LossConfig.aggregation``), for per-token losses l and mask m:
* "token-mean": sum(l m) / sum(m); every token weighs the same (DAPO's token-level loss).
* "seq-mean-token-mean": mean over sequences of each sequence's token mean (the original GRPO).
* "seq-mean-token-scale": sum(l m) / token_scale per sequence, mean over sequences; a constant normaliser
  (Dr. GRPO) that removes the length bias of per-sequence means. ``token_scale`` must be set (e.g. the
  generation budget): the padded length T is no constant, it changes with the length bucket of each batch.
Sequences with no loss token do not count in either sequence mean.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from rl_jax.grpo.clipping import CLIP_RULES, ClipBounds, ClipConfig, contributions_at, importance_ratio
from rl_jax.grpo.metrics import Max, Mean, Metrics, Sum, add_metrics
from rl_jax.grpo.registry import Registry

Array = chex.Array


@dataclass(frozen=True)
class LossConfig:
    clip: ClipConfig = field(default_factory=ClipConfig)
    aggregation: str = "token-mean"
    token_scale: float | None = None   # "seq-mean-token-scale" normaliser, required by it (a fixed constant)
    kl_coef: float = 0.0               # > 0 adds kl_coef * KL(policy || reference) per token; needs ref_logp
    kl_estimator: str = "k3"           # "k1": log(p/q); "k3": q/p - log(q/p) - 1 (Schulman), >= 0

    def __post_init__(self) -> None:
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")
        if self.token_scale is not None and self.token_scale <= 0:
            raise ValueError(f"token_scale must be > 0, got {self.token_scale}")
        if self.aggregation == "seq-mean-token-scale" and self.token_scale is None:
            # no default: the padded length would make a batch's loss scale depend on its length bucket
            raise ValueError(
                "aggregation 'seq-mean-token-scale' needs token_scale, a fixed number of tokens to divide each "
                "sequence's loss sum by (Dr. GRPO uses the generation budget, e.g. max_new_tokens)"
            )
        AGGREGATIONS.get(self.aggregation)
        KL_ESTIMATORS.get(self.kl_estimator)
        CLIP_RULES.get(self.clip.rule)


class LossTerms(NamedTuple):
    numerator: Array     # scalar; differentiate this
    denominator: Array   # scalar, gradient-free; loss = numerator / denominator
    metrics: Metrics


# ---------------------------------------------------------------------------------------------- KL estimators
# (logp [B, T], ref_logp [B, T]) -> per-token estimate of KL(policy || reference), samples from the policy
KlEstimator = Callable[[Array, Array], Array]
KL_ESTIMATORS: Registry[KlEstimator] = Registry("KL estimator")


@KL_ESTIMATORS.register("k1")
def _k1(logp: Array, ref_logp: Array) -> Array:
    return logp - ref_logp


@KL_ESTIMATORS.register("k3")
def _k3(logp: Array, ref_logp: Array) -> Array:
    log_q_over_p = jnp.clip(ref_logp - logp, -20.0, 20.0)
    return jnp.exp(log_q_over_p) - log_q_over_p - 1.0


# ---------------------------------------------------------------------------------------------- aggregation
# (token_loss [B, T] zero where masked, mask [B, T] f32, cfg) -> (numerator, denominator)
Aggregation = Callable[[Array, Array, LossConfig], tuple[Array, Array]]
AGGREGATIONS: Registry[Aggregation] = Registry("loss aggregation")


@AGGREGATIONS.register("token-mean")
def _token_mean(loss: Array, mask: Array, cfg: LossConfig) -> tuple[Array, Array]:
    return jnp.sum(loss), jnp.sum(mask)


@AGGREGATIONS.register("seq-mean-token-mean")
def _seq_mean_token_mean(loss: Array, mask: Array, cfg: LossConfig) -> tuple[Array, Array]:
    n = jnp.sum(mask, axis=-1)
    per_seq = jnp.sum(loss, axis=-1) / jnp.maximum(n, 1.0)
    return jnp.sum(per_seq), jnp.sum((n > 0).astype(jnp.float32))


@AGGREGATIONS.register("seq-mean-token-scale")
def _seq_mean_token_scale(loss: Array, mask: Array, cfg: LossConfig) -> tuple[Array, Array]:
    assert cfg.token_scale is not None  # LossConfig refuses this aggregation without one
    scale = float(cfg.token_scale)
    n = jnp.sum(mask, axis=-1)
    return jnp.sum(loss) / scale, jnp.sum((n > 0).astype(jnp.float32))


# ---------------------------------------------------------------------------------------------- the loss
def clipped_surrogate(ratio: Array, adv: Array, bounds: ClipBounds) -> Array:
    """Per-token PPO objective (to maximise) with explicit ratio bounds and dual clip for A < 0:
    ``min(r A, clip(r, low, high) A)``, then for A < 0 ``max(that, dual * A)``."""
    obj = jnp.minimum(ratio * adv, jnp.clip(ratio, bounds.low, bounds.high) * adv)
    return jnp.where(adv < 0, jnp.maximum(obj, bounds.dual * adv), obj)


def policy_loss(
    logp: Array,
    old_logp: Array,
    advantages: Array,
    loss_mask: Array,
    cfg: LossConfig = LossConfig(),
    *,
    ref_logp: Array | None = None,
    entropy: Array | None = None,
    bounds: ClipBounds | None = None,
) -> LossTerms:
    """Policy-gradient loss terms for one (micro-)batch.

    logp [B, T]: log-probs of the sampled tokens under the policy being trained (the only differentiated input).
    old_logp [B, T]: log-probs under the policy that sampled them.  advantages: [B] (per sequence) or [B, T].
    loss_mask [B, T]: 1 where the token is trained on.  ref_logp [B, T]: reference policy, for the KL term and
    metric.  entropy [B, T]: per-token policy entropy, logged only.  bounds: precomputed clip bounds (global
    batch); None computes them from this batch with ``cfg.clip.rule``.
    """
    chex.assert_rank(logp, 2)
    chex.assert_equal_shape([logp, old_logp, loss_mask])
    if advantages.ndim == 1:
        chex.assert_shape(advantages, (logp.shape[0],))
        advantages = jnp.broadcast_to(advantages[:, None], logp.shape)
    else:
        chex.assert_equal_shape([logp, advantages])
    for name, extra in (("ref_logp", ref_logp), ("entropy", entropy)):
        if extra is not None and extra.shape != logp.shape:
            raise ValueError(f"{name} has shape {extra.shape}, expected {logp.shape}")
    if cfg.kl_coef > 0 and ref_logp is None:
        raise ValueError("kl_coef > 0 needs ref_logp")

    mask = loss_mask.astype(bool)
    maskf = mask.astype(jnp.float32)
    logp = jnp.where(mask, logp.astype(jnp.float32), 0.0)
    old_logp = jax.lax.stop_gradient(jnp.where(mask, old_logp.astype(jnp.float32), 0.0))
    adv = jax.lax.stop_gradient(jnp.where(mask, advantages.astype(jnp.float32), 0.0))

    ratio = importance_ratio(logp, old_logp, cfg.clip.log_ratio_clamp)
    ratio_sg = jax.lax.stop_gradient(ratio)
    if bounds is None:
        bounds = CLIP_RULES.get(cfg.clip.rule)(ratio_sg, adv, mask, cfg.clip)
    bounds = ClipBounds(*(jnp.asarray(b, jnp.float32) for b in jax.lax.stop_gradient(tuple(bounds))))

    pg_loss = jnp.where(mask, -clipped_surrogate(ratio, adv, bounds), 0.0)
    token_loss = pg_loss
    metrics: Metrics = {}
    if ref_logp is not None:
        ref = jax.lax.stop_gradient(jnp.where(mask, ref_logp.astype(jnp.float32), 0.0))
        kl = jnp.where(mask, KL_ESTIMATORS.get(cfg.kl_estimator)(logp, ref), 0.0)
        metrics["kl"] = Mean.of(kl, maskf)
        if cfg.kl_coef > 0:
            token_loss = token_loss + cfg.kl_coef * kl

    numerator, denominator = AGGREGATIONS.get(cfg.aggregation)(token_loss, maskf, cfg)

    log_ratio = jnp.log(ratio_sg)
    pos_tok, neg_tok = mask & (adv > 0), mask & (adv < 0)
    contrib = contributions_at(ratio_sg, adv, mask, bounds, cfg.clip)
    n_tokens = jnp.sum(maskf)
    metrics |= {
        "pg_loss": Mean.of(pg_loss, maskf),
        "clip_frac_high": Mean.of((pos_tok & (ratio_sg > bounds.high)).astype(jnp.float32), maskf),
        "clip_frac_low": Mean.of((neg_tok & (ratio_sg < bounds.low)).astype(jnp.float32), maskf),
        "clip_frac_dual": Mean.of((neg_tok & (ratio_sg > bounds.dual)).astype(jnp.float32), maskf),
        "clip_low": Mean.scalar(bounds.low),
        "clip_high": Mean.scalar(bounds.high),
        "pos_contribution": Mean(contrib.pos, n_tokens),
        "neg_contribution": Mean(contrib.neg, n_tokens),
        # KL(old || new) from samples of old: (r - 1) - log r >= 0
        "approx_kl": Mean.of((ratio_sg - 1.0) - log_ratio, maskf),
        "ratio_mean": Mean.of(ratio_sg, maskf),
        # |log pi_train - log pi_sampler| of the same tokens: before the update the two policies are the same
        # weights, so this is the sampler/trainer mismatch (kernels, batch shapes, precision) made visible
        "logprob_gap_mean": Mean.of(jnp.abs(log_ratio), maskf),
        "logprob_gap_max": Max.of(jnp.abs(log_ratio), maskf),
        "adv_mean": Mean.of(adv, maskf),
        "adv_sq": Mean.of(adv**2, maskf),
        "adv_pos_frac": Mean.of((adv > 0).astype(jnp.float32), maskf),
        # the batch's count of trained tokens: micro-batches add up to it (a mean of theirs would divide it)
        "loss_tokens": Sum.of(n_tokens),
    }
    if entropy is not None:
        metrics["entropy"] = Mean.of(jnp.where(mask, entropy, 0.0), maskf)
    return LossTerms(numerator, jax.lax.stop_gradient(denominator), metrics)


def add_terms(a: LossTerms, b: LossTerms) -> LossTerms:
    """Combine two micro-batches' terms; ``mean_loss`` of the sum equals the loss of the joined batch."""
    return LossTerms(a.numerator + b.numerator, a.denominator + b.denominator, add_metrics(a.metrics, b.metrics))


def mean_loss(terms: LossTerms) -> Array:
    """numerator / denominator (0 when the batch has no loss token)."""
    den = terms.denominator
    return jnp.where(den > 0, terms.numerator / jnp.where(den > 0, den, 1.0), 0.0)
