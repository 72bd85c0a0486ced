"""Seconds per call of the engine's compiled programs at bench_engine's shapes, each program on its own (no
scheduling, no host work): where a workload's prefill and decode time goes (SmolLM2-135M f32).

Cases (``--cases``, default all):

* ``decode_short`` / ``decode_corecraft``: one decode call of ``--steps`` sampled tokens for 16 live slots,
  1,500 own tokens each over a 2,048-slot view (the short workload's last turns); or 800 own tokens over a
  1,280-slot view after a 6,550-token shared prefix (the corecraft workload's).
* ``decode_floor``: the same with 50 own tokens over a 128-slot view, greedy (what a step costs with little
  attention: the projections, MLP, vocabulary and the cache writes).
* ``prefill_prefix`` / ``prefill_own``: a 16 x 256 prefill call after a 6,550-token prefix and 500 own tokens,
  or after 1,500 own tokens and no prefix.
* ``fill_early`` / ``fill_late``: one 256-token chunk into the prefix region at slot 0, or at slot 6,400.

Each case compiles once, then runs ``--reps`` times; the last line printed is one JSON object with every case's
compile seconds and per-call seconds (decode: milliseconds per step).

    .venv/bin/python experiments/benchmarks/profile_engine_programs.py [--cases decode_short,fill_late] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rl_jax.runtime import sampler_compiler_options, tune_cpu_backend

SLOTS = 16
PREFIX = 6912 + 256  # bench_engine's corecraft prefix region (6,656 rounded, plus the pad)
CASES = ("decode_floor", "decode_short", "decode_corecraft", "prefill_own", "prefill_prefix", "fill_early",
         "fill_late")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=16, help="tokens per decode call")
    args = parser.parse_args()
    cases = args.cases.split(",")
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}; known: {', '.join(CASES)}")
    tune_cpu_backend()
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from rl_jax.engine.slots import SlotCache, decode_fn, fill_prefix_fn, prefill_fn
    from rl_jax.models import load_gguf, smollm2_gguf_path

    _, model = load_gguf(smollm2_gguf_path(), dtype=jnp.float32, param_dtype=jnp.float32, progress=False)
    graphdef, state = nnx.split(model)
    cfg = model.config

    def timed(fn, cache: Any, rest: tuple[Any, ...], options: dict[str, str]) -> dict[str, Any]:
        start = time.perf_counter()
        program = jax.jit(fn, donate_argnums=(1,)).lower(state, cache, *rest).compile(options)
        compile_s = time.perf_counter() - start
        seconds = []
        for _ in range(args.reps):
            start = time.perf_counter()
            out = jax.block_until_ready(program(state, cache, *rest))
            seconds.append(time.perf_counter() - start)
            cache = out[0] if isinstance(out, tuple) else out
        return {"compile_s": round(compile_s, 2), "seconds": [round(s, 3) for s in seconds]}

    def decode(own_slots: int, prefix_slots: int, view: int, own_len: int, prefix_len: int, sampled: bool):
        cache = SlotCache.init(cfg, SLOTS, own_slots, prefix_slots, jnp.float32)
        rows = (np.ones((SLOTS,), bool), np.full((SLOTS,), own_len, np.int32),
                np.full((SLOTS,), prefix_len, np.int32), np.zeros((SLOTS,), np.int32),
                np.full((SLOTS,), 10**6, np.int32), np.zeros((SLOTS, 2), np.uint32), np.full((SLOTS,), not sampled),
                np.ones((SLOTS,), np.float32), np.ones((SLOTS,), np.float32), np.full((SLOTS, 8), -1, np.int32))
        fn = decode_fn(graphdef, view, args.steps, "threefry2x32" if sampled else None, 0, False, sampled)
        result = timed(fn, cache, rows, {})
        result["ms_per_step"] = [round(1e3 * s / args.steps, 1) for s in result["seconds"]]
        return result

    def prefill(own_start: int, prefix_len: int, prefix_slots: int, own_slots: int, view: int):
        cache = SlotCache.init(cfg, SLOTS, own_slots, prefix_slots, jnp.float32)
        rest = (np.arange(SLOTS, dtype=np.int32), np.ones((SLOTS, 256), np.int32),
                np.full((SLOTS,), own_start, np.int32), np.full((SLOTS,), prefix_len, np.int32),
                np.full((SLOTS,), 256, np.int32))
        return timed(prefill_fn(graphdef, view), cache, rest, sampler_compiler_options("cpu", SLOTS))

    def fill(start: int):
        cache = SlotCache.init(cfg, SLOTS, 512, PREFIX, jnp.float32)
        return timed(fill_prefix_fn(graphdef), cache, (np.ones((1, 256), np.int32), np.int32(start)),
                     sampler_compiler_options("cpu", 1))

    runs = {
        "decode_floor": lambda: decode(512, 0, 128, 50, 0, sampled=False),
        "decode_short": lambda: decode(2048 + 256, 0, 2048, 1500, 0, sampled=True),
        "decode_corecraft": lambda: decode(1280 + 256, PREFIX, 1536, 800, 6550, sampled=True),
        "prefill_own": lambda: prefill(1500, 0, 0, 2048 + 256, 2048),
        "prefill_prefix": lambda: prefill(500, 6550, PREFIX, 1280 + 256, 1024),
        "fill_early": lambda: fill(0),
        "fill_late": lambda: fill(6400),
    }
    results = {}
    for case in cases:
        results[case] = runs[case]()
        print(f"{case}: {results[case]}", file=sys.stderr, flush=True)
    print(json.dumps({"cases": results, "reps": args.reps, "decode_steps": args.steps}))


if __name__ == "__main__":
    main()
