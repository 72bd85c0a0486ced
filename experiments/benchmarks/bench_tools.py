"""Benchmark the CoreCraft tools: in process, over stdio MCP, and over streamable-HTTP MCP with concurrent episodes.

    .venv/bin/python experiments/benchmarks/bench_tools.py [--seconds 5] [--concurrency 32] [--db PATH]

Every phase runs the same mix of read tools (one valid call of each, from ``corecraft.tools.examples``) through
the real code path: in process via ``call_tool`` on one core; stdio via the MCP SDK client against a
``corecraft serve`` subprocess (one episode); HTTP via N concurrent SDK clients, each its own episode, against a
``corecraft serve --transport http`` subprocess. The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx2
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from corecraft.tools import call_tool  # noqa: E402
from corecraft.tools.examples import READ_TOOLS, example_calls  # noqa: E402

TOKEN = "bench-token"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency_summary(samples_s: list[float], elapsed_s: float) -> dict[str, float]:
    return {
        "calls": len(samples_s),
        "calls_per_s": round(len(samples_s) / elapsed_s, 1),
        "p50_ms": round(statistics.median(samples_s) * 1e3, 3),
        "p95_ms": round(percentile(samples_s, 0.95) * 1e3, 3),
        "p99_ms": round(percentile(samples_s, 0.99) * 1e3, 3),
    }


def bench_in_process(world, mix: list[tuple[str, dict]], seconds: float) -> dict:
    with world.fork() as fork:
        for name, args in mix:  # warm up, and check every call in the mix succeeds
            result = call_tool(fork.conn, name, args)
            if result.is_error:
                raise RuntimeError(f"{name}: {result.text}")
        per_tool: dict[str, list[float]] = {name: [] for name, _ in mix}
        calls = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            for name, args in mix:
                t0 = time.perf_counter()
                call_tool(fork.conn, name, args)
                per_tool[name].append(time.perf_counter() - t0)
                calls += 1
        elapsed = time.perf_counter() - start
    return {
        "calls": calls,
        "calls_per_s": round(calls / elapsed, 1),
        "per_tool_p50_us": {n: round(statistics.median(s) * 1e6, 1) for n, s in per_tool.items()},
    }


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


async def bench_stdio(db: Path, mix: list[tuple[str, dict]], seconds: float) -> dict:
    params = StdioServerParameters(command=sys.executable, args=["-m", "corecraft.cli", "serve", "--db", str(db)],
                                   cwd=str(REPO), env=child_env())
    async with Client(params) as client:
        for name, args in mix:
            await client.call_tool(name, args)
        samples: list[float] = []
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            for name, args in mix:
                t0 = time.perf_counter()
                result = await client.call_tool(name, args)
                samples.append(time.perf_counter() - t0)
                if result.is_error:
                    raise RuntimeError(f"{name}: {result.content}")
        return latency_summary(samples, time.perf_counter() - start)


@contextlib.contextmanager
def http_server(db: Path):
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "corecraft.cli", "serve", "--transport", "http", "--port", "0", "--db", str(db),
         "--token", TOKEN], cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=log,
    )
    try:
        deadline = time.monotonic() + 120
        while not (m := re.search(r"listening on (http://\S+/mcp)", Path(log.name).read_text())):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {Path(log.name).read_text()}")
            time.sleep(0.05)
        yield m.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        Path(log.name).unlink(missing_ok=True)


async def bench_http(url: str, mix: list[tuple[str, dict]], seconds: float, concurrency: int) -> dict:
    samples: list[float] = []
    errors = 0
    ready = anyio.Event()
    started = 0

    async def episode(n: int) -> None:
        nonlocal errors, started
        headers = {"Authorization": f"Bearer {TOKEN}", "X-CoreCraft-Episode": f"bench-{n}"}
        async with httpx2.AsyncClient(headers=headers, timeout=60,
                                      limits=httpx2.Limits(max_connections=2)) as http, \
                Client(streamable_http_client(url, http_client=http)) as client:
            await client.call_tool(*mix[0])  # forks this episode's world
            started += 1
            if started == concurrency:
                ready.set()
            await ready.wait()
            i = n
            while time.perf_counter() < stop:
                name, args = mix[i % len(mix)]
                i += 1
                t0 = time.perf_counter()
                result = await client.call_tool(name, args)
                samples.append(time.perf_counter() - t0)
                errors += bool(result.is_error)

    stop = float("inf")
    async with anyio.create_task_group() as tg:
        for n in range(concurrency):
            tg.start_soon(episode, n)
        await ready.wait()
        start = time.perf_counter()
        stop = start + seconds
    elapsed = time.perf_counter() - start
    return latency_summary(samples, elapsed) | {"concurrency": concurrency, "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each phase")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent HTTP episodes")
    parser.add_argument("--db", type=Path, default=None, help="a saved world (default: build seed 0)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["inproc", "stdio", "http"])
    args = parser.parse_args()
    from corecraft.world import World

    print("building the world...", file=sys.stderr, flush=True)
    world = World.open(args.db) if args.db else World.build(seed=0)
    with world.fork() as fork:
        calls = example_calls(fork.conn)
    mix = [(name, calls[name]) for name in READ_TOOLS]
    figures: dict = {"tools_in_mix": len(mix), "world_seed": world.seed, "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or world.save(Path(tmp) / "world.db")
        if "inproc" not in args.skip:
            print("in process...", file=sys.stderr, flush=True)
            figures["in_process"] = bench_in_process(world, mix, args.seconds)
        if "stdio" not in args.skip:
            print("stdio...", file=sys.stderr, flush=True)
            figures["stdio"] = anyio.run(bench_stdio, db, mix, args.seconds)
        if "http" not in args.skip:
            print(f"streamable HTTP, {args.concurrency} episodes...", file=sys.stderr, flush=True)
            with http_server(db) as url:
                figures["http"] = anyio.run(bench_http, url, mix, args.seconds, args.concurrency)
    figures["loadavg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
