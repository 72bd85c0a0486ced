"""`corecraft serve` says which world it serves in words a newcomer can act on: a base world built from a seed
holds none of the shipped tasks' records, and the banner says where those are."""

from __future__ import annotations

import argparse

from corecraft.server.cli import _world_named
from corecraft.tasks.store import load_task_set
from corecraft.world import World


def test_a_base_world_is_named_as_such_and_points_to_the_task_world():
    world = World.build(seed=0, scale=0.05)
    text = _world_named(argparse.Namespace(db=None), None, world)
    assert "base world built from seed 0" in text and "not the task world" in text
    assert "--db worlds/tasks/v<N>/world.db" in text


def test_the_task_world_and_a_saved_world_are_named():
    task_set = load_task_set(None)
    world = task_set.world()
    assert f"task world of {task_set.root}" in _world_named(argparse.Namespace(db=None), task_set, world)
    assert "world saved in w.db" in _world_named(argparse.Namespace(db="w.db"), None, world)
