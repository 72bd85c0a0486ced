"""Tree training on a CoreCraft-shaped GRPO batch: our step with the shared prompt computed once, our plain step,
and PyTorch's forward + backward + AdamW over the same rows, in one run.

The batch: one group of ``--group`` rows (8) that share the real CoreCraft prompt of one training task (the
episode definition's ``--prompt-form``, with SmolLM2's chat template and tokenizer: system prompt, the 23
tools, the task's request; ``--prefix-tokens`` keeps only its last N tokens), each followed by 512 to 1,024
tokens of its own (random ids: sampled turns, with a 200-token tool result in the middle that carries no
loss). SmolLM2-135M-Instruct, float32, from the embedded GGUF.

* ``tree``: ``collate_tree`` (the prompt as the copy's shared prefix, each row's own tokens, packed end to end
  in lanes unless ``--no-pack``) and the train step with every row at once (one micro-batch: the prefix is
  computed once per micro-batch), layers scanned and rematerialized (the main job's settings).
* ``plain``: ``collate`` and the same step with one row per micro-batch (rows of this length do not fit in
  this machine's memory several at a time), layers scanned and rematerialized.
* ``torch``: transformers' ``LlamaForCausalLM`` (same config, SDPA attention, gradient checkpointing), one row
  at a time, cross-entropy on the same loss tokens, gradients accumulated, ``torch.optim.AdamW`` once: what a
  user of a PyTorch trainer pays for these rows laid out plainly.

Ours: the step is compiled ahead of time (``jit(...).lower(...).compile()``, reported as ``compile_s``); then
``--steps`` timed steps. The loss and the gradient of the first step are compared between tree and plain: the
gradient is read back from AdamW's first moment after step 1 (mu = (1 - b1) g; clipping is off here), so the
comparison covers exactly the gradient the step applied. Each system runs in its own child process (its own
peak RSS). Progress goes to stderr; the last line printed is one JSON object with ``speedup_vs_plain``,
``speedup_vs_torch``, ``max_abs_loss_diff``, ``max_abs_grad_diff`` and each system's figures, with the CPU-time
ratios (``cpu_speedup_vs_*``), the layouts' forward matmul FLOPs (``forward_matmul_flops``: the speedup a
perfectly efficient tree step would have over an equally efficient plain one) and each step's rate per forward
FLOP (``forward_gflop_per_s``; ``rate_vs_torch`` measured against ``rate_needed_vs_torch``, what 4x PyTorch
needs of the tree step). ``--layers N`` keeps the first N layers, randomly initialised, in all three systems: a
run in a fraction of the time, with the full model's per-layer costs but a larger share of the
(layout-independent) unembedding, so smaller ratios.

``--remat-policy`` names what our rematerialized layers keep (default: the main job's ``PolicyConfig``), the
same for tree and plain.

    .venv/bin/python experiments/benchmarks/bench_prefix_train.py [--prompt-form compact] [--steps 1] [--layers N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# the length buckets of all three layouts: steps of 512 past 4,096 so neither layout pays for a doubled bucket
BUCKETS = (512, 1024, 2048, 3072, 4096, 4608, 5120, 5632, 6144, 6656, 7168, 7680, 8192)
B1 = 0.9


def log(msg: str) -> None:
    print(f"[bench_prefix_train] {msg}", file=sys.stderr, flush=True)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def make_rows(args: argparse.Namespace, path: Path) -> dict:
    """Write the batch's rows to ``path`` (npz) and describe them."""
    import numpy as np
    from bench_shared_prefix import main_job_prompts

    prompt = main_job_prompts(1, args.prompt_form)[0]
    if args.prefix_tokens:
        prompt = prompt[-args.prefix_tokens :]
    rng = np.random.default_rng(0)
    tokens, masks, olds = [], [], []
    for _ in range(args.group):
        n = int(rng.integers(512, 1025))
        own = rng.integers(1, 49152, n)
        mask = np.ones(n, np.float32)
        hole = int(rng.integers(100, n - 300))
        mask[hole : hole + 200] = 0.0  # a tool result: rendered by the template, not trained on
        tokens.append(np.concatenate([prompt, own]).astype(np.int32))
        masks.append(np.concatenate([np.zeros(len(prompt), np.float32), mask]))
        olds.append((np.log(1 / 49152) + rng.normal(0, 0.05, len(tokens[-1]))).astype(np.float32))
    advantages = rng.normal(size=args.group).astype(np.float32)
    np.savez(path, advantages=advantages, **{f"tokens_{i}": t for i, t in enumerate(tokens)},
             **{f"mask_{i}": m for i, m in enumerate(masks)}, **{f"old_{i}": o for i, o in enumerate(olds)})
    own = [len(t) - len(prompt) for t in tokens]
    return {"prompt_tokens": len(prompt), "own_tokens": own, "row_tokens": sum(len(t) for t in tokens),
            "trained_tokens": int(sum(m.sum() for m in masks))}


