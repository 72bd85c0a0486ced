"""Main entry point: GRPO on CoreCraft, from one frozen config, on a laptop, a GPU node or a TPU pod.

    python experiments/grpo_corecraft.py                        # embedded SmolLM2-135M-Instruct, 1x1 mesh
    python experiments/grpo_corecraft.py --mesh 8x4             # data x model; on CPU, 32 fake host devices
    python experiments/grpo_corecraft.py --preset tiny          # a random tiny model: 2 steps in about a minute
    python experiments/grpo_corecraft.py --set learner.steps=20 --set rollout.group_size=8
    python experiments/grpo_corecraft.py --resume runs/<run>    # continue a run from its last checkpoint

A run: held-out evaluation of the initial policy, then per step rollouts of groups of episodes on isolated
CoreCraft worlds over MCP, rubric rewards, one GRPO update, the new weights to the sampler, a checkpoint; a
held-out evaluation at the end. Its folder holds ``config.json`` (the resolved config), ``metrics.jsonl``,
TensorBoard event files, ``episodes.jsonl``, checkpoints and ``reward.png``; the last line printed is one
JSON object (``grpo_steps``, ``episodes``, ``mean_reward``, ``eval_pass_rate``, ``wall_s``, ``out``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import secrets
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

from experiments.config import PRESETS, ExperimentConfig
from experiments.overrides import (
    OverrideError,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    diff_configs,
)

CONFIG_FILE = "config.json"
# What may change when a run is resumed: how long it runs, never what it computes.
RESUMABLE_CHANGES = ("learner.steps",)


def log(msg: str) -> None:
    print(f"[grpo_corecraft {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None = None) -> tuple[ExperimentConfig, Path | None, bool]:
    """``(config, run folder or None, resume)`` from the command line; errors exit 2 with one line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--mesh", help="DATAxMODEL or DATAxFSDPxMODEL device mesh, e.g. 8x4 or 2x4x4 (sets "
                        "train.mesh; the layout rules are train.sharding_rules)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="PATH=VALUE",
                        help="override a config field, e.g. --set rollout.group_size=8 (repeatable)")
    parser.add_argument("--out", help="the run's folder (default: out_dir/<name>-<time>)")
    parser.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its latest checkpoint")
    args = parser.parse_args(argv)
    sets = list(args.sets) + ([f"train.mesh={args.mesh}"] if args.mesh else [])
    if args.resume:
        run = Path(args.resume)
        saved = run / CONFIG_FILE
        if not saved.is_file():
            parser.error(f"--resume {run}: no {CONFIG_FILE} there (not a run folder?)")
        try:
            cfg = config_from_dict(ExperimentConfig, json.loads(saved.read_text()))
            resumed = apply_overrides(cfg, sets)
        except (OverrideError, ValueError) as exc:
            parser.error(str(exc))
        changed = [d for d in diff_configs(cfg, resumed) if not d.startswith(RESUMABLE_CHANGES)]
        if changed:
            parser.error(f"--resume may change only {', '.join(RESUMABLE_CHANGES)}; asked to change: "
                         + "; ".join(changed))
        return resumed, run, True
    try:
        cfg = apply_overrides(PRESETS[args.preset], sets)
    except (OverrideError, ValueError) as exc:
        parser.error(str(exc))
    return cfg, Path(args.out) if args.out else None, False


