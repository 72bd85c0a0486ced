"""Frozen experiment configs: small dataclasses composed into one ExperimentConfig, and named presets.

The rl_jax pieces keep their own configs (SamplingConfig, TrainConfig, ...); this module only says which
environment, which policy checkpoint, which mesh, and how much work, so one value describes a run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class EnvConfig:
    task_dir: str | None = None       # None: the shipped task set (worlds/tasks/v<N>)
    split: str = "train"
    num_tasks: int = 4                # tasks in the smoke batch


@dataclass(frozen=True)
class PolicyConfig:
    checkpoint: str | None = None     # HF dir or .gguf; None: the embedded SmolLM2-135M-Instruct GGUF
    dtype: str = "float32"


@dataclass(frozen=True)
class RolloutConfig:
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 96
    seed: int = 0


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "grpo_corecraft_smollm2"
    mesh: str = "1x1"                 # DATAxMODEL
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    out_dir: str = "runs"


PRESETS: dict[str, ExperimentConfig] = {
    "default": ExperimentConfig(),
    "tiny": ExperimentConfig(
        name="grpo_corecraft_tiny",
        env=EnvConfig(num_tasks=2),
        rollout=RolloutConfig(max_new_tokens=16),
    ),
}


def with_overrides(cfg: ExperimentConfig, **changes: object) -> ExperimentConfig:
    """Replace top-level fields, refusing unknown names (a typo must not silently do nothing)."""
    names = {f.name for f in dataclasses.fields(cfg)}
    unknown = set(changes) - names
    if unknown:
        raise ValueError(f"unknown config fields {sorted(unknown)}; known: {sorted(names)}")
    return dataclasses.replace(cfg, **{k: v for k, v in changes.items() if v is not None})
