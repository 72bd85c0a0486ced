"""Token sampling for rollouts: pure next-token functions and a bucketed, compiled KV-cache sampler."""

from rl_jax.sampling.buckets import Buckets
from rl_jax.sampling.config import SamplingConfig
from rl_jax.sampling.functions import (
    categorical,
    sample_next,
    tempered_logprobs,
    token_logprobs,
    top_k_filter,
    top_p_filter,
)
from rl_jax.sampling.sampler import CompileRecord, PrefillPlan, Sampler, SampleResult, StopReason

__all__ = [
    "Buckets",
    "CompileRecord",
    "PrefillPlan",
    "SampleResult",
    "Sampler",
    "SamplingConfig",
    "StopReason",
    "categorical",
    "sample_next",
    "tempered_logprobs",
    "token_logprobs",
    "top_k_filter",
    "top_p_filter",
]