def provide_host_devices(mesh: str) -> None:
    """On CPU, a DxM (or DxFxM) mesh runs on D*M (D*F*M) fake host devices; must happen before JAX starts."""
    import math

    from rl_jax.runtime import tune_cpu_backend
    from rl_jax.sharding import parse_mesh_shape

    devices = math.prod(parse_mesh_shape(mesh))
    tune_cpu_backend()  # the CPU backend's measured-faster dot libraries (rl_jax/runtime.py)
    flags = os.environ.get("XLA_FLAGS", "")
    processes = int(os.environ.get("RL_JAX_NUM_PROCESSES") or 1)  # multi-host: each provides its share
    local = max(1, devices // processes)
    if local > 1 and "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={local}".strip()


def load_policy(cfg: ExperimentConfig, mesh: Any) -> tuple[Any, Any]:
    """``(model, chat format)`` on ``mesh``: the embedded GGUF, a tiny random model, or a checkpoint."""
    from rl_jax.models.transformer import checkpoint_policy
    from rl_jax.sharding import shard_module

    model, fmt = _load(cfg, mesh)
    # static settings of the module: part of the graph the trainer compiles
    model.remat = cfg.policy.remat
    if cfg.policy.scan_layers:
        model.scan = True  # the layer weights stacked (a copy), then laid out on the mesh with their layers axis
        shard_module(model, mesh)
    checkpoint_policy(cfg.policy.remat_policy)  # an unknown name fails here, before anything is compiled
    model.remat_policy = cfg.policy.remat_policy
    model.set_attention_backend(cfg.policy.attention_backend)
    return model, fmt


def _load(cfg: ExperimentConfig, mesh: Any) -> tuple[Any, Any]:
    import jax.numpy as jnp
    from flax import nnx

    from rl_jax.chat import load_chat_format
    from rl_jax.models import ModelConfig, Transformer, load_gguf, load_pretrained, smollm2_gguf_path
    from rl_jax.sharding import shard_module

    dtype, param_dtype = jnp.dtype(cfg.policy.dtype), jnp.dtype(cfg.policy.param_dtype)
    path = cfg.policy.checkpoint
    if path == "tiny":
        fmt = load_chat_format()
        vocab = fmt.tokenizer.vocab_size
        tiny = ModelConfig(family="llama", vocab_size=vocab, hidden_size=64, intermediate_size=128, num_layers=2,
                           num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=8192,
                           tie_word_embeddings=True)
        model = Transformer(tiny, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(cfg.policy.seed))
        return shard_module(model, mesh), fmt
    if path == "embedded" or path.endswith(".gguf"):
        gguf = smollm2_gguf_path() if path == "embedded" else path
        _, model = load_gguf(gguf, mesh=mesh, dtype=dtype, param_dtype=param_dtype, progress=False)
        return model, load_chat_format(None if path == "embedded" else path)
    model = load_pretrained(path, mesh=mesh, dtype=dtype, param_dtype=param_dtype, progress=False)
    return model, load_chat_format(path)


@contextlib.contextmanager
def http_fleet(cfg: ExperimentConfig, run: Path) -> Iterator[Any]:
    """The env's HTTP fleet: the given URL, or a `corecraft serve` this run starts (and stops) on loopback."""
    from corecraft.env.environment import HttpFleet
    from corecraft.server.spawn import spawned_http_server

    env = cfg.env
    agent = os.environ.get(env.agent_token_env) if env.agent_token_env else None
    trainer = os.environ.get(env.trainer_token_env) if env.trainer_token_env else None
    if env.url:
        if not trainer:
            raise SystemExit("grpo_corecraft: error: env.url needs env.trainer_token_env naming a set variable "
                             "(grading runs on the server's trainer-only route)")
        yield HttpFleet(env.url, agent, trainer)
        return
    agent, trainer = agent or secrets.token_hex(16), trainer or secrets.token_hex(16)
    args = ["--token", agent, "--trainer-token", trainer] + (["--tasks", env.task_dir] if env.task_dir else [])
    try:
        with spawned_http_server(args, run / "corecraft-serve.log") as (url, proc):
            log(f"tools over HTTP: {url} (corecraft serve, pid {proc.pid})")
            yield HttpFleet(url, agent, trainer)
    except (RuntimeError, TimeoutError) as exc:
        raise SystemExit(f"grpo_corecraft: error: {exc}") from None


def eval_summary(episodes: Sequence[Any], k: int) -> dict[str, float]:
    """Held-out metrics by the code `corecraft eval` reports with (pass rate, Pass@k, Pass^k, mean reward)."""
    from corecraft.eval.metrics import summarize_runs

    records = [{"task_id": e["task_id"], "passed": e["passed"], "reward": e["reward"],
                "n_tool_calls": len(e["tool_calls"]), "turns": e["turns"]} for e in episodes]
    overall = summarize_runs(records, k)
    out = {"pass_rate": overall["pass_rate"], "reward_mean": overall["mean_score"], "pass@1": overall["pass@1"]}
    for key in (f"pass@{k}", f"pass^{k}"):
        if overall.get(key) is not None:
            out[key] = overall[key]
    return out


def run(cfg: ExperimentConfig, run_dir: Path | None, resume: bool) -> dict[str, Any]:
    import jax

    from corecraft.env.environment import CoreCraftEnv
    from corecraft.episode.chat import ChatConfig
    from corecraft.tasks.store import load_task_set
    from rl_jax.learner.loop import Learner, RunConfigs
    from rl_jax.learner.metrics_log import plot_metrics
    from rl_jax.rollout import McpTarget
    from rl_jax.sharding import axis_rules

    t_start = time.monotonic()
    mesh = cfg.train.make_mesh()
    log(f"mesh {dict(mesh.shape)} on {jax.device_count()} {jax.default_backend()} device(s), "
        f"{jax.process_count()} process(es)" + (f"; sharding rules {', '.join(cfg.train.sharding_rules)}"
                                                 if cfg.train.sharding_rules else ""))
    run_dir = run_dir or Path(cfg.out_dir) / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)

    t0 = time.monotonic()
    with axis_rules(cfg.train.logical_rules):
        model, fmt = load_policy(cfg, mesh)
    n_params = sum(x.size for x in jax.tree.leaves(model_params(model)))
    log(f"policy {cfg.policy.checkpoint}: {n_params / 1e6:.1f}M parameters in {time.monotonic() - t0:.1f} s")
    if not cfg.sampling.stop_token_ids:  # the tokenizer's turn ends: resolved here, saved with the config
        cfg = dataclasses.replace(cfg, sampling=dataclasses.replace(
            cfg.sampling, stop_token_ids=tuple(fmt.tokenizer.stop_token_ids)))

    task_set = load_task_set(cfg.env.task_dir)
    judge = None
    if cfg.env.judge_base_url and cfg.env.judge_model:
        judge = ChatConfig(base_url=cfg.env.judge_base_url, model=cfg.env.judge_model,
                           api_key_env=cfg.env.judge_api_key_env)
    configs = RunConfigs(cfg.learner, cfg.sampling, cfg.rollout, cfg.train, cfg.advantages,
                         engine=cfg.engine if cfg.generator == "engine" else None)
    with contextlib.ExitStack() as stack:
        # the experiment's logical-axis rules, for the policy's parameters and caches and for every program the
        # learner traces (the model was placed under them above)
        stack.enter_context(axis_rules(cfg.train.logical_rules))
        fleet = stack.enter_context(http_fleet(cfg, run_dir)) if cfg.env.transport == "http" else None
        env = CoreCraftEnv(task_set, cfg.env.episode, judge=judge, fleet=fleet, target=McpTarget)
        info = env.describe()
        log(f"tasks: {info['tasks']['train']} train, {info['tasks']['eval']} eval drawable"
            + (f"; left out (LLM criteria, no judge configured): {info['left_out_llm_tasks']}"
               if any(info["left_out_llm_tasks"].values()) else ""))
        sample = env.task_ids("train")[0]
        messages, tools = env.opening(sample)
        prompt_tokens = len(fmt.encode(messages, list(tools), add_generation_prompt=True))
        log(f"prompt form {cfg.env.episode.prompt_form!r}: {prompt_tokens} prompt tokens "
            f"(model context {model.config.max_position_embeddings})")
        learner = Learner.create(model, fmt, env, configs, mesh, run_dir, resume=resume, progress=log,
                                 eval_summary=eval_summary)
        if jax.process_index() == 0:  # after create, which refuses a folder holding another run's checkpoints
            (run_dir / CONFIG_FILE).write_text(json.dumps(config_to_dict(cfg), indent=2, sort_keys=True))

        async def main() -> dict[str, Any]:
            async with env:
                return await learner.run()

        import asyncio

        summary = asyncio.run(main())
    if jax.process_index() == 0:
        png = plot_metrics(run_dir / "metrics.jsonl", run_dir / "reward.png", title=f"{cfg.name}: reward and pass rate")
        summary["plot"] = str(png)
    summary.update(prompt_tokens=prompt_tokens, policy_params_m=round(n_params / 1e6, 1), mesh=cfg.train.mesh,
                   devices=jax.device_count(), backend=jax.default_backend(),
                   total_wall_s=round(time.monotonic() - t_start, 1))
    return summary


