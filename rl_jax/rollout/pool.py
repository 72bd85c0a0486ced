"""The rollout pool: groups of episodes of many tasks in flight at once, over one batched generator.

``collect_groups`` runs ``group_size`` episodes of every drawn task concurrently (at most
``max_concurrent`` at a time), each on its own episode of the environment (an isolated world), and returns
them grouped by task in the order drawn. The batch's episodes of an in-process MCP server share one connected
client (``McpClients``); each call names its episode. Episode ids and PRNG keys are derived from the step, the
task's slot and the rollout's index, so a run that is resumed draws and samples exactly what it would have.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax

from rl_jax.chat import ChatFormat
from rl_jax.rollout.episode import McpClients, Rollout, RolloutConfig, run_episode
from rl_jax.rollout.generator import BatchedGenerator
from rl_jax.rollout.types import Environment


@dataclass(frozen=True)
class Group:
    """The rollouts of one task (GRPO's group)."""

    task_id: str
    rollouts: tuple[Rollout, ...]


async def collect_groups(
    env: Environment,
    generator: BatchedGenerator,
    fmt: ChatFormat,
    task_ids: Sequence[str],
    cfg: RolloutConfig,
    key: jax.Array,
    *,
    group_size: int | None = None,
    episode_prefix: str = "ep",
    slot_offset: int = 0,
    on_episode: Callable[[Rollout], None] | None = None,
) -> list[Group]:
    """Run ``group_size`` (default ``cfg.group_size``) episodes for each task; never raises for an episode's
    fault (see ``rl_jax.rollout.episode``). ``key`` is this batch's key: task slot ``i``'s rollout ``j`` samples
    from ``fold_in(fold_in(key, i), j)``. Under multi-host each process passes its share of the batch's tasks
    and where that share starts (``slot_offset``), so slots, keys and episode ids are the batch's own."""
    size = cfg.group_size if group_size is None else group_size
    context = cfg.context_limit or generator.context_limit
    limit = asyncio.Semaphore(cfg.max_concurrent)

    async def one(slot: int, task_id: str, index: int) -> Rollout:
        async with limit:
            with generator.episode() as done_generating:
                rollout = await run_episode(env, generator, fmt, task_id, f"{episode_prefix}-{slot}-{index}", cfg,
                                            jax.random.fold_in(jax.random.fold_in(key, slot), index), context,
                                            done_generating, clients)
        if on_episode is not None:
            on_episode(rollout)
        return rollout

    # the batch's episodes share one MCP client per in-process server (see McpClients)
    async with McpClients(connect_timeout_s=cfg.start_timeout_s) as clients, generator.running():
        results = await asyncio.gather(*(one(slot, task_id, j) for slot, task_id in enumerate(task_ids, slot_offset)
                                         for j in range(size)))
    return [Group(task_id, tuple(results[i * size:(i + 1) * size])) for i, task_id in enumerate(task_ids)]
