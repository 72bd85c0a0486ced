"""Clipping rules for the policy-ratio surrogate, registered by name; BAPO adaptive clipping is the default.

A rule maps a batch to ``ClipBounds``: explicit ratio bounds ``[low, high]`` and a dual-clip cap for negative
advantages (``inf``: off). Fixed rules ignore the batch:

* ``"ppo"``: symmetric ``[1 - eps, 1 + eps]``, eps = 0.2.
* ``"dapo"``: clip-higher ``[1 - eps_low, 1 + eps_high]`` = ``[0.8, 1.28]`` (Yu et al. 2025).
* ``"dual"``: ppo bounds plus dual clip c = 3 for A < 0 (Ye et al. 2020).
* ``"bapo"``: adaptive bounds (Xi et al. 2025, arXiv 2510.18927) as defined in corecraft-facts.md, plus dual
  clip c = 3.

BAPO, per batch. Ratio r = exp(clamp(logp - old_logp, +-20)). With candidate bounds (c_low, c_high) each
masked token contributes an effective advantage ``A * min(r, c_high)`` (A >= 0) or ``A * max(r, c_low)``
(A < 0); P = sum of the positive parts, N = sum of the magnitudes of the negative parts. Starting at
(0.6, 1.2), c_low is raised in steps toward 0.9 while P / N < rho_0 (0.5); if still below, c_high is raised in
steps toward 3.0. The first candidate meeting rho_0 wins; if none does, the last (0.9, 3.0).

How it is computed here: the candidates form one fixed, static grid (c_low steps at c_high = start, then
c_high steps at c_low = max), P and N are evaluated for all of them in one fused reduction, and the first
satisfying index is taken with ``argmax``: no Python loop over device values, one program under ``jit``.
The sums are ``jnp.sum`` over the whole batch given, so under ``jit`` with the batch sharded over the data
axis they are global sums, as the method requires. Gradients are stopped through the search.

For gradient accumulation the per-candidate sums add up across micro-batches: ``bapo_contribution_sums``
on each micro-batch, add, then ``bapo_select_bounds`` once, and pass the bounds to the loss.

Note on the effective-advantage definition (``BapoConfig.contribution``): "surrogate" (default) is the
definition above, the one the authors' public verl recipe uses. In it, raising c_low *raises* N (negative
tokens below c_low count at c_low), so the c_low phase can never reach rho_0 and the search in effect moves
c_low to its maximum and then raises c_high. "gradient" counts only tokens that still carry gradient after
clipping (``A * r`` for A >= 0 and r <= c_high; ``|A| * r`` for A < 0 and c_low <= r <= dual c), the reading
of the paper's text in which raising c_low drops low-ratio negative tokens and so raises P / N.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from rl_jax.grpo.registry import Registry

Array = chex.Array

DEFAULT_LOG_RATIO_CLAMP = 20.0


class ClipBounds(NamedTuple):
    low: Array    # scalar ratio bound: tokens with A < 0 and r < low get no gradient
    high: Array   # scalar ratio bound: tokens with A > 0 and r > high get no gradient
    dual: Array   # scalar dual-clip cap for A < 0 (r > dual: no gradient); inf when off


@dataclass(frozen=True)
class BapoConfig:
    rho0: float = 0.5               # target P / N
    low_start: float = 0.6
    low_max: float = 0.9
    low_step: float = 0.05
    high_start: float = 1.2
    high_max: float = 3.0
    high_step: float = 0.05
    contribution: str = "surrogate"  # "surrogate" | "gradient": see the module docstring

    def __post_init__(self) -> None:
        if not (0 < self.low_start <= self.low_max <= 1.0 <= self.high_start <= self.high_max):
            raise ValueError(f"BAPO bounds need 0 < low_start <= low_max <= 1 <= high_start <= high_max: {self}")
        if self.low_step <= 0 or self.high_step <= 0:
            raise ValueError(f"BAPO steps must be > 0: {self}")
        if self.contribution not in ("surrogate", "gradient"):
            raise ValueError(f"BapoConfig.contribution must be 'surrogate' or 'gradient', got {self.contribution!r}")


@dataclass(frozen=True)
class ClipConfig:
    """``rule`` picks a registered clipping rule: "bapo" (default), "ppo", "dapo", "dual"."""

    rule: str = "bapo"
    eps_low: float = 0.2
    eps_high: float | None = None    # None: eps_low for "ppo"/"dual", 0.28 for "dapo"
    dual_clip_c: float = 3.0         # used by "dual" and "bapo"
    bapo: BapoConfig = field(default_factory=BapoConfig)
    log_ratio_clamp: float = DEFAULT_LOG_RATIO_CLAMP

    def __post_init__(self) -> None:
        if not 0 < self.eps_low < 1:
            raise ValueError(f"eps_low must be in (0, 1), got {self.eps_low}")
        if self.dual_clip_c <= 1:
            raise ValueError(f"dual_clip_c must be > 1, got {self.dual_clip_c}")


# (ratio [B, T] f32, advantages [B, T] f32, mask [B, T] bool, cfg) -> ClipBounds; inputs already stop-gradient
ClipRule = Callable[[Array, Array, Array, ClipConfig], ClipBounds]

CLIP_RULES: Registry[ClipRule] = Registry("clip rule")


def importance_ratio(logp: Array, old_logp: Array, clamp: float = DEFAULT_LOG_RATIO_CLAMP) -> Array:
    """r = exp(logp - old_logp), the log-ratio clamped to +-clamp so a stale token cannot overflow."""
    return jnp.exp(jnp.clip(logp.astype(jnp.float32) - old_logp.astype(jnp.float32), -clamp, clamp))


def _fixed(low: float, high: float, dual: float = math.inf) -> ClipBounds:
    return ClipBounds(*(jnp.asarray(v, jnp.float32) for v in (low, high, dual)))


@CLIP_RULES.register("ppo")
def _ppo(ratio: Array, adv: Array, mask: Array, cfg: ClipConfig) -> ClipBounds:
    eps_high = cfg.eps_low if cfg.eps_high is None else cfg.eps_high
    return _fixed(1.0 - cfg.eps_low, 1.0 + eps_high)


@CLIP_RULES.register("dapo")
def _dapo(ratio: Array, adv: Array, mask: Array, cfg: ClipConfig) -> ClipBounds:
    eps_high = 0.28 if cfg.eps_high is None else cfg.eps_high
    return _fixed(1.0 - cfg.eps_low, 1.0 + eps_high)


@CLIP_RULES.register("dual")
def _dual(ratio: Array, adv: Array, mask: Array, cfg: ClipConfig) -> ClipBounds:
    eps_high = cfg.eps_low if cfg.eps_high is None else cfg.eps_high
    return _fixed(1.0 - cfg.eps_low, 1.0 + eps_high, cfg.dual_clip_c)


def _steps(start: float, stop: float, step: float) -> list[float]:
    """start, start + step, ... capped at stop (the last step lands exactly on stop), as the paper steps."""
    n = math.ceil((stop - start) / step - 1e-9)
    return [min(start + i * step, stop) for i in range(n + 1)]


def bapo_candidates(cfg: BapoConfig) -> np.ndarray:
    """The static search grid, ``[K, 2]`` rows (c_low, c_high) in the order the search visits them."""
    lows = _steps(cfg.low_start, cfg.low_max, cfg.low_step)
    highs = _steps(cfg.high_start, cfg.high_max, cfg.high_step)
    rows = [(lo, cfg.high_start) for lo in lows] + [(lows[-1], hi) for hi in highs[1:]]
    return np.asarray(rows, dtype=np.float32)


class BapoSums(NamedTuple):
    pos: Array   # [K] P for each candidate
    neg: Array   # [K] N for each candidate


def _contributions(
    ratio: Array, adv: Array, mask: Array, low: Array, high: Array, dual: Array, how: str
) -> BapoSums:
    """P and N summed over the last two (token) axes; bounds broadcast, so a [K, 1, 1] grid gives [K] sums."""
    pos_tok = mask & (adv > 0)
    neg_tok = mask & (adv < 0)
    if how == "surrogate":
        pos = jnp.where(pos_tok, adv * jnp.minimum(ratio, high), 0.0)
        neg = jnp.where(neg_tok, -adv * jnp.maximum(ratio, low), 0.0)
    else:
        pos = jnp.where(pos_tok & (ratio <= high), adv * ratio, 0.0)
        neg = jnp.where(neg_tok & (ratio >= low) & (ratio <= dual), -adv * ratio, 0.0)
    return BapoSums(jnp.sum(pos, axis=(-2, -1)), jnp.sum(neg, axis=(-2, -1)))


def _bapo_sums_from_ratio(ratio: Array, adv: Array, mask: Array, cfg: ClipConfig) -> BapoSums:
    grid = jnp.asarray(bapo_candidates(cfg.bapo))
    low, high = grid[:, 0, None, None], grid[:, 1, None, None]
    return _contributions(ratio, adv, mask, low, high, jnp.float32(cfg.dual_clip_c), cfg.bapo.contribution)


def _as_token_inputs(
    logp: Array, old_logp: Array, advantages: Array, loss_mask: Array, clamp: float
) -> tuple[Array, Array, Array]:
    """Validate shapes; return (ratio [B, T], advantages [B, T], mask [B, T] bool), gradient-free and with
    masked entries neutralised (ratio 1, advantage 0) so garbage there cannot leak into sums."""
    chex.assert_rank(logp, 2)
    chex.assert_equal_shape([logp, old_logp, loss_mask])
    if advantages.ndim == 1:
        chex.assert_shape(advantages, (logp.shape[0],))
        advantages = jnp.broadcast_to(advantages[:, None], logp.shape)
    else:
        chex.assert_equal_shape([logp, advantages])
    mask = loss_mask.astype(bool)
    logp, old_logp, advantages = jax.lax.stop_gradient((logp, old_logp, advantages))
    ratio = jnp.where(mask, importance_ratio(jnp.where(mask, logp, 0.0), jnp.where(mask, old_logp, 0.0), clamp), 1.0)
    adv = jnp.where(mask, advantages.astype(jnp.float32), 0.0)
    return ratio, adv, mask


def bapo_contribution_sums(
    logp: Array, old_logp: Array, advantages: Array, loss_mask: Array, cfg: ClipConfig = ClipConfig()
) -> BapoSums:
    """P and N for every candidate of the BAPO grid over this batch; additive across micro-batches."""
    ratio, adv, mask = _as_token_inputs(logp, old_logp, advantages, loss_mask, cfg.log_ratio_clamp)
    return _bapo_sums_from_ratio(ratio, adv, mask, cfg)


def bapo_select_bounds(sums: BapoSums, cfg: ClipConfig = ClipConfig()) -> ClipBounds:
    """The first candidate with P >= rho_0 * N (N = 0 counts as met); the last candidate if none is."""
    grid = jnp.asarray(bapo_candidates(cfg.bapo))
    chex.assert_shape([sums.pos, sums.neg], (grid.shape[0],))
    pos, neg = jax.lax.stop_gradient(sums)
    ok = pos >= cfg.bapo.rho0 * neg
    idx = jnp.where(jnp.any(ok), jnp.argmax(ok), grid.shape[0] - 1)
    return ClipBounds(grid[idx, 0], grid[idx, 1], jnp.asarray(cfg.dual_clip_c, jnp.float32))


@CLIP_RULES.register("bapo")
def _bapo(ratio: Array, adv: Array, mask: Array, cfg: ClipConfig) -> ClipBounds:
    return bapo_select_bounds(_bapo_sums_from_ratio(ratio, adv, mask, cfg), cfg)


def compute_clip_bounds(
    logp: Array, old_logp: Array, advantages: Array, loss_mask: Array, cfg: ClipConfig = ClipConfig()
) -> ClipBounds:
    """The bounds ``cfg.rule`` picks for this batch (advantages ``[B]`` or ``[B, T]``); no gradient flows."""
    rule = CLIP_RULES.get(cfg.rule)
    ratio, adv, mask = _as_token_inputs(logp, old_logp, advantages, loss_mask, cfg.log_ratio_clamp)
    return rule(ratio, adv, mask, cfg)


def contributions_at(ratio: Array, adv: Array, mask: Array, bounds: ClipBounds, cfg: ClipConfig) -> BapoSums:
    """P and N (scalars) at the given bounds, under ``cfg.bapo.contribution``; for the P/N metric."""
    return _contributions(ratio, adv, mask, bounds.low, bounds.high, bounds.dual, cfg.bapo.contribution)
