"""Rollouts for agent RL: many episodes in flight over MCP, batched generation, token-exact transcripts.

    env: Environment                       # any object with task_ids / start / grade / end (rollout.types)
    generator = BatchedGenerator(sampler, sampling, context_limit=8192)
    groups = await collect_groups(env, generator, fmt, task_ids, RolloutConfig(group_size=4), key)

rl_jax never imports an environment: CoreCraft's lives in ``corecraft.env.environment``.
"""

from rl_jax.rollout.episode import EpisodeTools, McpClients, Rollout, RolloutConfig, mcp_client, run_episode
from rl_jax.rollout.generator import BatchedGenerator, GeneratorStats
from rl_jax.rollout.pool import Group, collect_groups
from rl_jax.rollout.types import (
    FAULT_REASONS,
    Environment,
    EpisodeRecord,
    EpisodeStart,
    Generation,
    Generator,
    Grade,
    McpTarget,
    StopReason,
    ToolCallRecord,
)

__all__ = [
    "FAULT_REASONS",
    "BatchedGenerator",
    "Environment",
    "EpisodeRecord",
    "EpisodeStart",
    "EpisodeTools",
    "Generation",
    "Generator",
    "GeneratorStats",
    "Grade",
    "Group",
    "McpClients",
    "McpTarget",
    "Rollout",
    "RolloutConfig",
    "StopReason",
    "ToolCallRecord",
    "collect_groups",
    "mcp_client",
    "run_episode",
]
