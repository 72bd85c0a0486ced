"""The OpenAI-compatible server's overhead: tokens/s of concurrent HTTP clients against the same engine called
directly with the same requests (issue 20's target: the server within 15% of the engine).

Each of ``clients`` clients sends one chat request (its own short conversation, greedy, ``max_tokens`` new
tokens); the engine path renders the very same prompts and submits them all at once. A warm-up round compiles
what the engine needs first; then the two paths alternate for ``rounds`` rounds (so both see the same machine
load) and each path's tokens/s is its total new tokens over its total wall time. The server runs in this
process's event loop on a loopback port, exactly as ``python -m rl_jax.serve`` runs it; the clients are plain
aiohttp sessions in the same loop (what they cost is counted against the server).

    .venv/bin/python experiments/benchmarks/bench_serve.py [--engine continuous|plain] [--clients 32]
        [--max-tokens 16] [--rounds 2]

The last line printed is one JSON object: ``server_over_engine`` (server tokens/s over engine tokens/s),
both throughputs, the settings and the engine's compiled-program count. ``bench_engine.py`` imports
``server_over_engine``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rl_jax.chat import ChatFormat
from rl_jax.engine.api import GenerationRequest, TokenEngine
from rl_jax.serve import ChatService, ServeConfig, start_server

MODEL_NAME = "bench"


def client_conversations(clients: int) -> list[list[dict[str, str]]]:
    """One short support conversation per client, each its own (no two prompts alike)."""
    return [[{"role": "system", "content": "You are a helpful customer-support agent for a PC-parts shop."},
             {"role": "user", "content": f"Order ORD-{1000 + i} has {i % 7 + 1} items. When will it ship, and "
                                         f"can I still change the address to {i} Main Street?"}]
            for i in range(clients)]


async def _engine_round(engine: TokenEngine, prompts: list[list[int]], max_tokens: int,
                        stops: tuple[int, ...]) -> int:
    requests = [GenerationRequest(tuple(p), max_tokens, temperature=0.0, stop_token_ids=stops) for p in prompts]
    chunks = await asyncio.gather(*(engine.generate(r) for r in requests))
    return sum(len(c.tokens) for c in chunks)


async def _server_round(url: str, conversations: list[list[dict[str, str]]], max_tokens: int) -> int:
    async def one(session: aiohttp.ClientSession, messages: list[dict[str, str]]) -> int:
        async with session.post(url + "/chat/completions", json={
                "model": MODEL_NAME, "messages": messages, "max_tokens": max_tokens, "temperature": 0}) as reply:
            body = await reply.json()
            if reply.status != 200:
                raise RuntimeError(f"server answered {reply.status}: {body}")
            return int(body["usage"]["completion_tokens"])

    connector = aiohttp.TCPConnector(limit=len(conversations))
    async with aiohttp.ClientSession(connector=connector) as session:
        counts = await asyncio.gather(*(one(session, m) for m in conversations))
    return sum(counts)


async def server_over_engine(engine: TokenEngine, fmt: ChatFormat, *, clients: int = 32, max_tokens: int = 16,
                             rounds: int = 2, progress: Any = None) -> dict[str, Any]:
    """Tokens/s of ``clients`` concurrent HTTP clients through the server over ``engine``, against ``engine``
    called directly with the same prompts, greedy, the same stop ids (so both produce the same tokens); runs in
    the caller's event loop (where the engine lives)."""
    say = progress or (lambda line: None)
    conversations = client_conversations(clients)
    prompts = [fmt.encode(m, add_generation_prompt=True) for m in conversations]
    stops = tuple(fmt.tokenizer.stop_token_ids)
    service = ChatService(engine, fmt, ServeConfig(model_name=MODEL_NAME, default_max_tokens=max_tokens))
    server = await start_server(service)
    try:
        start = time.perf_counter()
        await _engine_round(engine, prompts, max_tokens, stops)
        await _server_round(server.url, conversations, max_tokens)
        say(f"warm-up (compiles included): {time.perf_counter() - start:.1f} s")
        totals = {"engine": [0, 0.0], "server": [0, 0.0]}
        for r in range(rounds):
            for path in ("engine", "server"):
                start = time.perf_counter()
                if path == "engine":
                    tokens = await _engine_round(engine, prompts, max_tokens, stops)
                else:
                    tokens = await _server_round(server.url, conversations, max_tokens)
                seconds = time.perf_counter() - start
                totals[path][0] += tokens
                totals[path][1] += seconds
                say(f"round {r + 1} {path}: {tokens} tokens in {seconds:.2f} s ({tokens / seconds:.1f} tokens/s)")
    finally:
        await server.stop()
    engine_rate = totals["engine"][0] / totals["engine"][1]
    server_rate = totals["server"][0] / totals["server"][1]
    return {"server_over_engine": server_rate / engine_rate, "engine_tokens_per_s": engine_rate,
            "server_tokens_per_s": server_rate, "clients": clients, "max_tokens": max_tokens, "rounds": rounds,
            "prompt_tokens_mean": sum(map(len, prompts)) / len(prompts)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--engine", choices=["continuous", "plain"], default="continuous")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--context", type=int, default=1024, help="per conversation (the engine's max_len)")
    args = p.parse_args()

    import jax

    from rl_jax.engine.config import EngineConfig
    from rl_jax.engine.engine import SlotEngine
    from rl_jax.engine.sampler_engine import SamplerEngine
    from rl_jax.runtime import tune_cpu_backend
    from rl_jax.sampling import Sampler
    from rl_jax.serve.loading import EMBEDDED, load_model

    tune_cpu_backend()
    served = load_model(EMBEDDED)  # SmolLM2-135M-Instruct, f32
    if args.engine == "plain":
        engine: Any = SamplerEngine(Sampler(served.model, pad_id=served.fmt.tokenizer.pad_token_id or 0),
                                    context_limit=args.context, max_batch=max(args.clients, 1))
    else:
        engine = SlotEngine(served.model, EngineConfig(slots=args.clients, max_len=args.context))

    async def run() -> dict[str, Any]:
        try:
            return await server_over_engine(engine, served.fmt, clients=args.clients, max_tokens=args.max_tokens,
                                            rounds=args.rounds, progress=lambda line: print(line, flush=True))
        finally:
            await engine.aclose()

    result = asyncio.run(run())
    if args.engine == "plain":  # how the requests were gathered into sampler calls (warm-up included)
        result["sampler_call_rows"] = engine.stats.batch_sizes
    stats = engine.stats  # every round's, the warm-up's included
    result.update(prefill_positions=stats.prefill_positions, prefill_s=round(stats.prefill_seconds, 2),
                  decode_s=round(stats.decode_seconds, 2))
    if args.engine == "continuous":
        result.update(prefill_calls=stats.prefill_calls, decode_calls=stats.decode_calls)
    result.update(engine=args.engine, model=served.name, platform=jax.devices()[0].platform,
                  compiled_programs=getattr(engine, "compiled_programs", None) if args.engine == "continuous"
                  else engine.sampler.compiled_programs)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
