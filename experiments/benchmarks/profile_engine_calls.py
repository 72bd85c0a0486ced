"""Where a burst's time goes: the continuous engine's prefill and decode calls (count, positions computed,
seconds) against the plain sampler's prefill and decode on the same prompts, rounds alternating in one process
(SmolLM2-135M f32; bench_serve's shape by default: 32 prompts of 55-67 tokens, 16 greedy new tokens).

Each ``--variant NAME=JSON`` is an ``EngineConfig``'s fields over the default ``slots=N, max_len=1024``, e.g.
``--variant 'one-chunk={"chunk_buckets": [256], "prefill_rows": [1, 4, 16]}'`` (the engine before chunk
buckets). Every round draws new prompts (so no slot's cache holds them); tokens/s exclude compiles.

    .venv/bin/python experiments/benchmarks/profile_engine_calls.py [--prompts 32] [--new-tokens 16] [--rounds 3]

The last line printed is one JSON object: per round, each engine's tokens/s and stage counters.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rl_jax.runtime import tune_cpu_backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", action="append", default=[], help="NAME=JSON of EngineConfig fields")
    args = parser.parse_args()
    tune_cpu_backend()
    import jax.numpy as jnp
    import numpy as np

    from rl_jax.engine import EngineConfig, EngineCore, GenerationRequest
    from rl_jax.models import load_gguf, smollm2_gguf_path
    from rl_jax.sampling import Sampler, SamplingConfig

    _, model = load_gguf(smollm2_gguf_path(), dtype=jnp.float32, param_dtype=jnp.float32, progress=False)
    variants = {"default": {}} | {v.split("=", 1)[0]: json.loads(v.split("=", 1)[1]) for v in args.variant}
    cores = {name: EngineCore(model, EngineConfig(**({"slots": args.prompts, "max_len": 1024} | fields)))
             for name, fields in variants.items()}
    sampler = Sampler(model)
    rng = np.random.default_rng(0)
    n, new = args.prompts, args.new_tokens
    rounds: list[dict[str, Any]] = []
    for r in range(args.rounds):
        prompts = [rng.integers(3, model.config.vocab_size, int(rng.integers(55, 68))).tolist() for _ in range(n)]
        row: dict[str, Any] = {}
        for name, core in cores.items():
            compiled, stats = sum(c.seconds for c in core.compile_log), core.stats
            core.stats = type(stats)()
            start = time.perf_counter()
            for p in prompts:
                core.submit(GenerationRequest(tuple(p), new, temperature=0.0))
            core.run_until_idle()
            seconds = time.perf_counter() - start - (sum(c.seconds for c in core.compile_log) - compiled)
            s = core.stats
            row[name] = {"tokens_per_s": round(s.new_tokens / seconds, 2), "prefill_calls": s.prefill_calls,
                         "prefill_positions": s.prefill_positions, "prefill_s": round(s.prefill_seconds, 2),
                         "decode_calls": s.decode_calls, "decode_s": round(s.decode_seconds, 2)}
        sampler.stage_seconds.clear()
        compiled = sum(c.seconds for c in sampler.compile_log)
        start = time.perf_counter()
        out = sampler.generate(prompts, SamplingConfig(temperature=0.0, max_new_tokens=new))
        seconds = time.perf_counter() - start - (sum(c.seconds for c in sampler.compile_log) - compiled)
        plan = sampler.plan(prompts, SamplingConfig(temperature=0.0, max_new_tokens=new))
        row["sampler"] = {"tokens_per_s": round(int(out.lengths.sum()) / seconds, 2),
                          "prefill_positions": plan.batch * plan.length,
                          **{f"{k}_s": round(v, 2) for k, v in sampler.stage_seconds.items()}}
        print(f"round {r + 1} (compiles included in the stage seconds of round 1): {row}", flush=True)
        rounds.append(row)
    print(json.dumps({"prompts": n, "new_tokens": new, "rounds": rounds}))


if __name__ == "__main__":
    main()
