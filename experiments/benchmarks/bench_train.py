"""Train-step throughput: our full GRPO step vs Google Tunix's GRPO step vs PyTorch forward+backward+AdamW.

SmolLM2-135M in float32 at B=4, T=512 (2048 tokens a step). Ours: ``rl_jax.train`` with the default loss (BAPO
adaptive clipping, token mean, chunked log-probs with entropy), AdamW with global-norm clipping, the real
SmolLM2 weights from the embedded GGUF. PyTorch: transformers' ``LlamaForCausalLM`` built from the same
config (random weights: speed does not depend on them), cross-entropy loss, ``torch.optim.AdamW``.

Tunix (only when ``import tunix`` works: google-tunix, the `bench` extra, e.g. ``.venv-bench``; otherwise the
JSON says "not installed"): its GRPO policy update as its trainer jits it, without rollout. A real
``RLCluster`` (vanilla rollout engine; actor, rollout and reference roles on one 1x1 ("fsdp", "tp") mesh, so
the rollout shares the trained model and is never called) and a ``GRPOLearner`` (beta=0: no reference model,
no KL, as our default; epsilon 0.2; token-mean loss aggregation like ours instead of Tunix's default
sequence-mean-token-mean), whose constructor wires ``tunix.rl.grpo.grpo_learner.grpo_loss_fn`` into the
actor's ``tunix.rl.trainer.Trainer``. Timed is the function that trainer's
``PeftTrainer.jit_train_and_eval_step(cache_nnx_graph=True)`` returns (what ``PeftTrainer.train`` calls per
batch, under the actor mesh): ``nnx.jit`` of ``PeftTrainer._train_step``, i.e. ``nnx.value_and_grad`` of the
GRPO loss (full-sequence forward of Tunix's Llama3, per-token log-probs of the completion by a full-vocab
log-softmax, clipped importance ratios against the given old log-probs), ``optax.global_norm`` of the grads
and ``nnx.Optimizer.update`` with ``optax.chain(clip_by_global_norm(1.0), adamw(1e-6, weight_decay=0.01))``.
It gets one ready ``grpo_learner.TrainExample``: random token ids (no pad or eos id) split into a T/8 = 64
token prompt and a 448-token completion, a completion mask with the same 32-token tool-output hole as ours,
per-sequence advantages and old per-token log-probs. The model is Tunix's Llama3 holding the real SmolLM2
weights (``tunix_smollm.tunix_llama``: safetensors export, rope_theta patch), float32, no remat (Tunix's
default). Not timed: rollout, rewards, advantages, and the Python of Tunix's train loop around the step.

Each system runs in its own child process (clean peak RSS, no thread pools fighting); the CPU's float32
matmul peak is measured in the same run. Compile time is reported apart and excluded from tokens/s. Besides
wall time each step's process CPU time is recorded: on a shared machine the wall clock depends on the
neighbours, the CPU seconds much less. ``--dtype bfloat16`` runs our matmuls in bf16 with float32 params and
optimizer state (mixed precision; labelled as such; the Tunix and PyTorch peers stay float32). Prints
progress to stderr and one final JSON line.

    .venv/bin/python experiments/benchmarks/bench_train.py [--steps 5] [--dtype float32 bfloat16]
    .venv-bench/bin/python experiments/benchmarks/bench_train.py   # with Tunix
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def log(msg: str) -> None:
    print(f"[bench_train] {msg}", file=sys.stderr, flush=True)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_seconds() -> float:
    """This process's CPU time (user + system): the work done, whatever else shares the cores."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def model_flops_per_step(cfg, batch: int, length: int) -> float:
    """6 N per token for the matmuls (forward + backward) plus attention scores and values: 12 L H Dh T per
    token (PaLM's accounting; the causal half is not subtracted)."""
    tokens = batch * length
    return 6.0 * cfg.num_params() * tokens + 12.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim * length * tokens


# ---------------------------------------------------------------------------------------------- children


