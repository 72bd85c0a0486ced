"""The learner's own settings: how many steps, how many tasks a step draws, when to evaluate and save.

Everything else a run needs is the rl_jax configs themselves (``SamplingConfig``, ``RolloutConfig``,
``TrainConfig`` with its loss, clipping, optimizer and checkpointing, ``AdvantageConfig``), composed by the
experiment; the learner takes them as they are, so no value is mirrored in two places.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LearnerConfig:
    steps: int = 2                  # GRPO steps (each: rollouts of tasks_per_step groups, then one update)
    tasks_per_step: int = 1         # groups per step; with RolloutConfig.group_size rollouts each
    eval_every: int = 0             # held-out evaluation every N steps (0: only before the first and after the last)
    eval_tasks: int = 4             # held-out tasks evaluated (the first N of the eval split, the same every time)
    eval_samples: int = 1           # runs per held-out task (Pass@k with k = this)
    eval_at_start: bool = True      # evaluate the initial policy too, so the curve has a baseline
    seed: int = 0                   # task draws and sampling keys derive from it and the step

    def __post_init__(self) -> None:
        for name in ("steps", "tasks_per_step", "eval_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.eval_every < 0 or self.eval_tasks < 0:
            raise ValueError("eval_every and eval_tasks must be >= 0")
