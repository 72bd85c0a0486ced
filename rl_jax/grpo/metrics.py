"""Metrics that add up exactly across micro-batches and data shards.

A metric is a ``Mean(total, count)``, a ``Sum(total)`` or a ``Max(value)``: micro-batch metrics are combined
leaf by leaf (``add_metrics``; a ``Max`` by its maximum) and a mean is divided once at the end
(``summarize``), so a metric over 4 micro-batches equals the metric over the batch. A ``Sum`` (a count of
tokens, say) is reported as its total, a ``Max`` as its value (0 when nothing was weighted).
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


class Max(NamedTuple):
    """The largest weighted value over the batch (e.g. the worst sampler/trainer log-prob gap)."""

    value: Array   # scalar; -inf when nothing was weighted

    @classmethod
    def of(cls, values: Array, weights: Array) -> Max:
        values = jax.lax.stop_gradient(values).astype(jnp.float32)
        return cls(jnp.max(jnp.where(weights > 0, values, -jnp.inf), initial=-jnp.inf))


Metrics = dict[str, Mean | Sum | Max]


def add_metrics(a: Metrics, b: Metrics) -> Metrics:
    """Combine the metrics of two micro-batches (same keys)."""
    if a.keys() != b.keys():
        raise ValueError(f"metric keys differ: {sorted(a.keys() ^ b.keys())}")
    return {k: Max(jnp.maximum(a[k].value, b[k].value)) if isinstance(a[k], Max) else jax.tree.map(jnp.add, a[k], b[k])
            for k in a}


def reduce_stacked(stacked: Metrics) -> Metrics:
    """Combine metrics stacked along a leading micro-batch axis (what ``lax.scan`` returns) into one."""
    return {k: Max(jnp.max(m.value, axis=0)) if isinstance(m, Max) else jax.tree.map(lambda x: jnp.sum(x, axis=0), m)
            for k, m in stacked.items()}


def _value(metric: Mean | Sum | Max) -> Array:
    if isinstance(metric, Sum):
        return metric.total
    if isinstance(metric, Max):
        return jnp.where(jnp.isfinite(metric.value), metric.value, 0.0)
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
