"""`corecraft world build|stats|diff`: build a world from a seed, print its entity counts, or diff two worlds."""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from corecraft.cli import CliError
from corecraft.world.diff import diff_bytes
from corecraft.world.world import MAX_SCALE, World, WorldError


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed must be a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"seed must be a non-negative integer, got {text!r}")
    return value


def _scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"scale must be a positive number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"scale must be a positive number, got {text!r}")
    if value > MAX_SCALE:
        raise argparse.ArgumentTypeError(f"scale must be at most {MAX_SCALE:g}, got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    world = subparsers.add_parser("world", help="build or inspect a CoreCraft world database")
    sub = world.add_subparsers(dest="world_command", metavar="SUBCOMMAND", required=True)

    build = sub.add_parser("build", help="generate a world from a seed and write it to a SQLite file")
    build.add_argument("--seed", type=_seed, default=0, help="generator seed (default 0)")
    build.add_argument(
        "--scale", type=_scale, default=1.0, help="size multiplier; 1.0 = default world (default 1.0)"
    )
    build.add_argument("--out", type=Path, default=Path("world.db"), help="output path (default world.db)")
    build.set_defaults(handler=_build)

    stats = sub.add_parser("stats", help="entity counts of a generated or saved world")
    source = stats.add_mutually_exclusive_group()
    source.add_argument("--seed", type=_seed, help="generate the world for this seed (default 0)")
    source.add_argument("--db", type=Path, help="read a saved world database")
    stats.add_argument("--scale", type=_scale, help="with --seed: size multiplier (default 1.0)")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.set_defaults(handler=_stats)

    changes = sub.add_parser("diff", help="rows inserted, updated and deleted between two saved worlds")
    changes.add_argument("before", type=Path, help="the world before (e.g. the base world)")
    changes.add_argument("after", type=Path, help="the world after (e.g. an episode's final database)")
    changes.add_argument("--json", action="store_true", help="print every changed row as one JSON object")
    changes.set_defaults(handler=_diff)


def _check_writable(out: Path) -> None:
    """Refuse an output path the world could not be saved to, before spending the build on it.

    Saving writes a temporary file next to ``out`` and renames it into place, so what must work is creating a
    file in ``out``'s directory: probing exactly that also catches read-only file systems and ACLs, which
    permission bits (and root) do not show.
    """
    if out.is_dir():
        raise CliError(f"--out {out} is a directory; give a file path such as {out / 'world.db'}")
    parent = out.parent
    if not parent.exists():
        raise CliError(f"--out {out}: directory {parent} does not exist")
    if not parent.is_dir():
        raise CliError(f"--out {out}: {parent} is not a directory")
    if out.exists() and not out.is_file():
        raise CliError(f"--out {out} exists and is not a regular file")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{out.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise CliError(f"--out {out}: cannot create files in {parent} ({exc.strerror or exc})") from None


def _build(args: argparse.Namespace) -> int:
    out: Path = args.out
    _check_writable(out)
    start = time.perf_counter()
    try:
        world = _build_with_progress(args.seed, args.scale)
        world.save(out)
    except WorldError as exc:
        raise CliError(str(exc)) from None
    stats = world.stats()
    print(
        f"wrote {out} ({world.size_bytes / 1e6:.1f} MB): {stats['total']:,} entities of "
        f"{len(stats['entity_types'])} types ({sum(stats['tables'].values()):,} rows in {len(stats['tables'])} "
        f"tables), today={world.today}, in {time.perf_counter() - start:.1f} s"
    )
    return 0


def _build_with_progress(seed: int, scale: float) -> World:
    """World.build with a progress bar on stderr (drawn on a terminal only)."""
    from corecraft.world.generate import PIPELINE

    steps = [section.__name__ for section in PIPELINE] + ["insert"]
    with tqdm(
        total=len(steps),
        desc=f"world seed={seed} scale={scale:g}",
        unit="step",
        file=sys.stderr,
        disable=None,
        leave=False,
    ) as bar:

        def step(name: str) -> None:
            bar.n = steps.index(name)
            bar.set_postfix_str(name)

        world = World.build(seed=seed, scale=scale, progress=step)
        bar.n = len(steps)
        bar.refresh()
        return world


def _stats(args: argparse.Namespace) -> int:
    if args.db is not None and args.scale is not None:
        raise CliError("--scale applies to a generated world (--seed), not to --db")
    try:
        if args.db is not None:
            world = World.open(args.db)
        else:
            world = _build_with_progress(args.seed or 0, 1.0 if args.scale is None else args.scale)
    except WorldError as exc:
        raise CliError(str(exc)) from None
    try:
        stats = world.stats()
    except WorldError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps(stats, sort_keys=False))
        return 0
    width = max(len(t) for t in [*stats["entity_types"], *stats["tables"]])
    print(f"CoreCraft world seed={stats['seed']} scale={world.scale:g} today={world.today}")
    print(f"{len(stats['entity_types'])} entity types:")
    for kind, n in stats["entity_types"].items():
        print(f"  {kind:<{width}}  {n:>9,}")
    print(f"  {'total':<{width}}  {stats['total']:>9,}")
    print(f"rows per table ({len(stats['tables'])} tables):")
    for table, n in stats["tables"].items():
        print(f"  {table:<{width}}  {n:>9,}")
    return 0


def _diff(args: argparse.Namespace) -> int:
    try:
        before, after = World.open(args.before), World.open(args.after)
    except WorldError as exc:
        raise CliError(str(exc)) from None
    changes = diff_bytes(before.serialize(), after.serialize())
    if args.json:
        print(
            json.dumps(
                {
                    table: {
                        "inserted": list(c.inserted),
                        "deleted": list(c.deleted),
                        "updated": [{"before": b, "after": a} for b, a in c.updated],
                        "changed_columns": sorted(c.changed_columns),
                    }
                    for table, c in changes.items()
                }
            )
        )
        return 0
    if not changes:
        print("no changes")
        return 0
    for table, c in changes.items():
        columns = f" ({', '.join(sorted(c.changed_columns))})" if c.changed_columns else ""
        print(
            f"{table}: +{len(c.inserted)} inserted, ~{len(c.updated)} updated{columns}, -{len(c.deleted)} deleted"
        )
    return 0