def load_rows(path: Path):
    import numpy as np

    data = np.load(path)
    n = len(data["advantages"])
    return ([data[f"tokens_{i}"].tolist() for i in range(n)], [data[f"mask_{i}"].tolist() for i in range(n)],
            [data[f"old_{i}"].tolist() for i in range(n)], data["advantages"].tolist())


def matmul_flops(cfg, prompt: int, own: list[int]) -> dict:
    """Forward matmul FLOPs of the tree and plain layouts (real tokens, no padding): the layers' projections
    per position, attention per (query, visible key) pair, and the unembedding on the positions that carry a
    loss (both of our steps compute logits only there). Training costs ~4x this in both (forward, the
    rematerialized forward again, backward ~2x), so the ratio is the layouts' work ratio: what a perfectly
    efficient tree step could gain over an equally efficient plain one."""
    d, f, h, kvh, dh = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    per_position = 2 * cfg.num_layers * (d * h * dh * 2 + d * kvh * dh * 2 + 3 * d * f)
    per_pair = 4 * cfg.num_layers * h * dh  # q.k and p.v
    unembed = 2 * d * cfg.vocab_size * sum(own)
    tree_pairs = prompt * (prompt + 1) / 2 + sum(n * prompt + n * (n + 1) / 2 for n in own)
    plain_pairs = sum((prompt + n) * (prompt + n + 1) / 2 for n in own)
    tree = per_position * (prompt + sum(own)) + per_pair * tree_pairs + unembed
    plain = per_position * sum(prompt + n for n in own) + per_pair * plain_pairs + unembed
    # PyTorch's forward projects every position of every row onto the vocabulary
    torch = plain - unembed + 2 * d * cfg.vocab_size * sum(prompt + n for n in own)
    return {"tree_gflop": round(tree / 1e9, 1), "plain_gflop": round(plain / 1e9, 1),
            "torch_gflop": round(torch / 1e9, 1), "ratio_plain_over_tree": round(plain / tree, 2),
            "ratio_torch_over_tree": round(torch / tree, 2)}


def per_flop_rates(result: dict, target_vs_torch: float = 4.0) -> dict:
    """Each system's forward GFLOP (``matmul_flops``) per second of its step, and what they say about the
    target against PyTorch: ``rate_vs_torch``, the tree step's rate per forward FLOP over PyTorch's (measured),
    and ``rate_needed_vs_torch``, the rate over PyTorch's that ``target_vs_torch`` needs (the target over the
    FLOP ratio). A rate per forward FLOP folds in each step's backward pass and recomputation."""
    flops = result["forward_matmul_flops"]
    rates = {name: round(flops[f"{name}_gflop"] / result[name]["median_step_s"], 2)
             for name in ("tree", "plain", "torch")
             if isinstance(result.get(name), dict) and "median_step_s" in result[name]}
    out: dict = {"forward_gflop_per_s": rates}
    if "tree" in rates and "torch" in rates:
        out["rate_vs_torch"] = round(rates["tree"] / rates["torch"], 3)
        out["rate_needed_vs_torch"] = round(target_vs_torch / flops["ratio_torch_over_tree"], 3)
    return out


# ---------------------------------------------------------------------------------------------- children


