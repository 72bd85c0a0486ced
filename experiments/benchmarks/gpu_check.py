"""The prepared GPU check (issue 22): a Qwen3-1.7B-shaped model in bf16, ours against PyTorch, in one run.

Sized for one H100 (80 GB) in under 8 minutes, all stages together. A randomly initialised model shaped like
Qwen3-1.7B (28 layers, hidden 2,048, MLP 6,144, 16 query and 8 KV heads of 128, QK-norm, tied embeddings,
vocabulary 151,936: ``qwen3_1p7b()``); nothing is downloaded (the machine has no network). Stages, each in its
own child process under its own timeout (a failing or slow stage reports its error, the others their figures;
each framework gets the GPU's memory to itself):

* ``peak``: a bf16 8192^3 matrix product in PyTorch, the card's measured matmul rate (MFU is also given
  against it, beside the datasheet's);
* ``ours_train``: ``rl_jax.train``'s GRPO train step at B x T (default 8 x 2,048: 16k tokens, what fits beside
  f32 master weights and AdamW state, 32 GB): bf16 compute over f32 parameters and optimizer state, scanned
  and rematerialized layers, the attention backend ``--attention-backend`` picks ("auto": cuDNN on GPU),
  chunked log-probs with entropy, BAPO clip search, global-norm clip, AdamW. Compile time is the first call's
  time less a step's (the step is compiled ahead of its first run);
* ``torch_train``: transformers' ``Qwen3ForCausalLM`` from the same config, SDPA attention, f32 parameters
  under ``torch.autocast(bf16)`` (the same mixed precision), gradient checkpointing (as our remat),
  cross-entropy loss, global-norm clip and ``torch.optim.AdamW`` (fused on GPU), eager, at the same B x T;
* ``ours_generate``: ``rl_jax.sampling.Sampler`` at batch 16, bf16 weights and cache, random 128-token
  prompts, 256 new tokens each (no stop token: every row runs to the budget), temperature 1;
* ``hf_generate``: transformers' ``generate`` on the same shapes (bf16, SDPA, sampling, no stop token).

Throughput is tokens per second of wall time, the median of ``--steps`` timed calls (``--gen-steps`` for the
generation stages) after a warm-up call (the compile). Should PyTorch's step run out of memory (transformers
holds the whole [B, T, V] logits in bf16 and f32), it is timed again at half the rows, and says so.
MFU = model FLOPs per step / step time / peak, with the model FLOPs of PaLM's accounting: ``6 N`` per token
(N = every parameter in a matmul, the tied unembedding once) plus ``12 L H Dh T`` per token for attention's
scores and values (the causal half not subtracted); the recomputation of remat is not counted.
The peak is the datasheet's dense bf16 rate of the card (H100 SXM: 989.4 TFLOP/s), and, separately, the
``peak`` stage's measured matmul rate. One final JSON line: every stage's figures and the headline ratios
against the issue's targets (train MFU >= 40%, ours >= 1.0x PyTorch's tokens/s, decode >= 2x generate's at
batch 16, the 28-layer train step compiled in under 60 s).

    bash experiments/benchmarks/gpu_check.sh                  # on the GPU machine (python3 there has both)
    .venv/bin/python experiments/benchmarks/gpu_check.py --tiny   # the same code paths on CPU, tiny, ~1 min
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

STAGES = ("peak", "ours_train", "torch_train", "ours_generate", "hf_generate")
# seconds each stage may take on the H100 (start-up, compile and timing included); the sum stays under 8 min
STAGE_TIMEOUT_S = {"peak": 40, "ours_train": 150, "torch_train": 90, "ours_generate": 110, "hf_generate": 70}
# dense bf16 tensor-core FLOP/s from the datasheets (no sparsity), by a name the device reports
DATASHEET_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}


def log(msg: str) -> None:
    print(f"[gpu_check] {msg}", file=sys.stderr, flush=True)


def qwen3_1p7b(tiny: bool = False) -> Any:
    from rl_jax.models import ModelConfig

    if tiny:
        return ModelConfig(
            family="qwen3",
            vocab_size=512,
            hidden_size=64,
            intermediate_size=192,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            head_dim=32,
            qk_norm=True,
            tie_word_embeddings=True,
            rope_theta=1_000_000.0,
            max_position_embeddings=1024,
            rms_norm_eps=1e-6,
        )
    return ModelConfig(
        family="qwen3",
        vocab_size=151_936,
        hidden_size=2048,
        intermediate_size=6144,
        num_layers=28,
        num_heads=16,
        num_kv_heads=8,
        head_dim=128,
        qk_norm=True,
        tie_word_embeddings=True,
        rope_theta=1_000_000.0,
        max_position_embeddings=40_960,
        rms_norm_eps=1e-6,
    )


def train_flops_per_step(cfg: Any, batch: int, length: int) -> float:
    """PaLM's model FLOPs of a training step (forward + backward): 6 N + 12 L H Dh T per token."""
    tokens = batch * length
    return (
        6.0 * cfg.num_params() * tokens
        + 12.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim * length * tokens
    )