def run_ours(args: argparse.Namespace) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from rl_jax.models import load_gguf, smollm2_gguf_path
    from rl_jax.train import OptimizerConfig, TrainConfig, collate, create_train_state

    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
    # params (and AdamW state) stay float32; --dtype bfloat16 runs the matmuls in bf16 (mixed precision)
    cfg, model = load_gguf(smollm2_gguf_path(), dtype=dtype, param_dtype=jnp.float32, progress=False)
    train_cfg = TrainConfig(
        optimizer=OptimizerConfig(learning_rate=1e-6, weight_decay=0.01, max_grad_norm=1.0),
        logprob_chunk=args.chunk,
        length_buckets=(args.length,),
    )
    _, state, train_step = create_train_state(model, train_cfg)
    del model
    rng = np.random.default_rng(0)
    prompt = args.length // 8
    tokens = rng.integers(0, cfg.vocab_size, size=(args.batch, args.length))
    masks = np.ones((args.batch, args.length), np.float32)
    masks[:, :prompt] = 0.0
    masks[:, args.length // 2 : args.length // 2 + 32] = 0.0  # a tool output mid-episode
    # sampler log-probs near a uniform policy's; the values steer the clip search, never the amount of work
    old_logp = np.log(1.0 / cfg.vocab_size) + rng.normal(0, 0.05, size=masks.shape)
    batch = collate(
        tokens.tolist(), masks.tolist(), old_logp.tolist(), rng.normal(size=args.batch).tolist(),
        buckets=(args.length,),
    )
    batch = jax.tree.map(jnp.asarray, batch)

    t0 = time.perf_counter()
    state, metrics = train_step(state, batch)
    jax.block_until_ready((state, metrics))
    compile_s = time.perf_counter() - t0
    log(f"ours ({args.dtype}): first step (compile + run) {compile_s:.1f}s, loss {float(metrics['loss']):.4f}")
    times, cpu = [], []
    for i in range(args.steps):
        t0, c0 = time.perf_counter(), cpu_seconds()
        state, metrics = train_step(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
        cpu.append(cpu_seconds() - c0)
        log(f"ours ({args.dtype}): step {i + 1}/{args.steps} {times[-1]:.2f}s wall, {cpu[-1]:.1f}s cpu")
    assert int(metrics["skipped"]) == 0 and np.isfinite(float(metrics["loss"]))
    return {"step_s": times, "cpu_s": cpu, "compile_s": compile_s, "peak_rss_mib": peak_rss_mib(),
            "dtype": args.dtype, "param_dtype": "float32"}


def run_torch(args: argparse.Namespace) -> dict:
    import gguf
    import torch
    import transformers

    from rl_jax.models.loading import config_from_gguf, smollm2_gguf_path

    cfg = config_from_gguf(gguf.GGUFReader(smollm2_gguf_path()))
    torch.manual_seed(0)
    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in cfg.to_hf().items() if k != "architectures"})
    model = transformers.LlamaForCausalLM(hf_cfg).float().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.01)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.length))

    def step() -> float:
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(out.loss)

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    times, cpu = [], []
    for i in range(args.steps):
        t0, c0 = time.perf_counter(), cpu_seconds()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(cpu_seconds() - c0)
        log(f"torch: step {i + 1}/{args.steps} {times[-1]:.2f}s wall, {cpu[-1]:.1f}s cpu")
    return {"step_s": times, "cpu_s": cpu, "first_step_s": first, "peak_rss_mib": peak_rss_mib(),
            "threads": torch.get_num_threads(), "version": torch.__version__}


