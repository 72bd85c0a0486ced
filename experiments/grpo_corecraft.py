"""Main entry point: CoreCraft + the embedded policy, wired from one frozen config.

    python experiments/grpo_corecraft.py                 # embedded SmolLM2-135M-Instruct, 1x1 mesh
    python experiments/grpo_corecraft.py --mesh 8x4      # data x model; on CPU, 32 fake host devices

What it runs today: the task world and task set, the policy loaded onto the mesh, one batch of first agent
turns sampled for training tasks (the tools and the request in the prompt), every parsed tool call executed
on the task's own fork, and each episode graded by the rubric judge's deterministic checks. It ends with one
JSON line of what it measured. The multi-turn rollout pool and the GRPO loop plug in here next.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

from experiments.config import PRESETS, EnvConfig, ExperimentConfig, RolloutConfig


def parse_args(argv: list[str] | None = None) -> ExperimentConfig:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--mesh", help="DATAxMODEL device mesh, e.g. 8x4 (default 1x1)")
    parser.add_argument("--num-tasks", type=int, help="training tasks in the batch")
    parser.add_argument("--max-new-tokens", type=int, help="tokens sampled per agent turn")
    parser.add_argument("--checkpoint", help="HF checkpoint dir or .gguf (default: embedded SmolLM2-135M)")
    parser.add_argument("--out", help="output folder (default runs/)")
    args = parser.parse_args(argv)
    cfg = PRESETS[args.preset]
    if args.num_tasks is not None:
        if args.num_tasks < 1:
            parser.error("--num-tasks must be >= 1")
        cfg = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, num_tasks=args.num_tasks))
    if args.max_new_tokens is not None:
        if args.max_new_tokens < 1:
            parser.error("--max-new-tokens must be >= 1")
        cfg = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, max_new_tokens=args.max_new_tokens))
    if args.checkpoint:
        cfg = dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, checkpoint=args.checkpoint))
    if args.mesh:
        cfg = dataclasses.replace(cfg, mesh=args.mesh)
    if args.out:
        cfg = dataclasses.replace(cfg, out_dir=args.out)
    return cfg


def provide_host_devices(mesh: str) -> None:
    """On CPU, a DxM mesh runs on D*M fake host devices; must happen before JAX starts."""
    from rl_jax.runtime import tune_cpu_backend
    from rl_jax.sharding import parse_mesh_shape

    data, model = parse_mesh_shape(mesh)
    tune_cpu_backend()  # the CPU backend's measured-faster dot libraries (rl_jax/runtime.py)
    flags = os.environ.get("XLA_FLAGS", "")
    if data * model > 1 and "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={data * model}".strip()


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        provide_host_devices(cfg.mesh)
        # join the process group (multi-host) before anything touches a device: jax.distributed must be
        # initialised before the backends are; with no RL_JAX_* settings this is a no-op (one process)
        from rl_jax.train.distributed import initialize_distributed

        initialize_distributed()
    except ValueError as exc:
        print(f"grpo_corecraft: error: {exc}", file=sys.stderr)
        return 2
    from experiments.smoke import run_smoke

    summary = run_smoke(cfg)
    print(json.dumps(summary, sort_keys=True))
    return 0


__all__ = ["EnvConfig", "ExperimentConfig", "RolloutConfig", "main", "parse_args"]

if __name__ == "__main__":
    t0 = time.perf_counter()
    code = main()
    print(f"done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    sys.exit(code)
