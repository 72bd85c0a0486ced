"""The continuous engine (``SlotEngine``) against the plain sampler re-prefilling each turn's whole history
(``SamplerEngine``), on SmolLM2-135M f32, in one run on one machine (issue 20).

Workloads (each episode an asyncio task: a turn, then ``--tool-tokens`` tokens of "tool result", then the next
turn; every turn decodes exactly ``--new-tokens`` tokens, no stop ids, so both sides produce the same number):

* ``corecraft``: ``--episodes`` episodes (GRPO groups of ``--group`` on the real CoreCraft first-turn prompts,
  episode definition's ``--prompt-form``, SmolLM2's chat template), ``--turns`` turns. By default the ``full``
  form's head cut to the issue's ~6.5k tokens (``--prompt-tokens 6550``), then each task's own request.
* ``short``: ``--episodes`` episodes of ``--short-prompt`` random tokens, ``--short-turns`` turns.
* ``server``: ``--clients`` concurrent single-turn chats through ``rl_jax.serve`` in process (aiohttp on
  loopback) against the same requests (same prompt ids, keys and stop ids) sent to the engine directly.

Tokens/s are new tokens over wall time less the seconds spent compiling (both sides compile in the run: the
sampler once per new shape bucket, the engine its fixed set). The last line printed is one JSON object:
``speedup_corecraft``, ``speedup_short``, ``server_over_engine``, ``compiled_programs``, ``compile_s``, each
side's tokens/s, and ``bound``: per workload, the prefill positions each side computed (counted from the calls
it made, padding included), each side's prefill and decode seconds, and the speedup the engine could reach if
its prefill were free or cost the baseline's seconds per position (``bound()``), so the line says whether the
issue's target is reachable on the workload at all.

    .venv/bin/python experiments/benchmarks/bench_engine.py                      # the issue's sizes
    .venv/bin/python experiments/benchmarks/bench_engine.py --episodes 4 --turns 2 --prompt-tokens 1024 \\
        --short-turns 3 --clients 8 --new-tokens 16                             # a quick CPU run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rl_jax.runtime import tune_cpu_backend


def log(msg: str) -> None:
    print(f"[bench_engine {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def _common_prefix(prompts: Sequence[Sequence[int]]) -> int:
    n = min(len(p) for p in prompts)
    for i in range(n):
        if any(p[i] != prompts[0][i] for p in prompts[1:]):
            return i
    return n


def corecraft_prompts(args: argparse.Namespace) -> list[list[int]]:
    """One prompt per episode: GRPO groups of ``--group`` on the first training tasks' real first turns;
    ``--prompt-tokens`` shortens the shared head (system prompt, tools), keeping each task's own tail."""
    from bench_shared_prefix import main_job_prompts

    tasks = -(-args.episodes // args.group)
    prompts = main_job_prompts(tasks, args.prompt_form)
    if args.prompt_tokens:
        shared = _common_prefix(prompts) if len(prompts) > 1 else len(prompts[0]) - 16
        tails = [p[shared:] for p in prompts]
        head = prompts[0][: max(0, args.prompt_tokens - max(len(t) for t in tails))]
        prompts = [head + t for t in tails]
    return [prompts[e // args.group] for e in range(args.episodes)]


async def run_episodes(engine: Any, prompts: Sequence[Sequence[int]], turns: int, new_tokens: int,
                       tool_tokens: int, vocab: int) -> int:
    """Every episode's turns concurrently; the new tokens produced."""
    import jax
    import numpy as np

    from rl_jax.engine import GenerationRequest

    async def episode(e: int) -> int:
        rng = np.random.default_rng(1000 + e)
        history, produced = list(prompts[e]), 0
        for t in range(turns):
            out = await engine.generate(GenerationRequest(
                tuple(history), new_tokens, key=jax.random.fold_in(jax.random.key(e), t), temperature=1.0,
                session=f"episode-{e}"))
            produced += len(out.tokens)
            history += list(out.tokens) + rng.integers(3, vocab, tool_tokens).tolist()
        return produced

    return sum(await asyncio.gather(*(episode(e) for e in range(len(prompts)))))


PREFILL_KINDS = ("prefill", "prefill_shared", "fill_prefix")  # both sides' prefill programs (compile logs' kinds)
TARGETS = {"corecraft": 4.0, "short": 3.0}  # issue 20's speedups over the plain sampler


def compile_seconds(engine: Any, kinds: Sequence[str] | None = None) -> float:
    """Seconds ``engine`` spent compiling (only programs of ``kinds`` when given)."""
    from rl_jax.engine import SlotEngine

    if isinstance(engine, SlotEngine):
        records = [(str(r.key[0]), r.seconds) for r in engine.core.compile_log]
    else:
        records = [(r.kind, r.seconds) for r in engine.sampler.compile_log]
    return sum(seconds for kind, seconds in records if kinds is None or kind in kinds)


def stage_seconds(engine: Any) -> dict[str, float]:
    """Seconds in prefill (prefix fills included) and in decode, each less its compiles."""
    prefill = compile_seconds(engine, PREFILL_KINDS)
    decode = compile_seconds(engine) - prefill
    return {"prefill_s": round(engine.stats.prefill_seconds - prefill, 2),
            "decode_s": round(engine.stats.decode_seconds - decode, 2)}


def bound(engine: dict[str, Any], plain: dict[str, Any], target: float,
          flops: dict[str, float] | None = None) -> dict[str, Any]:
    """What the engine could reach on this workload, from what both sides measured.

    The engine's gain is prefill it does not compute: decode and the host's work cost the baseline what they
    cost it whoever runs them. With ``T`` the baseline's seconds (compiles excluded) and ``P`` its prefill
    seconds: ``ceiling_free_prefill = T / (T - P)`` (the engine's prefill free, the rest as the baseline's);
    ``ceiling_at_baseline_rate = T / (T - P + P * e / b)`` (the engine computing its ``e`` prefill positions
    at the baseline's measured seconds per position over its ``b``); ``ceiling_engine_decode`` = ``T`` over the
    engine's own seconds less its prefill (its decode and host work as measured, its prefill free);
    ``ceiling_equal_flop_rate`` (with ``flops``, ``necessary_prefill_flops``) = ``T / (T - P + P * Fe / Fb)``:
    the engine prefilling the work its design cannot avoid at the rate the baseline did its own, and decoding in
    the baseline's time. Below the target, only an engine that computes faster than the baseline reaches it."""
    seconds = plain["tokens"] / plain["tokens_per_s"]
    prefill = plain["prefill_s"]
    rest = max(seconds - prefill, 1e-9)
    engine_seconds = engine["tokens"] / engine["tokens_per_s"]
    share = engine["prefill_positions"] / max(plain["prefill_positions"], 1)
    free = seconds / rest
    by_flops = {}
    if flops is not None:
        by_flops = {"necessary_prefill_gflop": {side: round(f / 1e9, 1) for side, f in flops.items()},
                    "ceiling_equal_flop_rate": round(seconds / (rest + prefill * flops["engine"] / flops["baseline"]),
                                                     3)}
    return {
        **by_flops,
        "baseline_prefill_positions": plain["prefill_positions"],
        "engine_prefill_positions": engine["prefill_positions"],
        "engine_prefilled_tokens": engine["prefilled_tokens"] + engine["prefix_tokens"],
        "baseline_prefill_share": round(prefill / seconds, 3),
        "baseline_ms_per_prefill_position": round(1e3 * prefill / max(plain["prefill_positions"], 1), 3),
        "engine_ms_per_prefill_position": round(1e3 * engine["prefill_s"] / max(engine["prefill_positions"], 1), 3),
        "ceiling_free_prefill": round(free, 3),
        "ceiling_at_baseline_rate": round(seconds / (rest + prefill * share), 3),
        "ceiling_engine_decode": round(seconds / max(engine_seconds - engine["prefill_s"], 1e-9), 3),
        "target": target,
        "target_reachable": free >= target,
    }


def _segment_flops(cfg: Any, first: int, end: int) -> float:
    """Matmul FLOPs of prefilling positions ``[first, end)`` of one sequence causally (each attends to every
    position up to its own): the projections and MLP (2 x their weights per position) and the attention's two
    products (2 x heads x head_dim each, per key); the vocabulary projection (one position per call) is left out."""
    d, hd = cfg.hidden_size, cfg.head_dim
    weights = d * hd * (2 * cfg.num_heads + 2 * cfg.num_kv_heads) + 3 * d * cfg.intermediate_size
    keys = (end * (end + 1) - first * (first + 1)) // 2  # position p attends to p + 1 keys
    return cfg.num_layers * (2.0 * weights * (end - first) + 4.0 * cfg.num_heads * hd * keys)


def necessary_prefill_flops(cfg: Any, prompts: Sequence[Sequence[int]], turns: int, new_tokens: int,
                            tool_tokens: int) -> dict[str, float]:
    """The prefill work each side's design cannot avoid on the workload (no padding): the baseline prefills every
    turn's whole history, the prompts' shared head once per call (cascade); the engine prefills each token once:
    the shared head once in all, then each episode's own tokens (its prompt's tail, then each tool result)."""
    shared = _common_prefix(prompts) if len(prompts) > 1 else 0
    baseline = turns * _segment_flops(cfg, 0, shared)
    engine = _segment_flops(cfg, 0, shared)
    for p in prompts:
        for t in range(turns):
            history = len(p) + t * (new_tokens + tool_tokens)
            baseline += _segment_flops(cfg, shared, history)
            engine += _segment_flops(cfg, shared, len(p)) if t == 0 else _segment_flops(cfg, history - tool_tokens,
                                                                                         history)
    return {"baseline": baseline, "engine": engine}


async def timed(engine: Any, work) -> dict[str, float]:
    compiled_before, start = compile_seconds(engine), time.perf_counter()
    tokens = await work
    wall = time.perf_counter() - start
    compiling = compile_seconds(engine) - compiled_before
    return {"tokens": tokens, "wall_s": round(wall, 2), "compile_s": round(compiling, 2),
            "tokens_per_s": round(tokens / max(wall - compiling, 1e-9), 3)}


def slot_engine(model: Any, prompts: Sequence[Sequence[int]], turns: int, new_tokens: int, tool_tokens: int,
                args: argparse.Namespace, *, slots: int) -> Any:
    """A SlotEngine sized to the workload: the prefix region holds the longest prompt, each slot's own region
    what an episode adds after the prefix the prompts share."""
    from rl_jax.engine import EngineConfig, SlotEngine

    chunk = args.chunk
    longest = max(len(p) for p in prompts)
    shared = _common_prefix(prompts) if len(prompts) > 1 else longest
    use_prefix = shared >= args.min_shared_prefix
    prefix = _round_up(longest, chunk) if use_prefix else 0
    own = _round_up(longest - (shared if use_prefix else 0) + turns * (new_tokens + tool_tokens) + 1, chunk)
    config = EngineConfig(slots=slots, max_len=min(prefix + own, model.config.max_position_embeddings),
                          own_capacity=own, prefix_capacity=prefix, min_shared_prefix=args.min_shared_prefix,
                          chunk=chunk, decode_steps=args.decode_steps)
    log(f"engine: {config}")
    return SlotEngine(model, config)


async def multi_turn(name: str, model: Any, prompts: list[list[int]], turns: int, args: argparse.Namespace) -> dict:
    from rl_jax.engine.sampler_engine import SamplerEngine
    from rl_jax.sampling import Sampler

    vocab, new, tool = model.config.vocab_size, args.new_tokens, args.tool_tokens
    log(f"{name}: {len(prompts)} episodes x {turns} turns, prompts of {min(map(len, prompts))}-"
        f"{max(map(len, prompts))} tokens ({_common_prefix(prompts)} shared), {tool}-token tool results, "
        f"{new} new tokens a turn")
    engine = slot_engine(model, prompts, turns, new, tool, args, slots=len(prompts))
    ours = await timed(engine, run_episodes(engine, prompts, turns, new, tool, vocab))
    ours.update(compiled_programs=engine.compiled_programs, prefilled_tokens=engine.stats.prefilled_tokens,
                prefix_tokens=engine.stats.prefix_tokens, prompt_tokens=engine.stats.prompt_tokens,
                prefill_positions=engine.stats.prefill_positions + engine.stats.prefix_tokens,
                prefill_calls=engine.stats.prefill_calls, decode_calls=engine.stats.decode_calls,
                programs=sorted(str(r.key) for r in engine.core.compile_log), **stage_seconds(engine))
    await engine.aclose()
    log(f"{name} engine: {ours}")
    baseline = SamplerEngine(Sampler(model), context_limit=model.config.max_position_embeddings,
                             max_batch=len(prompts))
    plain = await timed(baseline, run_episodes(baseline, prompts, turns, new, tool, vocab))
    await baseline.aclose()
    plain.update(compiled_programs=baseline.sampler.compiled_programs, prompt_tokens=baseline.stats.prompt_tokens,
                 prefill_positions=baseline.stats.prefill_positions, calls=baseline.stats.calls,
                 **stage_seconds(baseline))
    log(f"{name} plain sampler: {plain}")
    limits = bound(ours, plain, TARGETS[name], necessary_prefill_flops(model.config, prompts, turns, new, tool))
    log(f"{name} bound: {limits}")
    return {"engine": ours, "plain": plain, "speedup": round(ours["tokens_per_s"] / plain["tokens_per_s"], 3),
            "bound": limits}


async def server_vs_engine(model: Any, args: argparse.Namespace) -> dict:
    """``--clients`` concurrent chats through the in-process server, and the same requests to the engine."""
    import aiohttp
    import jax

    from rl_jax.chat import load_chat_format
    from rl_jax.engine import GenerationRequest
    from rl_jax.serve.app import serving
    from rl_jax.serve.service import ChatService, ServeConfig

    fmt = load_chat_format(None)
    messages = [[{"role": "user", "content": f"Customer {i} asks: where is my order #{1000 + i}? It was due "
                  f"on day {i % 28 + 1} and has not arrived. Please check its status and explain."}]
                for i in range(args.clients)]
    prompts = [list(fmt.encode(m, None, add_generation_prompt=True)) for m in messages]
    stops = tuple(fmt.tokenizer.stop_token_ids)

    def key(seed: int) -> Any:  # the server's key for a seed (rl_jax.serve.service)
        return jax.random.fold_in(jax.random.key(seed & 0x7FFFFFFF), (seed >> 31) & 0x7FFFFFFF)

    async def direct(engine: Any) -> int:
        outs = await asyncio.gather(*(engine.generate(GenerationRequest(
            tuple(p), args.new_tokens, key=key(i), temperature=1.0, stop_token_ids=stops))
            for i, p in enumerate(prompts)))
        return sum(len(o.tokens) for o in outs)

    async def through_server(engine: Any) -> int:
        service = ChatService(engine, fmt, ServeConfig(model_name="smollm2"))
        async with serving(service) as server, aiohttp.ClientSession() as http:
            async def one(i: int) -> int:
                async with http.post(f"{server.url}/chat/completions", json={
                    "model": "smollm2", "messages": messages[i], "max_tokens": args.new_tokens,
                    "temperature": 1.0, "seed": i}) as response:
                    body = await response.json()
                    if response.status != 200:
                        raise RuntimeError(f"server answered {response.status}: {body}")
                    return int(body["usage"]["completion_tokens"])

            return sum(await asyncio.gather(*(one(i) for i in range(args.clients))))

    engine = slot_engine(model, prompts, 1, args.new_tokens, 0, args, slots=args.clients)
    await direct(engine)  # compiles every program both sides use, so neither side's figure holds compiling
    direct_run = await timed(engine, direct(engine))
    served = await timed(engine, through_server(engine))
    await engine.aclose()
    log(f"server: direct {direct_run}, through the server {served}")
    return {"engine": direct_run, "server": served,
            "server_over_engine": round(served["tokens_per_s"] / direct_run["tokens_per_s"], 3)}


async def main_async(args: argparse.Namespace) -> dict:
    import jax.numpy as jnp
    import numpy as np

    from rl_jax.models import load_gguf, smollm2_gguf_path

    _, model = load_gguf(smollm2_gguf_path(), dtype=jnp.float32, param_dtype=jnp.float32, progress=False)
    results: dict[str, Any] = {}
    if "corecraft" in args.workloads:
        results["corecraft"] = await multi_turn("corecraft", model, corecraft_prompts(args), args.turns, args)
    if "short" in args.workloads:
        rng = np.random.default_rng(0)
        prompts = [rng.integers(3, model.config.vocab_size, args.short_prompt).tolist() for _ in range(args.episodes)]
        results["short"] = await multi_turn("short", model, prompts, args.short_turns, args)
    if "server" in args.workloads:
        results["server"] = await server_vs_engine(model, args)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--group", type=int, default=4, help="episodes per CoreCraft task (a GRPO group)")
    parser.add_argument("--turns", type=int, default=4, help="turns of the corecraft workload")
    parser.add_argument("--short-turns", type=int, default=6, help="turns of the short workload")
    parser.add_argument("--short-prompt", type=int, default=128, help="tokens of the short workload's prompts")
    # the shape: a ~6.5k-token shared head (system prompt, policy, tool schemas) and each task's request;
    # the episode definition's forms today are 2.4k (signatures), 3.3k (compact) and 15.5k (full) tokens
    parser.add_argument("--prompt-form", default="full", choices=["full", "compact", "signatures"])
    parser.add_argument("--prompt-tokens", type=int, default=6550,
                        help="keep the prompts' first ~N tokens of shared head (0: the whole prompt)")
    parser.add_argument("--tool-tokens", type=int, default=200)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=256, help="the engine's prefill chunk")
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--min-shared-prefix", type=int, default=256)
    parser.add_argument("--workloads", default="corecraft,short,server")
    args = parser.parse_args()
    args.workloads = set(args.workloads.split(","))
    load_start = os.getloadavg()
    tune_cpu_backend()
    start = time.perf_counter()
    results = asyncio.run(main_async(args))
    line: dict[str, Any] = {
        "speedup_corecraft": results.get("corecraft", {}).get("speedup"),
        "speedup_short": results.get("short", {}).get("speedup"),
        "server_over_engine": results.get("server", {}).get("server_over_engine"),
        "compiled_programs": {k: v["engine"]["compiled_programs"] for k, v in results.items() if k != "server"},
        "compile_s": {k: v["engine"]["compile_s"] for k, v in results.items() if k != "server"},
        "bound": {k: v["bound"] for k, v in results.items() if "bound" in v},
        "tokens_per_s": {k: {side: v[side]["tokens_per_s"] for side in v if isinstance(v[side], dict) and side != "bound"}
                         for k, v in results.items()},
        "details": results,
        "args": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()},
        "load_avg_start": load_start, "load_avg_end": os.getloadavg(), "cpus": os.cpu_count(),
        "total_s": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
