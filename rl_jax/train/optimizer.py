"""The optimizer: optax AdamW behind global-norm clipping, on a linear-warmup + cosine-decay schedule."""

from __future__ import annotations

import dataclasses

import jax
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with warmup, cosine decay and global-norm clipping.

    ``total_steps`` is the length of the whole schedule, warmup included (optax's convention); 0 keeps the
    learning rate constant at ``learning_rate`` after warmup. Weight decay applies to matrices only: norm
    scales and biases are not decayed (the usual choice for transformers).
    """

    learning_rate: float = 1e-6
    warmup_steps: int = 0
    total_steps: int = 0
    final_lr_fraction: float = 0.1  # cosine decays to learning_rate * final_lr_fraction
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0  # None: no clipping

    def __post_init__(self) -> None:
        if self.learning_rate < 0:
            raise ValueError(f"learning_rate must be >= 0; got {self.learning_rate}")
        if self.warmup_steps < 0 or self.total_steps < 0:
            raise ValueError("warmup_steps and total_steps must be >= 0")
        if self.total_steps and self.total_steps <= self.warmup_steps:
            raise ValueError(
                f"total_steps ({self.total_steps}) includes warmup and must exceed warmup_steps "
                f"({self.warmup_steps}); use 0 for a constant rate after warmup"
            )
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0 or None; got {self.max_grad_norm}")


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    """The learning rate as a function of the optimizer's update count."""
    if cfg.total_steps:
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=cfg.learning_rate,
            warmup_steps=cfg.warmup_steps,
            decay_steps=cfg.total_steps,
            end_value=cfg.learning_rate * cfg.final_lr_fraction,
        )
    if cfg.warmup_steps:
        return optax.join_schedules(
            [optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps),
             optax.constant_schedule(cfg.learning_rate)],
            boundaries=[cfg.warmup_steps],
        )
    return optax.constant_schedule(cfg.learning_rate)


def _decay_mask(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW on the schedule; the optimizer state mirrors the params' tree."""
    adamw = optax.adamw(
        learning_rate=learning_rate_schedule(cfg),
        b1=cfg.b1,
        b2=cfg.b2,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        mask=_decay_mask,
    )
    if cfg.max_grad_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), adamw)
