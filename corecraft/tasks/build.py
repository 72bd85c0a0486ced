"""Building a task set: the base world plus every family's plantings (the "task world"), and the tasks.

Both come from one seed, in a fixed order (families sorted by name, instances in order), so rebuilding gives
the same world bytes and the same task file. Splits: a held-out family is entirely in ``eval``; every other
family puts its last ``eval_per_family`` instances in ``eval`` and the rest in ``train``.
Hidden ground truth and rubrics go only into the task files, never into the world the agent sees.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tqdm import tqdm

import corecraft.tasks.families  # noqa: F401  (registers the families)
from corecraft.tasks.family import FAMILIES, demands_met
from corecraft.tasks.model import Task
from corecraft.tasks.plant import Planter
from corecraft.world.schema import optimize_text_indexes
from corecraft.world.world import World


@dataclass(frozen=True)
class BuildConfig:
    seed: int = 0
    scale: float = 1.0
    instances: int = 33          # per training family
    eval_per_family: int = 4     # of those, held back for the eval split
    held_out_instances: int = 12  # per held-out family (all eval)
    families: tuple[str, ...] | None = None  # None = every registered family


def build_task_set(cfg: BuildConfig = BuildConfig(), *, progress: bool = False,
                   base: World | None = None) -> tuple[World, list[Task]]:
    base = base or World.build(seed=cfg.seed, scale=cfg.scale)
    names = sorted(cfg.families or FAMILIES)
    unknown = set(names) - set(FAMILIES)
    if unknown:
        raise KeyError(f"unknown families: {sorted(unknown)}")
    fork = base.fork()
    try:
        planter = Planter(fork.conn, random.Random(cfg.seed))
        tasks: list[Task] = []
        for name in tqdm(names, desc="families", disable=not progress):
            fam = FAMILIES[name]
            n = cfg.held_out_instances if fam.held_out else cfg.instances
            for i in range(n):
                planter.rng = random.Random(f"{cfg.seed}/{name}/{i}")
                inst = fam.make(planter, i)
                missing = set(fam.demands) - demands_met(inst.oracle.tool_calls)
                if missing:  # a "hard" label its oracle does not earn
                    raise ValueError(f"{name} instance {i}: the oracle does not make the declared demands "
                                     f"{sorted(missing)}")
                split = "eval" if fam.held_out or i >= n - cfg.eval_per_family else "train"
                tasks.append(Task(id=f"{name}-{i:03d}", family=name, category=fam.category,
                                  difficulty=fam.difficulty, split=split, request=inst.request,
                                  criteria=inst.criteria, ground_truth=inst.ground_truth, oracle=inst.oracle,
                                  instance=i))
        optimize_text_indexes(fork.conn)  # the plantings' rows were indexed one by one
        fork.conn.commit()
        world = World.from_bytes(fork.serialize())
    finally:
        fork.close()
    return world, tasks