def hf_config(cfg: Any) -> Any:
    import transformers

    fields = {k: v for k, v in cfg.to_hf().items() if k != "architectures"}
    fields.update(eos_token_id=None, bos_token_id=None, pad_token_id=0, use_cache=True)
    config = transformers.Qwen3Config(**fields)
    config._attn_implementation = "sdpa"
    return config


def _timed(fn: Any, steps: int, sync: Any) -> tuple[float, list[float]]:
    """(first call's seconds, the following ``steps`` calls' seconds), each waited for with ``sync``."""
    t0 = time.perf_counter()
    sync(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - t0)
    return first, times


# ------------------------------------------------------------------------------------------------ stages


def stage_peak(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    n = 512 if args.tiny else 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    sync()
    seconds = (time.perf_counter() - t0) / 10
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    return {"device": name, "matmul_n": n, "measured_bf16_flops": 2 * n**3 / seconds}


def stage_ours_train(args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from rl_jax.models import Transformer
    from rl_jax.train import OptimizerConfig, TrainConfig, collate, create_train_state

    cfg = qwen3_1p7b(args.tiny)
    t0 = time.perf_counter()
    model = Transformer(
        cfg,
        rngs=nnx.Rngs(0),
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        remat=True,
        remat_policy=args.remat_policy,
        scan=True,
        attention_backend=args.attention_backend,
    )
    train_cfg = TrainConfig(
        optimizer=OptimizerConfig(learning_rate=1e-6, weight_decay=0.01, max_grad_norm=1.0),
        logprob_chunk=args.logprob_chunk,
        length_buckets=(args.length,),
        prefix_tree=False,
    )
    _, state, train_step = create_train_state(model, train_cfg)
    del model
    init_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, size=(args.batch, args.length))
    masks = np.ones(tokens.shape, np.float32)
    masks[:, : args.length // 8] = 0.0  # the prompt
    old = np.log(1.0 / cfg.vocab_size) + rng.normal(0, 0.05, size=tokens.shape)
    batch = collate(
        tokens.tolist(),
        masks.tolist(),
        old.tolist(),
        rng.normal(size=args.batch).tolist(),
        buckets=(args.length,),
    )
    batch = jax.tree.map(jnp.asarray, batch)
    holder = {"state": state}

    def step() -> Any:
        holder["state"], holder["metrics"] = train_step(holder["state"], batch)
        return holder["metrics"]

    first, times = _timed(step, args.steps, jax.block_until_ready)
    metrics = holder["metrics"]
    step_s = statistics.median(times)
    return {
        "batch": [args.batch, args.length],
        "step_s": times,
        "first_call_s": first,
        "compile_s": max(first - step_s, 0.0),
        "init_s": init_s,
        "tokens_per_s": args.batch * args.length / step_s,
        "model_flops_per_step": train_flops_per_step(cfg, args.batch, args.length),
        "loss": float(metrics["loss"]),
        "skipped": int(metrics["skipped"]),
        "attention_backend": args.attention_backend,
        "remat_policy": args.remat_policy,
        "device": jax.devices()[0].device_kind,
        "peak_memory_gib": _jax_peak_memory_gib(),
        "versions": {"jax": jax.__version__, "flax": _version("flax"), "optax": _version("optax")},
    }


def stage_torch_train(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = qwen3_1p7b(args.tiny)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(device):  # initialised where it runs: 2B parameters initialise in seconds on the GPU
        model = transformers.Qwen3ForCausalLM(hf_config(cfg)).float()
    model.config.use_cache = False
    model.gradient_checkpointing_enable()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.01, fused=device == "cuda")
    init_s = time.perf_counter() - t0
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    batch = args.batch
    while True:
        ids = torch.randint(0, cfg.vocab_size, (batch, args.length), device=device)

        def step(ids: Any = ids) -> float:
            with torch.autocast(device, dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.detach()

        try:
            first, times = _timed(step, args.steps, lambda _: sync())
            break
        except torch.OutOfMemoryError:
            # transformers materialises the [B, T, V] logits in bf16 and f32 (and their gradients): at 152k
            # words these, not the model, decide what fits; half the rows, tokens/s still per token
            if batch == 1:
                raise
            opt.zero_grad(set_to_none=True)
            del ids
            torch.cuda.empty_cache()
            batch //= 2
            log(f"torch_train: out of memory, again at batch {batch}")
    step_s = statistics.median(times)
    return {
        "batch": [batch, args.length],
        "out_of_memory_at_batch": None if batch == args.batch else args.batch,
        "step_s": times,
        "first_call_s": first,
        "init_s": init_s,
        "tokens_per_s": batch * args.length / step_s,
        "model_flops_per_step": train_flops_per_step(cfg, batch, args.length),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }


def stage_ours_generate(args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from rl_jax.models import Transformer
    from rl_jax.sampling import Sampler, SamplingConfig

    cfg = qwen3_1p7b(args.tiny)
    # inference weights in bf16 (the trainer's f32 masters cast once when synced), a bf16 cache
    model = Transformer(
        cfg,
        rngs=nnx.Rngs(0),
        dtype=jnp.bfloat16,
        param_dtype=jnp.bfloat16,
        attention_backend=args.attention_backend,
    )
    sampler = Sampler(model)
    del model
    rng = np.random.default_rng(0)
    prompts = rng.integers(0, cfg.vocab_size, size=(args.gen_batch, args.prompt_len)).tolist()
    config = SamplingConfig(temperature=1.0, max_new_tokens=args.new_tokens)
    keys = iter(jax.random.split(jax.random.key(0), args.gen_steps + 1))

    def generate() -> Any:
        out = sampler.generate(prompts, config, next(keys))
        assert int(np.min(out.lengths)) == args.new_tokens  # no stop token: every row ran to the budget
        return out.tokens

    first, times = _timed(generate, args.gen_steps, lambda x: np.asarray(x))
    seconds = statistics.median(times)
    return {
        "batch": args.gen_batch,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "generate_s": times,
        "first_call_s": first,
        "compile_s": max(first - seconds, 0.0),
        "tokens_per_s": args.gen_batch * args.new_tokens / seconds,
        "compiles": [dataclass_dict(r) for r in sampler.compile_log],
    }


def stage_hf_generate(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = qwen3_1p7b(args.tiny)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.Qwen3ForCausalLM(hf_config(cfg)).to(torch.bfloat16).eval()
    ids = torch.randint(0, cfg.vocab_size, (args.gen_batch, args.prompt_len), device=device)
    mask = torch.ones_like(ids)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    @torch.no_grad()
    def generate() -> Any:
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            pad_token_id=0,
        )
        assert out.shape[1] == args.prompt_len + args.new_tokens
        return out

    first, times = _timed(generate, args.gen_steps, lambda _: sync())
    seconds = statistics.median(times)
    return {
        "batch": args.gen_batch,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "generate_s": times,
        "first_call_s": first,
        "tokens_per_s": args.gen_batch * args.new_tokens / seconds,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }


def dataclass_dict(record: Any) -> dict[str, Any]:
    import dataclasses

    return {
        k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
        for k, v in dataclasses.asdict(record).items()
    }


def _jax_peak_memory_gib() -> float | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


def _version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


RUNNERS = {
    "peak": stage_peak,
    "ours_train": stage_ours_train,
    "torch_train": stage_torch_train,
    "ours_generate": stage_ours_generate,
    "hf_generate": stage_hf_generate,
}


# ------------------------------------------------------------------------------------------------ parent


def run_stage(name: str, args: argparse.Namespace, timeout: float) -> dict[str, Any]:
    """One stage in a child process: its JSON line, or what went wrong (timeout, exit status, last words)."""
    command = [sys.executable, __file__, "--stage", name, *args.passthrough]
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
    if name.startswith("ours"):
        env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")  # JAX's own pool: most of the card
    log(f"stage {name} (timeout {timeout:.0f}s)")
    t0 = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        tail = (e.stderr or b"")[-2000:]
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        return {"error": f"timed out after {timeout:.0f}s", "stderr_tail": tail}
    wall = time.perf_counter() - t0
    sys.stderr.write(done.stderr[-4000:])
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": f"exit status {done.returncode}", "stderr_tail": done.stderr[-2000:], "wall_s": wall}
    result = json.loads(lines[-1])
    result["wall_s"] = wall
    return result


def headline(stages: dict[str, dict[str, Any]], tiny: bool) -> dict[str, Any]:
    """The issue's figures and targets from the stages that succeeded (None where a stage failed)."""

    def get(stage: str, key: str) -> Any:
        return stages.get(stage, {}).get(key)

    device = get("peak", "device") or get("ours_train", "device") or "unknown"
    datasheet = next((v for k, v in DATASHEET_BF16_FLOPS.items() if k in str(device)), None)
    measured = get("peak", "measured_bf16_flops")

    def mfu(stage: str, peak: float | None) -> float | None:
        flops, times = get(stage, "model_flops_per_step"), get(stage, "step_s")
        if not (flops and times and peak):
            return None
        return flops / statistics.median(times) / peak

    def ratio(a: Any, b: Any) -> float | None:
        return a / b if a and b else None

    out: dict[str, Any] = {
        "device": device,
        "tiny": tiny,
        "datasheet_bf16_flops": datasheet,
        "measured_bf16_matmul_flops": measured,
        "train_tokens_per_s_ours": get("ours_train", "tokens_per_s"),
        "train_tokens_per_s_torch": get("torch_train", "tokens_per_s"),
        "train_speedup_vs_torch": ratio(
            get("ours_train", "tokens_per_s"), get("torch_train", "tokens_per_s")
        ),
        "mfu_ours": mfu("ours_train", datasheet),
        "mfu_torch": mfu("torch_train", datasheet),
        "mfu_ours_vs_measured_matmul": mfu("ours_train", measured),
        "compile_s_train_ours": get("ours_train", "compile_s"),
        "decode_tokens_per_s_ours": get("ours_generate", "tokens_per_s"),
        "decode_tokens_per_s_hf": get("hf_generate", "tokens_per_s"),
        "decode_speedup_vs_hf": ratio(
            get("ours_generate", "tokens_per_s"), get("hf_generate", "tokens_per_s")
        ),
        "compile_s_generate_ours": get("ours_generate", "compile_s"),
    }

    def met(value: Any, target: float, below: bool = False) -> bool | None:
        return None if value is None else (value < target if below else value >= target)

    out["targets_met"] = {
        "mfu_ours>=0.40": met(out["mfu_ours"], 0.40),
        "train_speedup_vs_torch>=1.0": met(out["train_speedup_vs_torch"], 1.0),
        "decode_speedup_vs_hf>=2.0": met(out["decode_speedup_vs_hf"], 2.0),
        "compile_s_train_ours<60": met(out["compile_s_train_ours"], 60.0, below=True),
    }
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--tiny", action="store_true", help="a tiny Qwen3-shaped model and batch (CPU, ~1 min)"
    )
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # a child process runs one stage
    parser.add_argument("--batch", type=int, default=None, help="train rows (default 8; --tiny 2)")
    parser.add_argument(
        "--length", type=int, default=None, help="train tokens per row (default 2048; --tiny 64)"
    )
    parser.add_argument("--steps", type=int, default=None, help="timed calls per stage (default 5; --tiny 2)")
    parser.add_argument(
        "--logprob-chunk", type=int, default=512, help="positions per vocabulary-projection chunk"
    )
    parser.add_argument("--attention-backend", default="auto", help="rl_jax.models.attention backend name")
    parser.add_argument("--remat-policy", default=None, help="REMAT_POLICIES name, e.g. dots_saveable")
    parser.add_argument("--gen-batch", type=int, default=16)
    parser.add_argument("--gen-steps", type=int, default=2, help="timed generate calls after the warm-up")
    parser.add_argument("--prompt-len", type=int, default=None, help="default 128; --tiny 16")
    parser.add_argument("--new-tokens", type=int, default=None, help="default 256; --tiny 8")
    parser.add_argument(
        "--budget-s", type=float, default=460.0, help="all stages together (--tiny: no limit)"
    )
    args = parser.parse_args(argv)
    # children get the parent's arguments as given
    args.passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    defaults = {
        "batch": (8, 2),
        "length": (2048, 64),
        "steps": (5, 2),
        "prompt_len": (128, 16),
        "new_tokens": (256, 8),
    }
    for name, (full, tiny) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, tiny if args.tiny else full)
    if args.tiny:
        args.logprob_chunk = min(args.logprob_chunk, 32)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.stage:  # a child: run the one stage, print its JSON line
        print(json.dumps(RUNNERS[args.stage](args)))
        return
    start = time.perf_counter()
    stages: dict[str, dict[str, Any]] = {}
    for name in args.stages:
        left = args.budget_s - (time.perf_counter() - start)
        if not args.tiny and left < 15:
            stages[name] = {"error": "not run: the time budget was spent"}
            continue
        timeout = 600.0 if args.tiny else min(STAGE_TIMEOUT_S[name], left)
        stages[name] = run_stage(name, args, timeout)
        log(f"stage {name}: " + ("ERROR " + stages[name]["error"] if "error" in stages[name] else "done"))
    summary = headline(stages, args.tiny)
    summary["total_s"] = time.perf_counter() - start
    summary["stages"] = stages
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
