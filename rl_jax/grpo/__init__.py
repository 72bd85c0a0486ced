"""GRPO as pure functions: group advantages, chunked token log-probs, clipped policy losses (BAPO default)."""

from rl_jax.grpo.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageConfig,
    group_advantages,
    group_reward_metrics,
)
from rl_jax.grpo.clipping import (
    CLIP_RULES,
    BapoConfig,
    BapoSums,
    ClipBounds,
    ClipConfig,
    bapo_candidates,
    bapo_contribution_sums,
    bapo_select_bounds,
    compute_clip_bounds,
    importance_ratio,
)
from rl_jax.grpo.logprobs import TokenLogProbs, token_logprobs_from_hidden, token_logprobs_from_logits
from rl_jax.grpo.losses import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    LossConfig,
    LossTerms,
    add_terms,
    clipped_surrogate,
    mean_loss,
    policy_loss,
)
from rl_jax.grpo.metrics import Max, Mean, Metrics, Sum, add_metrics, reduce_stacked, summarize

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATIONS",
    "CLIP_RULES",
    "KL_ESTIMATORS",
    "AdvantageConfig",
    "BapoConfig",
    "BapoSums",
    "ClipBounds",
    "ClipConfig",
    "LossConfig",
    "LossTerms",
    "Max",
    "Mean",
    "Metrics",
    "Sum",
    "TokenLogProbs",
    "add_metrics",
    "add_terms",
    "bapo_candidates",
    "bapo_contribution_sums",
    "bapo_select_bounds",
    "clipped_surrogate",
    "compute_clip_bounds",
    "group_advantages",
    "group_reward_metrics",
    "importance_ratio",
    "mean_loss",
    "policy_loss",
    "reduce_stacked",
    "summarize",
    "token_logprobs_from_hidden",
    "token_logprobs_from_logits",
]
