"""Benchmark the CoreCraft world: build time, fork latency, memory per open fork.

    python experiments/benchmarks/bench_world.py [--forks 2000] [--open 200] [--builds 3] [--big-scale 50]

Targets (issue 3): fork p50 <= 1 ms and p99 <= 5 ms on the default world; memory per open fork <= 1.5x the
database's size; build from a seed <= 10 s. Peers, in the same run: other ways to give an episode a fresh
copy (SQLite's online backup into :memory:, and reloading a JSON dump of the whole database, which is what
tau2-bench does per episode). Progress goes to stderr; the last stdout line is one JSON object of figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from corecraft.world import World
from corecraft.world.schema import TABLES


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def time_calls(
    make: Callable[[], object], close: Callable[[object], None], n: int, cpu: list[float] | None = None
) -> list[float]:
    """Wall seconds per call of make() (each result closed outside the timed region); CPU seconds into cpu.

    On a shared machine the wall-clock tail is mostly the scheduler; the thread's CPU time is not.
    """
    samples = []
    for _ in range(n):
        start, start_cpu = time.perf_counter(), time.thread_time()
        obj = make()
        samples.append(time.perf_counter() - start)
        if cpu is not None:
            cpu.append(time.thread_time() - start_cpu)
        close(obj)
    return samples


def memory_per_fork(db_path: str, n_open: int) -> float:
    """RSS growth per open fork, measured in a fresh process that only loads the world: a process that built
    worlds or closed forks before has freed heap that new forks silently reuse, which would hide their cost."""
    world = World.open(db_path)
    gc.collect()
    before = rss_bytes()
    held = []
    for _ in range(n_open):
        fork = world.fork()
        # Touch every table, as an episode's searches would.
        for (table,) in fork.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            fork.conn.execute(f"SELECT * FROM {table}").fetchall()
        held.append(fork)
    gc.collect()
    return (rss_bytes() - before) / n_open


def latency_ms(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(samples, 50) * 1e3, 4),
        "p99_ms": round(percentile(samples, 99) * 1e3, 4),
        "mean_ms": round(statistics.fmean(samples) * 1e3, 4),
    }


def json_dump(world: World) -> str:
    """The whole database as one JSON document (tables -> rows), as a JSON-backed environment stores it: its data
    tables, not the search indexes derived from them."""
    with world.reader() as r:
        return json.dumps({t: [dict(row) for row in r.conn.execute(f"SELECT * FROM {t}")] for t in TABLES})


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--forks", type=int, default=2000, help="fork+close cycles timed (default 2000)")
    parser.add_argument("--open", type=int, default=200, help="forks held open at once for the memory figure")
    parser.add_argument("--builds", type=int, default=3, help="default-world builds timed (default 3)")
    parser.add_argument(
        "--big-scale", type=float, default=50.0,
        help="also time one build at this scale (default 50: 100k+ entities; 0: skip)"
    )
    parser.add_argument("--threads", type=int, default=8, help="threads forking at once (default 8)")
    parser.add_argument("--peer-n", type=int, default=200, help="calls timed per peer strategy (default 200)")
    parser.add_argument("--memory-child", metavar="DB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        print(memory_per_fork(args.memory_child, args.open))
        return 0
    if min(args.forks, args.open, args.builds, args.peer_n, args.threads) < 1 or args.big_scale < 0:
        parser.error("counts must be >= 1 and --big-scale >= 0")

    # Build time ------------------------------------------------------------------------------------------
    build_s = []
    world = None
    for i in range(args.builds):
        start = time.perf_counter()
        world = World.build(seed=0)
        build_s.append(time.perf_counter() - start)
        log(f"build {i + 1}/{args.builds}: {build_s[-1]:.2f} s")
    assert world is not None
    stats = world.stats()
    size = world.size_bytes
    big = None
    if args.big_scale:
        start = time.perf_counter()
        big_world = World.build(seed=0, scale=args.big_scale)
        big = {
            "scale": args.big_scale,
            "build_s": round(time.perf_counter() - start, 2),
            "entities": big_world.stats()["total"],  # the 14 core entity types
            "rows": sum(big_world.stats()["tables"].values()),
            "db_bytes": big_world.size_bytes,
        }
        log(f"build at scale {args.big_scale:g}: {big['build_s']} s, {big['entities']:,} entities")
        del big_world

    # Fork latency --------------------------------------------------------------------------------------------
    for fork in [world.fork() for _ in range(50)]:  # warm the allocator
        fork.close()
    fork_cpu_s: list[float] = []
    fork_s = time_calls(world.fork, lambda f: f.close(), args.forks, fork_cpu_s)
    log(
        f"fork: p50 {percentile(fork_s, 50) * 1e3:.3f} ms, p99 {percentile(fork_s, 99) * 1e3:.3f} ms "
        f"(CPU time p99 {percentile(fork_cpu_s, 99) * 1e3:.3f} ms)"
    )

    def fork_and_query() -> object:
        fork = world.fork()
        fork.conn.execute("SELECT COUNT(*) FROM orders WHERE status = 'delivered'").fetchone()
        return fork

    first_query_s = time_calls(fork_and_query, lambda f: f.close(), args.forks // 4 or 1)

    # Memory per open fork (fresh process) ----------------------------------------------------------------
    with tempfile.TemporaryDirectory() as tmp:
        db_path = str(world.save(Path(tmp) / "world.db"))
        child = subprocess.run(
            [sys.executable, __file__, "--memory-child", db_path, "--open", str(args.open)],
            capture_output=True,
            text=True,
            check=True,
        )
    per_fork = float(child.stdout.strip().splitlines()[-1])
    log(
        f"memory: {per_fork / 1e6:.2f} MB per open fork, database {size / 1e6:.2f} MB ({per_fork / size:.2f}x)"
    )

    # Forks from many threads at once (rollout workers) ----------------------------------------------------
    def worker(n: int) -> None:
        for _ in range(n):
            with world.fork() as fork:
                fork.conn.execute("SELECT COUNT(*) FROM orders").fetchone()

    per_thread = max(1, args.forks // (4 * args.threads))
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.threads) as pool:
        list(pool.map(worker, [per_thread] * args.threads))
    threaded_per_s = per_thread * args.threads / (time.perf_counter() - start)
    log(f"{args.threads} threads: {threaded_per_s:,.0f} fork+query per second")

    # What an episode changed (graders) --------------------------------------------------------------------
    with world.fork() as fork:
        with fork.conn:
            fork.conn.execute("UPDATE orders SET status = 'cancelled' WHERE order_id = 'ORD-200001'")
        changes_s = time_calls(fork.changes, lambda _: None, 10)

    # Peers: other ways to a fresh per-episode copy ---------------------------------------------------------
    base = sqlite3.connect(":memory:", check_same_thread=False)
    base.deserialize(world.serialize())

    def backup_copy() -> sqlite3.Connection:
        conn = sqlite3.connect(":memory:", check_same_thread=False)
        base.backup(conn)
        return conn

    backup_s = time_calls(backup_copy, lambda c: c.close(), args.peer_n)

    def backup_and_query() -> sqlite3.Connection:
        conn = backup_copy()
        conn.execute("SELECT COUNT(*) FROM orders WHERE status = 'delivered'").fetchone()
        return conn

    backup_query_s = time_calls(backup_and_query, lambda c: c.close(), args.peer_n)
    dump = json_dump(world)
    json_s = time_calls(lambda: json.loads(dump), lambda _: None, max(5, args.peer_n // 10))
    base.close()
    log(
        f"peer backup(): p50 {percentile(backup_s, 50) * 1e3:.3f} ms; peer JSON reload: p50 {percentile(json_s, 50) * 1e3:.1f} ms"
    )

    result = {
        "bench": "world",
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "entities": stats["total"],  # the 14 core entity types; "rows" counts every data table
        "entity_types": len(stats["entity_types"]),
        "rows": sum(stats["tables"].values()),
        "db_bytes": size,
        "build_s_median": round(statistics.median(build_s), 3),
        "build_s_all": [round(s, 3) for s in build_s],
        "fork": {"n": args.forks, **latency_ms(fork_s)},
        "fork_cpu_time": {"n": args.forks, **latency_ms(fork_cpu_s)},
        "fork_plus_first_query": {"n": len(first_query_s), **latency_ms(first_query_s)},
        "memory_per_open_fork_bytes": round(per_fork),
        "memory_per_fork_over_db_size": round(per_fork / size, 3),
        "open_forks": args.open,
        "threads": {"n_threads": args.threads, "fork_plus_query_per_s": round(threaded_per_s)},
        "fork_changes": {"n": len(changes_s), **latency_ms(changes_s)},
        "big_world": big,
        "peers": {
            "sqlite_backup_to_memory": {"n": len(backup_s), **latency_ms(backup_s)},
            "sqlite_backup_plus_first_query": {"n": len(backup_query_s), **latency_ms(backup_query_s)},
            "json_reload_whole_db": {"n": len(json_s), "json_bytes": len(dump), **latency_ms(json_s)},
        },
        "targets_met": {
            "fork_p50_le_1ms": percentile(fork_s, 50) <= 1e-3,
            "fork_p99_le_5ms": percentile(fork_s, 99) <= 5e-3,
            "memory_le_1_5x": per_fork <= 1.5 * size,
            "build_le_10s": statistics.median(build_s) <= 10.0,
        },
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
