"""The shipped task set on disk: ``worlds/tasks/v<N>/``.

  manifest.json   version, seed, scale, build settings, counts, the task world's digest
  train.jsonl     training tasks (request, rubric, hidden ground truth, oracle), one per line
  eval.jsonl      evaluation tasks, including whole held-out families
  world.db        the task world (base world + plantings); a cache, rebuilt from the seed when absent

The world file is not versioned (it is several MB and fully determined by the manifest); loading rebuilds
it when missing and refuses one whose digest differs from the manifest's. The digest
(``corecraft.world.world.digest``) is a sha256 that ignores the SQLite writer-version header field, so the
same world digests the same under any SQLite release.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corecraft.shipped import worlds_dir
from corecraft.tasks.model import Task, TaskFormatError, dump_tasks, load_tasks

VERSION = 1
DEFAULT_DIR = worlds_dir() / "tasks" / f"v{VERSION}"  # the checkout's, or an installed package's copy
WORLD_FILE = "world.db"


class TaskStoreError(RuntimeError):
    """The task set is missing, malformed, or its world does not match its manifest."""


def counts(tasks: list[Task]) -> dict[str, Any]:
    return {
        "tasks": len(tasks),
        "by_split": dict(sorted(Counter(t.split for t in tasks).items())),
        "by_category": dict(sorted(Counter(t.category for t in tasks).items())),
        "by_difficulty": dict(sorted(Counter(t.difficulty for t in tasks).items())),
        "by_family": dict(sorted(Counter(t.family for t in tasks).items())),
        "families": len({t.family for t in tasks}),
        "eval_only_families": sorted({t.family for t in tasks} - {t.family for t in tasks if t.split == "train"}),
    }


@dataclass(frozen=True)
class TaskSet:
    root: Path
    manifest: dict[str, Any]
    tasks: list[Task]

    def world(self):  # -> World (imported lazily: loading tasks needs no world code)
        from corecraft.world.world import World

        path = self.root / WORLD_FILE
        want = self.manifest["world_digest"]
        if path.exists():
            world = World.open(path)
            if world.digest == want:
                return world
        world = rebuild_world(self.manifest)
        if world.digest != want:
            raise TaskStoreError(f"{self.root}: rebuilding the task world from seed {self.manifest['seed']} gave "
                                 "different bytes than the manifest records (world generator changed?); "
                                 "run `corecraft tasks build` to regenerate the task set")
        with contextlib.suppress(Exception):  # a read-only checkout still works; it rebuilds next time
            world.save(path)
        return world


def rebuild_world(manifest: dict[str, Any]):
    from corecraft.tasks.build import BuildConfig, build_task_set

    build = dict(manifest["build"])
    if build.get("families") is not None:
        build["families"] = tuple(build["families"])
    cfg = BuildConfig(**build)
    world, _ = build_task_set(cfg)
    return world


def save_task_set(root: Path, world: Any, tasks: list[Task], build: dict[str, Any]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    dump_tasks([t for t in tasks if t.split == "train"], root / "train.jsonl")
    dump_tasks([t for t in tasks if t.split == "eval"], root / "eval.jsonl")
    manifest = {"version": VERSION, "seed": build["seed"], "scale": build["scale"], "build": build,
                "world_digest": world.digest, "world_today": world.today.isoformat(), **counts(tasks)}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    world.save(root / WORLD_FILE)
    return root


def load_task_set(root: Path | None = None) -> TaskSet:
    root = Path(root) if root else DEFAULT_DIR
    manifest_path = root / "manifest.json"
    if not manifest_path.exists():
        raise TaskStoreError(f"{root}: no manifest.json (build a task set with `corecraft tasks build --out {root}`)")
    try:
        manifest = json.loads(manifest_path.read_text())
        tasks = [*load_tasks(root / "train.jsonl"), *load_tasks(root / "eval.jsonl")]
    except (OSError, json.JSONDecodeError, TaskFormatError) as exc:
        raise TaskStoreError(f"{root}: {exc}") from None
    return TaskSet(root, manifest, tasks)
