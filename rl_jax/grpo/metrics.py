"""Metrics that add up exactly across micro-batches and data shards.

A metric is a ``Mean(total, count)`` or a ``Sum(total)``: micro-batch metrics are summed leaf by leaf
(``add_metrics``) and a mean is divided once at the end (``summarize``), so a metric over 4 micro-batches
equals the metric over the batch. A ``Sum`` (a count of tokens, say) is reported as its total.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

Array = chex.Array


class Mean(NamedTuple):
    total: Array   # sum of the values (scalar)
    count: Array   # sum of their weights (scalar)

    @classmethod
    def of(cls, values: Array, weights: Array) -> Mean:
        """Weighted mean of ``values`` under ``weights`` (same shape); weight 0 entries may hold NaN."""
        values = jax.lax.stop_gradient(values).astype(jnp.float32)
        weights = weights.astype(jnp.float32)
        return cls(jnp.sum(jnp.where(weights > 0, values * weights, 0.0)), jnp.sum(weights))

    @classmethod
    def scalar(cls, value: Array) -> Mean:
        return cls(jax.lax.stop_gradient(jnp.asarray(value, jnp.float32)), jnp.ones((), jnp.float32))


class Sum(NamedTuple):
    """A total over the batch (e.g. the number of trained tokens): micro-batches add, nothing is divided."""

    total: Array   # scalar

    @classmethod
    def of(cls, values: Array) -> Sum:
        return cls(jnp.sum(jax.lax.stop_gradient(values).astype(jnp.float32)))


Metrics = dict[str, Mean | Sum]


def add_metrics(a: Metrics, b: Metrics) -> Metrics:
    """Combine the metrics of two micro-batches (same keys)."""
    if a.keys() != b.keys():
        raise ValueError(f"metric keys differ: {sorted(a.keys() ^ b.keys())}")
    return jax.tree.map(jnp.add, a, b)


def _value(metric: Mean | Sum) -> Array:
    if isinstance(metric, Sum):
        return metric.total
    return jnp.where(metric.count > 0, metric.total / jnp.where(metric.count > 0, metric.count, 1.0), 0.0)


def summarize(metrics: Metrics) -> dict[str, Array]:
    """Scalars for logging. Derived figures: ``adv_std`` from ``adv_sq``, ``pos_neg_ratio`` = P / N."""
    out = {k: _value(m) for k, m in metrics.items()}
    if "adv_sq" in out and "adv_mean" in out:
        out["adv_std"] = jnp.sqrt(jnp.maximum(out.pop("adv_sq") - out["adv_mean"] ** 2, 0.0))
    if "pos_contribution" in metrics and "neg_contribution" in metrics:
        pos, neg = metrics["pos_contribution"].total, metrics["neg_contribution"].total
        out["pos_neg_ratio"] = jnp.where(neg > 0, pos / jnp.where(neg > 0, neg, 1.0), jnp.inf)
    return out
