"""Compile time of the GRPO train step against depth: scanned (stacked) layers and unrolled layers.

The train step (``rl_jax.train.step.build_step_fn``: chunked log-probs with entropy, the BAPO clip search, the
token-mean loss, value_and_grad, global-norm clip, AdamW, the non-finite guard) is lowered and compiled ahead
of time (``jax.jit(step).lower(state, batch).compile()``) for 1, 16 and 32 layers of a model shaped like
SmolLM2 / Llama (GQA, RoPE, RMSNorm, SwiGLU, tied embeddings) at a reduced width, the state abstract
(``jax.eval_shape``: nothing is allocated, nothing runs). Variants:

* ``scan``: ``Transformer(scan=True, remat=True)``, what the presets train with: each layer weight kind stored
  stacked over the layers (one ``[L, ...]`` leaf, ``LayerStack``) and run as one ``lax.scan``, so the
  gradient, the optimizer and the guard act on the same dozen leaves whatever L is;
* ``unrolled``: ``scan=False`` (a module per layer, a Python loop over them, each rematerialized).

Per compile the JSON gives wall seconds (``compile_s_*``: lowering + XLA compile, what the issue targets), the
compile's process CPU seconds (less sensitive to other load on a shared machine), and the optimized HLO's
fusion count and size: on XLA:CPU each fusion is one LLVM-compiled kernel. Prints progress to stderr and one
final JSON line (``compile_s_scan`` and ``compile_s_unrolled`` map layer counts to seconds;
``scan32_over_scan1`` is the issue's target, < 2).

    .venv/bin/python experiments/benchmarks/bench_compile.py [--layers 1 16 32] [--variants scan unrolled]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rl_jax.runtime import tune_cpu_backend

tune_cpu_backend()  # the entry points' XLA:CPU settings: compile what they compile

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from rl_jax.models import ModelConfig, Transformer  # noqa: E402
from rl_jax.train import TrainConfig, collate  # noqa: E402
from rl_jax.train.optimizer import make_optimizer  # noqa: E402
from rl_jax.train.state import init_train_state, split_model  # noqa: E402
from rl_jax.train.step import build_step_fn  # noqa: E402

VARIANTS = ("scan", "unrolled")


def log(msg: str) -> None:
    print(f"[bench_compile] {msg}", file=sys.stderr, flush=True)


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def model_config(layers: int, args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(
        family="llama",
        vocab_size=args.vocab,
        hidden_size=args.width,
        intermediate_size=3 * args.width,
        num_layers=layers,
        num_heads=args.width // 64,
        num_kv_heads=max(1, args.width // 128),
        head_dim=64,
        tie_word_embeddings=True,
        max_position_embeddings=4 * args.length,
    )


def example_batch(vocab: int, rows: int, length: int) -> Any:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, size=(rows, length))
    masks = np.ones((rows, length), np.float32)
    masks[:, : length // 8] = 0.0  # the prompt
    old = np.log(1.0 / vocab) + rng.normal(0, 0.05, size=(rows, length))
    batch = collate(
        tokens.tolist(), masks.tolist(), old.tolist(), rng.normal(size=rows).tolist(), buckets=(length,)
    )
    return jax.tree.map(jnp.asarray, batch)


# ------------------------------------------------------------------------------------------------- compile


def fusion_count(hlo: str) -> int:
    return len(re.findall(r"^\s*(?:ROOT )?\S+ = \S+ fusion\(", hlo, re.M))


def compile_step(layers: int, variant: str, args: argparse.Namespace) -> dict[str, float]:
    cfg = model_config(layers, args)
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0), remat=True, scan=variant != "unrolled"))
    graphdef, params, frozen = split_model(model)
    train_cfg = TrainConfig(logprob_chunk=256, length_buckets=(args.length,))
    batch = example_batch(cfg.vocab_size, args.rows, args.length)
    optimizer = make_optimizer(train_cfg.optimizer)
    step = build_step_fn(graphdef, train_cfg, optimizer)
    state = jax.eval_shape(lambda p, f: init_train_state(p, f, optimizer), params, frozen)
    t0, c0 = time.perf_counter(), cpu_seconds()
    lowered = jax.jit(step, donate_argnums=0).lower(state, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2, c2 = time.perf_counter(), cpu_seconds()
    hlo = compiled.as_text()
    out = {
        "compile_s": t2 - t0,
        "lower_s": t1 - t0,
        "xla_compile_s": t2 - t1,
        "cpu_s": c2 - c0,
        "fusions": fusion_count(hlo),
        "hlo_kib": len(hlo) / 1024,
        "leaves": len(jax.tree.leaves(state)),
    }
    log(f"{variant:8s} L={layers:2d}: " + ", ".join(f"{k} {v:.1f}" for k, v in out.items()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 16, 32])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--width", type=int, default=256, help="hidden size (heads of 64; SmolLM2-135M: 576)")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--length", type=int, default=256)
    args = parser.parse_args()

    results: dict[str, dict[int, dict[str, float]]] = {v: {} for v in args.variants}
    load = [os.getloadavg()[0]]
    for layers in args.layers:  # depth outermost: drift in the machine's load hits every variant alike
        for variant in args.variants:
            results[variant][layers] = compile_step(layers, variant, args)
            load.append(os.getloadavg()[0])

    def figure(variant: str, key: str = "compile_s") -> dict[int, float]:
        return {n: round(r[key], 2) for n, r in results.get(variant, {}).items()}

    summary: dict[str, Any] = {
        "model": {
            **{
                k: v
                for k, v in vars(model_config(1, args)).items()
                if k
                in ("hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "head_dim", "vocab_size")
            },
            "family": "llama (SmolLM2's layout, reduced width)",
        },
        "batch": [args.rows, args.length],
        "device": jax.devices()[0].device_kind,
        "load_avg_1m": [round(x, 1) for x in (min(load), max(load))],
    }
    for variant in args.variants:
        summary[f"compile_s_{variant}"] = figure(variant)
        summary[f"cpu_s_{variant}"] = figure(variant, "cpu_s")
        summary[f"fusions_{variant}"] = figure(variant, "fusions")
        summary[f"hlo_kib_{variant}"] = figure(variant, "hlo_kib")
    lo, hi = min(args.layers), max(args.layers)
    for variant in args.variants:
        r = results[variant]
        summary[f"{variant}{hi}_over_{variant}{lo}"] = round(r[hi]["compile_s"] / r[lo]["compile_s"], 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
