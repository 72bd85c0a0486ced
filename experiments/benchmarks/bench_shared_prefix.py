"""Prefill with and without a shared prompt prefix: the main job's prompts, our sampler, same run.

Every first agent turn of the main job (experiments/grpo_corecraft.py) starts with the same system prompt and
the 23 tools, and ends with its task's request; ``--prompt-form`` picks how the tools are shown
(corecraft.episode: ``signatures``, the main job's, ~2,400 tokens; ``compact`` ~4,100; ``full`` ~15,500).
Figures in BUILD.md before 2026-12-06 were measured on the earlier main job's 6,550-token prefix. ``Sampler`` prefills such a prefix once
and copies its keys and values to every row (``PrefillPlan``); ``min_shared_prefix=None`` turns that off.
This script runs both on the same prompts (SmolLM2-135M-Instruct f32 from the embedded GGUF, greedy,
``--new-tokens`` per row), alternating, and reports the median prefill and decode seconds of the timed runs
(the first run of each compiles and is reported apart), and whether the greedy tokens agree. The last line
printed is one JSON object with every figure.

    .venv/bin/python experiments/benchmarks/bench_shared_prefix.py [--tasks 4] [--runs 2] [--new-tokens 96]

``--prefix-tokens N`` keeps only the last N tokens of the shared part (at least 256, the sharing threshold;
the requests stay whole): a quicker run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rl_jax.runtime import tune_cpu_backend


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main_job_prompts(tasks: int, prompt_form: str = "signatures") -> list[list[int]]:
    """The token ids of the main job's first turns for the first ``tasks`` training tasks, in the episode
    definition's ``prompt_form`` (corecraft.episode)."""
    from corecraft.episode import EpisodeSpec, agent_tools, corecraft_tool_listing, opening_messages
    from corecraft.episode.definition import company_policy
    from corecraft.tasks.store import load_task_set
    from rl_jax.chat import load_chat_format, start_transcript

    fmt = load_chat_format(None)
    chosen = [t for t in load_task_set(None).tasks if t.split == "train"][:tasks]
    spec = EpisodeSpec(prompt_form=prompt_form)  # type: ignore[arg-type]
    tools = agent_tools(spec, corecraft_tool_listing())
    policy = ""
    if spec.policy_in_context:  # the full form carries the company policy in its system prompt
        with load_task_set(None).world().reader() as reader:
            policy = company_policy(reader.conn)
    return [list(start_transcript(fmt, opening_messages(spec, t.request, policy), tools).ids) for t in chosen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=4, help="prompts in the batch (training tasks)")
    parser.add_argument("--runs", type=int, default=2, help="timed runs per mode, after one that compiles")
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--prompt-form", default="signatures", choices=["full", "compact", "signatures"],
                        help="how the episode shows the tools (corecraft.episode; default: the main job's)")
    parser.add_argument("--prefix-tokens", type=int, help="keep only this many tokens of the shared prefix")
    args = parser.parse_args()
    if args.tasks < 2 or args.runs < 1 or args.new_tokens < 1:
        parser.error("--tasks must be >= 2, --runs and --new-tokens >= 1")
    load_start = os.getloadavg()
    tune_cpu_backend()

    import jax
    import jax.numpy as jnp
    import numpy as np

    from rl_jax.models import load_gguf, smollm2_gguf_path
    from rl_jax.sampling import Sampler, SamplingConfig

    _, model = load_gguf(smollm2_gguf_path(), dtype=jnp.float32, param_dtype=jnp.float32, progress=False)
    config = SamplingConfig(temperature=0.0, max_new_tokens=args.new_tokens)
    samplers = {"shared_prefix": Sampler(model), "separate": Sampler(model, min_shared_prefix=None)}
    prompts = main_job_prompts(args.tasks, args.prompt_form)
    if args.prefix_tokens is not None:  # the sampler's own reading of the common prefix, cut from the front
        shared = samplers["shared_prefix"].plan(prompts, config).shared
        prompts = [p[shared - min(args.prefix_tokens, shared) :] for p in prompts]
    plans = {name: s.plan(prompts, config) for name, s in samplers.items()}
    shared = plans["shared_prefix"].shared
    if not shared:
        raise SystemExit("these prompts share too short a prefix for the sampler to share it")
    log(f"{len(prompts)} prompts of {min(map(len, prompts))}-{max(map(len, prompts))} tokens, "
        f"the first {shared} shared")

    times: dict[str, dict[str, list[float]]] = {name: {"prefill": [], "decode": []} for name in samplers}
    first: dict[str, dict[str, float]] = {}
    tokens: dict[str, np.ndarray] = {}
    for run in range(args.runs + 1):
        for name, sampler in samplers.items():
            compiled = len(sampler.compile_log)
            start = time.perf_counter()
            cache, logits, packed, shape = sampler.prefill(prompts, config)
            jax.block_until_ready(logits)
            middle = time.perf_counter()
            out = jax.block_until_ready(sampler.decode(cache, logits, packed, shape, config, None))
            end = time.perf_counter()
            tokens[name] = np.asarray(out[0])
            prefill, decode = middle - start, end - middle
            log(f"run {run}/{args.runs} {name}: prefill {prefill:.2f} s, decode {decode:.2f} s"
                + (" (compiling)" if run == 0 else ""))
            if run == 0:
                compile_s = sum(r.seconds for r in sampler.compile_log[compiled:])
                first[name] = {"prefill_s": round(prefill, 2), "decode_s": round(decode, 2),
                               "compile_s": round(compile_s, 2)}
            else:
                times[name]["prefill"].append(prefill)
                times[name]["decode"].append(decode)

    results = {
        name: {
            "plan": plans[name].describe(len(prompts)),
            "prefill_s": round(statistics.median(t["prefill"]), 2),
            "decode_s": round(statistics.median(t["decode"]), 2),
            "prefill_runs_s": [round(x, 2) for x in t["prefill"]],
            "decode_runs_s": [round(x, 2) for x in t["decode"]],
            "first_run": first[name],
        }
        for name, t in times.items()
    }
    summary = {
        "benchmark": "shared_prefix",
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantized), f32",
        "prompts": len(prompts),
        "prompt_tokens": [len(p) for p in prompts],
        "shared_prefix_tokens": shared,
        "new_tokens": args.new_tokens,
        "runs": args.runs,
        "statistic": "median",
        "results": results,
        "prefill_speedup": round(results["separate"]["prefill_s"] / results["shared_prefix"]["prefill_s"], 3),
        "decode_ratio": round(results["separate"]["decode_s"] / results["shared_prefix"]["decode_s"], 3),
        "greedy_tokens_identical": bool(np.array_equal(tokens["shared_prefix"], tokens["separate"])),
        "load_avg_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "machine": f"{os.cpu_count()} CPUs, jax {jax.__version__}",
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