def run_ours(args: argparse.Namespace) -> dict:
    import gguf
    import jax
    import jax.numpy as jnp
    import numpy as np

    from rl_jax.models import load_gguf, smollm2_gguf_path
    from rl_jax.models.loading import config_from_gguf
    from rl_jax.train import OptimizerConfig, TrainConfig, build_step_fn, collate, create_train_state
    from rl_jax.train.tree_batch import collate_tree

    tree = args.child == "tree"
    tokens, masks, olds, advs = load_rows(Path(args.rows))
    cfg_full = config_from_gguf(gguf.GGUFReader(smollm2_gguf_path()))
    if args.layers and args.layers < cfg_full.num_layers:
        # the first layers' shapes, random weights (timing and the tree-vs-plain equality do not need trained
        # ones); PyTorch's model is randomly initialised too
        from flax import nnx

        from rl_jax.models import Transformer

        model = Transformer(dataclasses.replace(cfg_full, num_layers=args.layers), rngs=nnx.Rngs(0))
    else:
        _, model = load_gguf(smollm2_gguf_path(), dtype=jnp.float32, param_dtype=jnp.float32, progress=False)
    # static settings of the module, as the main job sets them
    model.remat, model.scan, model.remat_policy = True, True, args.remat_policy or None
    micro = 1 if tree else len(tokens)
    cfg = TrainConfig(
        optimizer=OptimizerConfig(learning_rate=1e-6, weight_decay=0.01, b1=B1, max_grad_norm=None),
        micro_batches=micro, length_buckets=BUCKETS,
    )
    graphdef, state, _ = create_train_state(model, cfg)
    del model
    if tree:
        batch = collate_tree(tokens, masks, olds, advs, buckets=BUCKETS, min_saving=0.0, pack=not args.no_pack)
        layout = {"shared": [list(level.tokens.shape) for level in batch.shared], "rows": list(batch.tokens.shape)}
        if batch.lanes is not None:
            layout["lanes"] = list(batch.lanes.tokens.shape)
    else:
        batch = collate(tokens, masks, olds, advs, buckets=BUCKETS)
        layout = {"rows": list(batch.tokens.shape)}
    own = batch.lanes.tokens.size if batch.lanes is not None else batch.tokens.size  # packed or padded rows
    positions = sum(level.tokens.size for level in batch.shared or ()) + own
    batch = jax.tree.map(jnp.asarray, batch)
    t0 = time.perf_counter()
    step = jax.jit(build_step_fn(graphdef, cfg), donate_argnums=0).lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    log(f"{args.child}: compiled in {compile_s:.1f}s; layout {layout}")
    times, cpu = [], []
    first_loss = None
    for i in range(args.steps):
        t0, c0 = time.perf_counter(), cpu_seconds()
        state, metrics = step(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
        cpu.append(cpu_seconds() - c0)
        log(f"{args.child}: step {i + 1}/{args.steps} {times[-1]:.1f}s wall, {cpu[-1]:.1f}s cpu, "
            f"loss {float(metrics['loss']):.6f}")
        if i == 0:
            first_loss = float(metrics["loss"])
            # AdamW's first moment after one step from zero is (1 - b1) g: the gradient the step applied
            np.savez(args.grads, *[np.asarray(x) / (1 - B1) for x in jax.tree.leaves(_find_mu(state.opt_state))])
    assert int(metrics["skipped"]) == 0 and np.isfinite(float(metrics["loss"]))
    return {"step_s": times, "cpu_s": cpu, "compile_s": round(compile_s, 1), "peak_rss_mib": round(peak_rss_mib()),
            "loss": first_loss, "micro_batches": micro, "layout": layout, "token_positions": int(positions),
            "logprob_gap_max": float(metrics["logprob_gap_max"])}


def _find_mu(opt_state):
    """AdamW's first-moment tree inside an optax chain's state."""
    import jax

    for node in jax.tree.leaves(opt_state, is_leaf=lambda x: hasattr(x, "mu")):
        if hasattr(node, "mu"):
            return node.mu
    raise RuntimeError("no AdamW state with a first moment in the optimizer state")


def run_torch(args: argparse.Namespace) -> dict:
    import gguf
    import torch
    import transformers

    from rl_jax.models.loading import config_from_gguf, smollm2_gguf_path

    tokens, masks, _, _ = load_rows(Path(args.rows))
    cfg = config_from_gguf(gguf.GGUFReader(smollm2_gguf_path()))
    torch.manual_seed(0)
    if args.layers:
        cfg = dataclasses.replace(cfg, num_layers=min(args.layers, cfg.num_layers))
    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in cfg.to_hf().items() if k != "architectures"})
    hf_cfg._attn_implementation = "sdpa"
    model = transformers.LlamaForCausalLM(hf_cfg).float().train()
    model.gradient_checkpointing_enable()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.01)
    rows = [(torch.tensor([t]), torch.tensor([[tok if m > 0 else -100 for tok, m in zip(t, mk, strict=True)]]))
            for t, mk in zip(tokens, masks, strict=True)]
    trained = sum(int((lab != -100).sum()) for _, lab in rows)

    def step() -> float:
        total = 0.0
        for ids, labels in rows:
            logits = model(input_ids=ids).logits[:, :-1].float()
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100,
                reduction="sum") / trained
            loss.backward()
            total += float(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return total

    times, cpu = [], []
    for i in range(args.steps):
        t0, c0 = time.perf_counter(), cpu_seconds()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(cpu_seconds() - c0)
        log(f"torch: step {i + 1}/{args.steps} {times[-1]:.1f}s wall, {cpu[-1]:.1f}s cpu")
    return {"step_s": times, "cpu_s": cpu, "peak_rss_mib": round(peak_rss_mib()), "threads": torch.get_num_threads(),
            "version": torch.__version__, "attention": "sdpa", "gradient_checkpointing": True}


def child(name: str, args: argparse.Namespace, rows: Path, grads: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--steps", str(args.steps), "--rows", str(rows),
           "--grads", str(grads), "--layers", str(args.layers), "--remat-policy", args.remat_policy]
    if args.no_pack:
        cmd.append("--no-pack")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    from experiments.config import PolicyConfig  # the main job's settings: the default remat policy

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-form", default="compact", choices=["full", "compact", "signatures"])
    parser.add_argument("--prefix-tokens", type=int, default=0, help="keep only the prompt's last N tokens")
    parser.add_argument("--group", type=int, default=8, help="rows sharing the prompt")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per system")
    parser.add_argument("--skip", nargs="*", default=[], choices=["plain", "torch"])
    parser.add_argument("--remat-policy", default=PolicyConfig().remat_policy or "",
                        help="what our rematerialized layers keep (REMAT_POLICIES; '' for nothing); "
                             "default: the main job's")
    parser.add_argument("--no-pack", action="store_true",
                        help="the tree's rows padded to the longest, not packed end to end in lanes")
    parser.add_argument("--layers", type=int, default=0,
                        help="keep the first N layers, randomly initialised (0: all 30, trained): a quicker run "
                             "whose per-layer ratios match the full model's")
    parser.add_argument("--child", choices=["tree", "plain", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--rows", help=argparse.SUPPRESS)
    parser.add_argument("--grads", help=argparse.SUPPRESS)
    args = parser.parse_args()

    from rl_jax.runtime import tune_cpu_backend

    tune_cpu_backend()
    if args.child:
        fn = run_torch if args.child == "torch" else run_ours
        print(json.dumps(fn(args)), flush=True)
        return

    import numpy as np

    work = Path(tempfile.mkdtemp(prefix="bench_prefix_train_"))
    rows = work / "rows.npz"
    result: dict = {"bench": "prefix_train", "model": "SmolLM2-135M", "dtype": "float32",
                    "prompt_form": args.prompt_form, "group": args.group, "cpus": os.cpu_count(),
                    "remat_policy": args.remat_policy or None, "pack": not args.no_pack,
                    "load_avg_start": [round(x, 2) for x in os.getloadavg()]}
    result |= make_rows(args, rows)
    import gguf

    from rl_jax.models.loading import config_from_gguf, smollm2_gguf_path

    model_cfg = config_from_gguf(gguf.GGUFReader(smollm2_gguf_path()))
    if args.layers:
        model_cfg = dataclasses.replace(model_cfg, num_layers=min(args.layers, model_cfg.num_layers))
    result["layers"] = model_cfg.num_layers
    result["forward_matmul_flops"] = matmul_flops(model_cfg, result["prompt_tokens"], result["own_tokens"])
    log(f"{result['prompt_tokens']} shared prompt tokens, own tokens {result['own_tokens']}")
    for name in ("tree", "plain", "torch"):
        if name in args.skip:
            result[name] = "skipped"
            continue
        log(f"running {name}")
        try:
            r = child(name, args, rows, work / f"{name}_grads.npz")
        except RuntimeError as e:
            result[name] = {"error": str(e)}
            continue
        r["median_step_s"] = round(statistics.median(r["step_s"]), 2)
        r["median_cpu_s"] = round(statistics.median(r["cpu_s"]), 1)
        r["step_s"] = [round(t, 2) for t in r["step_s"]]
        r["cpu_s"] = [round(t, 1) for t in r["cpu_s"]]
        result[name] = r
    tree = result["tree"]
    for name in ("plain", "torch"):
        other = result.get(name)
        if isinstance(other, dict) and "median_step_s" in other and "median_step_s" in tree:
            result[f"speedup_vs_{name}"] = round(other["median_step_s"] / tree["median_step_s"], 2)
            # CPU seconds too: on a shared machine they move less with the load than wall time does
            result[f"cpu_speedup_vs_{name}"] = round(other["median_cpu_s"] / tree["median_cpu_s"], 2)
    if isinstance(result.get("plain"), dict) and "loss" in result["plain"]:
        result["max_abs_loss_diff"] = abs(tree["loss"] - result["plain"]["loss"])
        a, b = np.load(work / "tree_grads.npz"), np.load(work / "plain_grads.npz")
        diffs = [float(np.max(np.abs(a[k] - b[k]))) for k in a.files]
        result["max_abs_grad_diff"] = max(diffs)
        result["max_abs_grad"] = max(float(np.max(np.abs(b[k]))) for k in b.files)
    result |= per_flop_rates(result)
    result["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
