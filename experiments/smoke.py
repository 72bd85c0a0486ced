"""One batch of first agent turns on CoreCraft with a JAX policy, executed and graded end to end.

Environment side: the shipped task set and its task world (corecraft.tasks), the 23 tools run in process on
each task's own fork (corecraft.tools, the same code the MCP server runs), the rubric judge's deterministic
checks (corecraft.judge). Policy side: the model on a (data, model) mesh, its chat template with the tool
definitions, the compiled KV-cache sampler (rl_jax). Progress goes to stderr; the summary is returned.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import jax
import jax.numpy as jnp

from corecraft.eval.agent import SYSTEM_PROMPT
from corecraft.judge.grader import deterministic_verdicts
from corecraft.judge.types import Score, ToolCallRecord, Trajectory
from corecraft.tasks.store import load_task_set
from corecraft.tools import call_tool, tool_schemas
from experiments.config import ExperimentConfig
from rl_jax.chat import append_sampled, function_tool, load_chat_format, start_transcript, system, user
from rl_jax.chat.schema_compaction import compact_description, compact_schema
from rl_jax.models import load_gguf, load_pretrained, smollm2_gguf_path
from rl_jax.sampling import Sampler, SamplingConfig
from rl_jax.sharding import make_mesh, parse_mesh_shape


def log(msg: str) -> None:
    print(f"[grpo_corecraft] {msg}", file=sys.stderr, flush=True)


def policy_tools() -> list[dict[str, Any]]:
    """The 23 tools as the policy sees them: compact schemas, so they fit a small model's context."""
    return [
        function_tool(s["name"], compact_description(s["description"]),
                      compact_schema(s["inputSchema"], keep_bounds=False))
        for s in tool_schemas()
    ]


def load_policy(cfg: ExperimentConfig, mesh: jax.sharding.Mesh):
    dtype = jnp.dtype(cfg.policy.dtype)
    path = cfg.policy.checkpoint
    if path is None or str(path).endswith(".gguf"):
        gguf = path or smollm2_gguf_path()
        _, model = load_gguf(gguf, mesh=mesh, dtype=dtype, progress=False)
        return model, load_chat_format(str(gguf) if path else None)
    return load_pretrained(path, mesh=mesh, dtype=dtype, progress=False), load_chat_format(path)


def grade(task, conn, trajectory: Trajectory) -> Score:
    """Deterministic criteria only: free-form ones need an LLM judge endpoint, which this run does not use."""
    return Score(tuple(deterministic_verdicts(task, conn, trajectory)))


def run_smoke(cfg: ExperimentConfig) -> dict[str, Any]:
    t_start = time.perf_counter()
    data, model_axis = parse_mesh_shape(cfg.mesh)
    mesh = make_mesh(data, model_axis)
    log(f"mesh {dict(mesh.shape)} on {jax.device_count()} {jax.default_backend()} device(s)")

    task_set = load_task_set(cfg.env.task_dir)
    world = task_set.world()
    stats = world.stats()
    tasks = [t for t in task_set.tasks if t.split == cfg.env.split][: cfg.env.num_tasks]
    if not tasks:
        raise SystemExit(f"no tasks in split {cfg.env.split!r}")
    log(f"world: {stats['total']} entities of {len(stats['entity_types'])} types; "
        f"tasks: {len(task_set.tasks)} ({cfg.env.split}: using {len(tasks)})")

    t0 = time.perf_counter()
    model, fmt = load_policy(cfg, mesh)
    n_params = sum(x.size for x in jax.tree.leaves(nnx_params(model)))
    load_s = time.perf_counter() - t0
    log(f"policy: {n_params / 1e6:.1f}M params loaded in {load_s:.1f} s")

    tools = policy_tools()
    transcripts = [start_transcript(fmt, [system(SYSTEM_PROMPT), user(t.request)], tools) for t in tasks]
    sampler = Sampler(model, pad_id=fmt.tokenizer.pad_token_id or 0)
    sampling = SamplingConfig(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                              max_new_tokens=cfg.rollout.max_new_tokens,
                              stop_token_ids=tuple(fmt.tokenizer.stop_token_ids))
    prompt_tokens = max(len(t.ids) for t in transcripts)
    log(f"sampling {len(tasks)} first turns ({prompt_tokens} prompt tokens, up to {sampling.max_new_tokens} new)")
    t0 = time.perf_counter()
    out = sampler.generate([list(t.ids) for t in transcripts], sampling, jax.random.key(cfg.rollout.seed),
                           progress=log)
    sample_s = time.perf_counter() - t0

    sequences = out.sequences()
    episodes = []
    for task, transcript, row in zip(tasks, transcripts, range(len(tasks)), strict=True):
        ids = sequences[row]
        _, parsed = append_sampled(fmt, transcript, ids)
        with world.fork() as fork:
            records = []
            for call in parsed.calls:
                result = call_tool(fork.conn, call.name, dict(call.arguments))
                records.append(ToolCallRecord(call.name, dict(call.arguments), result.data or result.text,
                                              result.is_error))
            final = "" if parsed.calls else parsed.content
            score = grade(task, fork.conn, Trajectory(tuple(records), final, turns=1))
        episodes.append({"task": task.id, "sampled_tokens": len(ids), "tool_calls": [c.name for c in parsed.calls],
                         "tool_errors": sum(r.is_error for r in records), "parse_errors": len(parsed.errors),
                         "reward": round(score.reward, 4)})
        log(f"{task.id}: {len(ids)} tokens, calls={[c.name for c in parsed.calls]}, reward={score.reward:.2f}")

    new_tokens = int(out.lengths.sum())
    return {
        "mesh": cfg.mesh, "devices": jax.device_count(), "backend": jax.default_backend(),
        "world_entities": stats["total"], "entity_types": len(stats["entity_types"]),
        "tasks_total": len(task_set.tasks), "episodes": len(episodes),
        "policy_params_m": round(n_params / 1e6, 1), "policy_load_s": round(load_s, 2),
        "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
        "sample_s_incl_compile": round(sample_s, 2), "compiled_programs": sampler.compiled_programs,
        "mean_reward": round(sum(e["reward"] for e in episodes) / len(episodes), 4),
        "tool_calls": sum(len(e["tool_calls"]) for e in episodes),
        "wall_s": round(time.perf_counter() - t_start, 1),
    }


def nnx_params(model):
    from flax import nnx

    return nnx.state(model, nnx.Param)