def run_tunix(args: argparse.Namespace) -> dict:
    import importlib.metadata

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx
    from tunix.rl import rl_cluster as rl_cluster_lib
    from tunix.rl.grpo import grpo_learner
    from tunix.rl.rollout import base_rollout
    from tunix_smollm import IdsTokenizer, tunix_llama

    from rl_jax.models import load_gguf, smollm2_gguf_path

    cfg, ours = load_gguf(smollm2_gguf_path(), dtype=jnp.float32, param_dtype=jnp.float32, progress=False)
    model = tunix_llama(cfg, ours, dtype=jnp.float32)
    del ours
    prompt, pad_id = args.length // 8, 0
    eos_id = cfg.eos_token_ids[0] if cfg.eos_token_ids else 0
    completion = args.length - prompt
    # one device; the roles share it, so the rollout model is the trained one (Tunix's colocated set-up)
    mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)  # as tunix.cli
    roles = (rl_cluster_lib.Role.ACTOR, rl_cluster_lib.Role.REFERENCE, rl_cluster_lib.Role.ROLLOUT)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-6, weight_decay=0.01))
    cluster = rl_cluster_lib.RLCluster(
        actor=model, tokenizer=IdsTokenizer([], eos_id=eos_id, pad_id=pad_id),
        cluster_config=rl_cluster_lib.ClusterConfig(
            role_to_mesh=dict.fromkeys(roles, mesh), rollout_engine="vanilla", offload_to_cpu=False,
            training_config=rl_cluster_lib.RLTrainingConfig(actor_optimizer=optimizer, eval_every_n_steps=10**9),
            rollout_config=base_rollout.RolloutConfig(
                max_tokens_to_generate=completion, max_prompt_length=prompt, kv_cache_size=args.length,
            ),
        ),
    )
    # beta 0: no reference model, no KL term (our default); token-mean aggregation, as ours. The learner's
    # constructor wires Tunix's grpo_loss_fn into the actor trainer; its rollout is never called.
    algo = grpo_learner.GRPOConfig(num_generations=2, num_iterations=1, beta=0.0, epsilon=0.2,
                                   loss_agg_mode="token-mean")
    grpo_learner.GRPOLearner(rl_cluster=cluster, algo_config=algo, reward_fns=lambda prompts, **_: [0.0] * len(prompts))

    rng = np.random.default_rng(0)
    ids = rng.integers(0, cfg.vocab_size, size=(args.batch, args.length))
    ids[(ids == pad_id) | (ids == eos_id)] = 1  # a pad or eos would cut Tunix's attention mask short
    mask = np.ones((args.batch, completion), bool)
    mask[:, args.length // 2 - prompt : args.length // 2 - prompt + 32] = False  # a tool output mid-episode
    old_logp = np.log(1.0 / cfg.vocab_size) + rng.normal(0, 0.05, size=mask.shape)
    example = grpo_learner.TrainExample(
        prompt_ids=jnp.asarray(ids[:, :prompt], jnp.int32), prompt_mask=jnp.ones((args.batch, prompt), bool),
        completion_ids=jnp.asarray(ids[:, prompt:], jnp.int32), completion_mask=jnp.asarray(mask),
        advantages=jnp.asarray(rng.normal(size=args.batch), jnp.float32), ref_per_token_logps=None,
        old_per_token_logps=jnp.asarray(old_logp, jnp.float32),
    )

    def step() -> tuple:
        out = train_step(example)  # (loss, aux, grad_norm); the model and optimizer update in place
        jax.block_until_ready((out, nnx.state(trainer.model, nnx.Param)))
        return out

    # RLCluster.update_actor enters the actor's mesh (`with mesh:`, deprecated in this JAX) around
    # PeftTrainer.train, which takes the jitted step as below and calls it on each TrainExample
    warnings.filterwarnings("ignore", message=".*`with mesh:`", category=DeprecationWarning)
    with mesh:
        trainer = cluster.actor_trainer
        train_step, _ = trainer.jit_train_and_eval_step(cache_nnx_graph=True)
        t0 = time.perf_counter()
        loss, aux, grad_norm = step()
        compile_s = time.perf_counter() - t0
        log(f"tunix: first step (compile + run) {compile_s:.1f}s, loss {float(loss):.4f}")
        times, cpu = [], []
        for i in range(args.steps):
            t0, c0 = time.perf_counter(), cpu_seconds()
            loss, aux, grad_norm = step()
            times.append(time.perf_counter() - t0)
            cpu.append(cpu_seconds() - c0)
            log(f"tunix: step {i + 1}/{args.steps} {times[-1]:.2f}s wall, {cpu[-1]:.1f}s cpu")
    assert np.isfinite(float(loss)) and np.isfinite(float(grad_norm))
    return {"step_s": times, "cpu_s": cpu, "compile_s": compile_s, "peak_rss_mib": peak_rss_mib(),
            "dtype": "float32", "version": importlib.metadata.version("google-tunix"),
            "loss_agg_mode": algo.loss_agg_mode, "pg_clipfrac": float(aux["pg_clipfrac"])}


def matmul_peak_gflops(n: int = 2048, repeats: int = 7) -> dict:
    """Best-of-N float32 matmul throughput with JAX (XLA) and PyTorch; the peak is the better of the two."""
    import jax
    import jax.numpy as jnp
    import torch

    a = jnp.asarray(jax.random.normal(jax.random.key(0), (n, n), jnp.float32))
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best_jax = min(_timed(lambda: f(a, a).block_until_ready()) for _ in range(repeats))
    x = torch.randn(n, n)
    x @ x
    best_torch = min(_timed(lambda: x @ x) for _ in range(repeats))
    flops = 2.0 * n**3
    out = {"jax_gflops": flops / best_jax / 1e9, "torch_gflops": flops / best_torch / 1e9}
    out["peak_gflops"] = max(out.values())
    return {k: round(v, 1) for k, v in out.items()}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------- driver


def child(name: str, args: argparse.Namespace, dtype: str = "float32") -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--steps", str(args.steps), "--batch", str(args.batch),
           "--length", str(args.length), "--chunk", str(args.chunk), "--dtype", dtype]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if args.cache_dir:
        # repeated runs (the median of several) compile the 30-layer step once
        env.setdefault("JAX_COMPILATION_CACHE_DIR", args.cache_dir)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} benchmark failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per system (after one untimed)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=256, help="our log-prob chunk (positions)")
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"],
                        help="our compute dtype(s); params and optimizer state are always float32")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--skip-tunix", action="store_true", help="do not run Tunix even when installed")
    parser.add_argument("--cache-dir", default="/tmp/rl_jax_bench_train_xla_cache",
                        help="XLA compilation cache shared by runs ('' disables)")
    parser.add_argument("--child", choices=["ours", "tunix", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from rl_jax.runtime import tune_cpu_backend

    # both JAX systems (ours, Tunix) and the driver's matmul peak run with the same CPU backend settings
    tune_cpu_backend()
    if args.child:
        args.dtype = args.dtype[0]
        fn = {"ours": run_ours, "tunix": run_tunix, "torch": run_torch}[args.child]
        print(json.dumps(fn(args)), flush=True)
        return

    import gguf

    from rl_jax.models.loading import config_from_gguf, smollm2_gguf_path

    cfg = config_from_gguf(gguf.GGUFReader(smollm2_gguf_path()))
    tokens = args.batch * args.length
    flops = model_flops_per_step(cfg, args.batch, args.length)
    result: dict = {
        "bench": "train_step", "model": "SmolLM2-135M", "dtype": "float32", "batch": args.batch,
        "length": args.length, "tokens_per_step": tokens, "params": cfg.num_params(),
        "model_gflop_per_step": round(flops / 1e9, 1), "load_avg_start": load_average(), "cpus": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    log(f"load average {result['load_avg_start']}; measuring matmul peak")
    result["matmul"] = matmul_peak_gflops()

    runs = [(f"ours_{d}", "ours", d) for d in args.dtype]
    if importlib.util.find_spec("tunix") is None:
        result["tunix"] = "not installed (google-tunix, the `bench` extra): not measured"
    elif args.skip_tunix:
        result["tunix"] = "installed, skipped (--skip-tunix)"
    else:
        runs.append(("tunix", "tunix", "float32"))
    if not args.skip_torch:
        runs.append(("torch", "torch", "float32"))
    for key, name, dtype in runs:
        log(f"running {key}")
        try:
            r = child(name, args, dtype)
        except RuntimeError as e:
            result[key] = {"error": str(e)}
            continue
        med = statistics.median(r["step_s"])
        r["median_step_s"] = round(med, 3)
        r["tokens_per_s"] = round(tokens / med, 1)
        r["median_cpu_s"] = round(statistics.median(r["cpu_s"]), 2)
        r["model_gflops"] = round(flops / med / 1e9, 1)
        r["fraction_of_matmul_peak"] = round(flops / med / 1e9 / result["matmul"]["peak_gflops"], 3)
        r["step_s"] = [round(t, 3) for t in r["step_s"]]
        r["cpu_s"] = [round(t, 2) for t in r["cpu_s"]]
        result[key] = r
    for peer, peer_label in (("torch", "torch_f32"), ("tunix", "tunix")):
        if not isinstance(result.get(peer), dict) or "tokens_per_s" not in result[peer]:
            continue
        for key, _, _ in runs:
            if key not in (peer, "torch") and "tokens_per_s" in result[key]:
                this = "tunix" if key == "tunix" else "ours"
                result[key][f"speedup_vs_{peer_label}"] = round(
                    result[key]["tokens_per_s"] / result[peer]["tokens_per_s"], 2
                )
                result[key][f"cpu_work_ratio_{peer}_over_{this}"] = round(
                    result[peer]["median_cpu_s"] / result[key]["median_cpu_s"], 2
                )
    result["load_avg_end"] = load_average()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