def model_params(model: Any) -> Any:
    from flax import nnx

    return nnx.state(model, nnx.Param)


def main(argv: Sequence[str] | None = None) -> int:
    cfg, run_dir, resume = parse_args(argv)
    try:
        provide_host_devices(cfg.train.mesh)
        # join the process group (multi-host) before anything touches a device: jax.distributed must be
        # initialised before the backends are; with no RL_JAX_* settings this is a no-op (one process)
        from rl_jax.train.distributed import initialize_distributed

        initialize_distributed()
    except ValueError as exc:
        print(f"grpo_corecraft: error: {exc}", file=sys.stderr)
        return 2
    from rl_jax.sharding import ShardingError

    try:
        summary = run(cfg, run_dir, resume)
    # a run folder that cannot be started or resumed; a layout the mesh cannot hold (e.g. heads that do not
    # divide the model axis without a train.sharding_rules entry for them)
    except (FileNotFoundError, FileExistsError, ShardingError) as exc:
        print(f"grpo_corecraft: error: {exc}", file=sys.stderr)
        return 2
    # strict JSON: a figure that does not exist (no evaluation ran) is null, not NaN
    summary = {k: None if isinstance(v, float) and v != v else v for k, v in summary.items()}
    print(json.dumps(summary, sort_keys=True, default=str))
    return 0


__all__ = ["ExperimentConfig", "main", "parse_args"]

if __name__ == "__main__":
    sys.exit(main())
