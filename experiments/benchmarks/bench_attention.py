"""Training attention, forward + backward, of one SmolLM2-135M layer: ours vs the masked form vs PyTorch SDPA.

The uncached causal attention is what a train step or a scoring pass runs in every layer. Timed, at B=4, T=512,
9 query heads over 3 key/value heads of 64 (SmolLM2-135M's shapes), float32, forward and backward of
``sum(attention(q, k, v) * w)`` with respect to q, k and v:

* ``tiled``: ``rl_jax.models.attention.cpu.causal_tiled_attention`` (causal query tiles, written-out backward),
  what the model runs on CPU (the CPU attention backend);
* ``masked``: ``masked_attention`` (the whole [T, T] score matrix with a causal mask, differentiated by JAX), what
  the model ran before and still runs for cached calls;
* ``reference`` and ``dot_product_attention``: the other attention backends that run on CPU
  (``rl_jax.models.attention``): the XLA reference (whole score matrix, differentiated by JAX) and the GPU
  backend's wrapper of ``jax.nn.dot_product_attention`` with its XLA implementation (cuDNN's is GPU-only);
* ``torch_sdpa``: ``torch.nn.functional.scaled_dot_product_attention(is_causal=True, enable_gqa=True)``, what
  transformers' Llama runs on CPU, in the same run (skipped if torch is not installed).

Engines alternate, repetition by repetition, so the machine's drift hits all of them alike; each figure is the
median over repetitions of the mean of ``--calls`` calls. Before timing, each engine's loss and gradients are
compared with the tiled path's (the JSON's ``max_abs_diff_to_tiled``); a difference above 1e-3 stops the run.
Prints progress to stderr and one final JSON line.

    .venv/bin/python experiments/benchmarks/bench_attention.py [--repeats 7] [--calls 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rl_jax.runtime import tune_cpu_backend

tune_cpu_backend()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from rl_jax.models.attention import CudnnAttention, ReferenceAttention  # noqa: E402
from rl_jax.models.attention.cpu import causal_tiled_attention, masked_attention  # noqa: E402


def log(msg: str) -> None:
    print(f"[bench_attention] {msg}", file=sys.stderr, flush=True)


def jax_engines(q, k, v, w, tile: int) -> dict:
    b, t, h, dh = q.shape
    kvh = k.shape[2]
    valid = jnp.ones((b, t), bool)
    slots = jnp.arange(t, dtype=jnp.int32)

    def tiled(q, k, v):
        return causal_tiled_attention(q, k, v, valid, tile, jnp.float32)

    def masked(q, k, v):
        qg = q.reshape(b, t, kvh, h // kvh, dh).transpose(0, 2, 3, 1, 4)
        out = masked_attention(qg, k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3), slots, valid, jnp.float32)
        return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, dh)

    def grad_fn(attn):
        return jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(attn(q, k, v) * w), argnums=(0, 1, 2)))

    def backend(attention):
        return lambda q, k, v: attention.causal(q, k, v, valid, jnp.float32)

    return {
        "tiled": grad_fn(tiled),
        "masked": grad_fn(masked),
        "reference": grad_fn(backend(ReferenceAttention())),
        "dot_product_attention": grad_fn(backend(CudnnAttention(implementation="xla"))),
    }


def torch_engine(q, k, v, w):
    import torch
    import torch.nn.functional as F

    def to_torch(x):  # [B, T, N, Dh] -> [B, N, T, Dh], as SDPA takes it
        return torch.tensor(np.asarray(x)).transpose(1, 2).contiguous()

    tq, tk, tv, tw = (to_torch(x) for x in (q, k, v, w))

    def run():
        qq, kk, vv = (x.detach().requires_grad_(True) for x in (tq, tk, tv))
        out = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, enable_gqa=True)
        loss = (out * tw).sum()
        loss.backward()
        return loss.item(), (qq.grad.transpose(1, 2), kk.grad.transpose(1, 2), vv.grad.transpose(1, 2))

    return run, torch.__version__, torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--tile", type=int, default=128, help="query tile of the tiled path (the model's is 128)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5, help="calls per timed repetition")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    b, t, h, kvh, dh = args.batch, args.length, args.heads, args.kv_heads, args.head_dim
    q, w = (jnp.asarray(rng.normal(size=(b, t, h, dh)), jnp.float32) for _ in range(2))
    k, v = (jnp.asarray(rng.normal(size=(b, t, kvh, dh)), jnp.float32) for _ in range(2))

    engines: dict = {}
    compile_s: dict = {}
    reference = None
    max_diff: dict = {}

    def agree(name: str, got, want) -> None:
        max_diff[name] = max(float(np.max(np.abs(np.asarray(a) - np.asarray(c)))) for a, c in zip(got, want, strict=True))
        log(f"{name}: max |difference| of loss and gradients to tiled {max_diff[name]:.2e}")
        if max_diff[name] > 1e-3:
            raise SystemExit(f"{name} disagrees with the tiled attention by {max_diff[name]:.2e}: not timed")
    for name, fn in jax_engines(q, k, v, w, args.tile).items():
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(q, k, v))
        compile_s[name] = round(time.perf_counter() - t0, 2)
        log(f"{name}: compiled in {compile_s[name]}s")
        if reference is None:
            reference = jax.tree.leaves(out)
        else:
            agree(name, jax.tree.leaves(out), reference)
        engines[name] = lambda fn=fn: jax.block_until_ready(fn(q, k, v))
    torch_info = "not installed"
    try:
        run_torch, version, threads = torch_engine(q, k, v, w)
    except ImportError:
        log("torch not installed: PyTorch SDPA skipped")
    else:
        loss, grads = run_torch()
        log(f"torch_sdpa {version} ({threads} threads)")
        agree("torch_sdpa", [loss, *(g.numpy() for g in grads)], reference)
        engines["torch_sdpa"] = run_torch
        torch_info = {"version": version, "threads": threads}

    times: dict = {name: [] for name in engines}
    for r in range(args.repeats):
        for name, run in engines.items():
            t0 = time.perf_counter()
            for _ in range(args.calls):
                run()
            times[name].append((time.perf_counter() - t0) / args.calls * 1e3)
        log(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{n} {ts[-1]:.1f} ms" for n, ts in times.items()))

    median = {name: round(statistics.median(ts), 2) for name, ts in times.items()}
    # causal attention's useful work, forward + backward: 2 dots forward and 4 backward over the lower half
    flops = 6 * 2 * b * h * dh * t * (t + 1) / 2
    result = {
        "benchmark": "attention_fwd_bwd",
        "shape": {"batch": b, "length": t, "heads": h, "kv_heads": kvh, "head_dim": dh, "dtype": "float32"},
        "tile": args.tile,
        "repeats": args.repeats,
        "calls": args.calls,
        "ms_median": median,
        "ms_all": {name: [round(x, 2) for x in ts] for name, ts in times.items()},
        "causal_gflop_s": {name: round(flops / (ms / 1e3) / 1e9, 1) for name, ms in median.items()},
        "tiled_speedup": {name: round(ms / median["tiled"], 2) for name, ms in median.items() if name != "tiled"},
        "compile_s": compile_s,
        "max_abs_diff_to_tiled": max_diff,
        "torch": torch_info,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
