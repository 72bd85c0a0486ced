"""Compile time of the GRPO train step against depth: scanned layers, unrolled layers, and stacked parameters.

The train step (``rl_jax.train.step.build_step_fn``: chunked log-probs with entropy, the BAPO clip search, the
token-mean loss, value_and_grad, global-norm clip, AdamW, the non-finite guard) is lowered and compiled ahead
of time (``jax.jit(step).lower(state, batch).compile()``) for 1, 16 and 32 layers of a model shaped like
SmolLM2 / Llama (GQA, RoPE, RMSNorm, SwiGLU, tied embeddings) at a reduced width, the state abstract
(``jax.eval_shape``: nothing is allocated, nothing runs). Variants:

* ``scan``: ``Transformer(scan=True, remat=True)``, what the presets train with: the layers as one
  ``lax.scan`` over their weights, stacked inside the step from one module (one set of leaves) per layer;
* ``unrolled``: ``scan=False`` (a Python loop over the layers, each rematerialized);
* ``stacked``: a prototype of the fix (here only, not in the library): the same scanned model and loss, but
  the state holds each layer weight stacked over the layers (one ``[L, ...]`` leaf per kind, as parameters
  created under ``nnx.scan``/``nnx.vmap`` would be), so the gradient, the optimizer and the guard act on 9-13
  leaves whatever L is. The step unstacks them into the per-layer modules, which ``scan_layers`` stacks back
  (XLA folds the pair). Its weight-decay mask (``ndim >= 2``) also decays the stacked norm scales: which
  leaves decay changes the update's values, not the program's size.

Per compile the JSON gives wall seconds (``compile_s_*``: lowering + XLA compile, what the issue targets), the
compile's process CPU seconds (less sensitive to other load on a shared machine), and the optimized HLO's
fusion count and size: on XLA:CPU each fusion is one LLVM-compiled kernel, and the count is what grows with L.
Prints progress to stderr and one final JSON line (``compile_s_scan`` and ``compile_s_unrolled`` map layer
counts to seconds; ``scan32_over_scan1`` is the issue's target, < 2).

    .venv/bin/python experiments/benchmarks/bench_compile.py [--layers 1 16 32] [--variants scan stacked]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rl_jax.runtime import tune_cpu_backend

tune_cpu_backend()  # the entry points' XLA:CPU settings: compile what they compile

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from rl_jax.models import ModelConfig, Transformer  # noqa: E402
from rl_jax.train import TrainConfig, collate  # noqa: E402
from rl_jax.train.optimizer import make_optimizer  # noqa: E402
from rl_jax.train.state import init_train_state, split_model  # noqa: E402
from rl_jax.train.step import build_step_fn, make_loss_fn  # noqa: E402

VARIANTS = ("scan", "unrolled", "stacked")


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


# ------------------------------------------------------------------------------------- the stacked prototype


class LayerStack:
    """Between the model's per-layer parameter leaves and one leaf per weight kind stacked over the layers."""

    def __init__(self, params: nnx.State):
        flat, self.treedef = jax.tree_util.tree_flatten_with_path(params)
        # each leaf: ("plain", position among the plain leaves) or ("layer", kind, layer index)
        self.slots: list[tuple] = []
        self.kinds: list[str] = []
        plain = 0
        for path, _ in flat:
            if path and getattr(path[0], "key", None) == "layers":
                kind = jax.tree_util.keystr(path[2:])
                if kind not in self.kinds:
                    self.kinds.append(kind)
                self.slots.append(("layer", kind, path[1].key))
            else:
                self.slots.append(("plain", plain))
                plain += 1

    def stack(self, params: nnx.State) -> dict[str, Any]:
        leaves = self.treedef.flatten_up_to(params)
        kinds: dict[str, list] = {k: [] for k in self.kinds}
        plain = []
        for slot, leaf in zip(self.slots, leaves, strict=True):
            (kinds[slot[1]] if slot[0] == "layer" else plain).append(leaf)

        def stacked(xs: list) -> Any:
            if isinstance(xs[0], jax.ShapeDtypeStruct):
                return jax.ShapeDtypeStruct((len(xs), *xs[0].shape), xs[0].dtype)
            return jnp.stack(xs)

        return {"plain": plain, "layers": {k: stacked(v) for k, v in kinds.items()}}

    def unstack(self, tree: dict[str, Any]) -> nnx.State:
        leaves = [
            tree["layers"][slot[1]][slot[2]] if slot[0] == "layer" else tree["plain"][slot[1]]
            for slot in self.slots
        ]
        return self.treedef.unflatten(leaves)


def stacked_step(graphdef: nnx.GraphDef, frozen: nnx.State, stack: LayerStack, cfg: TrainConfig) -> Callable:
    """The train step's pieces over stacked parameters: loss, gradient, token mean, guard, clip + AdamW."""
    optimizer = make_optimizer(cfg.optimizer)
    loss_fn = make_loss_fn(graphdef, cfg)

    def loss(tree: dict[str, Any], batch: Any) -> tuple[jax.Array, Any]:
        return loss_fn(stack.unstack(tree), frozen, batch, None, None)

    def step(state: tuple[Any, Any], batch: Any) -> tuple[tuple[Any, Any], jax.Array]:
        params, opt_state = state
        (_, terms), grads = jax.value_and_grad(loss, has_aux=True)(params, batch)
        den = jnp.where(terms.denominator > 0, terms.denominator, 1.0)
        value = terms.numerator / den
        grads = jax.tree.map(lambda g: g / den, grads)
        finite = jnp.isfinite(value) & jnp.isfinite(optax.tree.norm(grads))
        updates, new_opt = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)

        def keep(new: Any, old: Any) -> Any:
            return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)

        return (keep(new_params, params), keep(new_opt, opt_state)), value

    return step, optimizer


# ------------------------------------------------------------------------------------------------- compile


def fusion_count(hlo: str) -> int:
    return len(re.findall(r"^\s*(?:ROOT )?\S+ = \S+ fusion\(", hlo, re.M))


def compile_step(layers: int, variant: str, args: argparse.Namespace) -> dict[str, float]:
    cfg = model_config(layers, args)
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0), remat=True, scan=variant != "unrolled"))
    graphdef, params, frozen = split_model(model)
    train_cfg = TrainConfig(logprob_chunk=256, length_buckets=(args.length,))
    batch = example_batch(cfg.vocab_size, args.rows, args.length)
    if variant == "stacked":
        stack = LayerStack(params)
        step, optimizer = stacked_step(graphdef, frozen, stack, train_cfg)
        tree = stack.stack(params)
        state = (tree, jax.eval_shape(optimizer.init, tree))
    else:
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
