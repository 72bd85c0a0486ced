"""The loss window: our GRPO train step on agent-shaped trajectories, vocabulary projection over the window vs
over every position, alternated in one process.

An agent's trajectory opens with a long prompt (CoreCraft's: ~6,550 tokens of system prompt and tool schemas)
that the loss never trains on. ``collate`` gives the step a loss window (``rl_jax.train.batch``): only the
positions that predict a trained token go through the [D] x [D, V] projection and the softmax reductions over
V, forward, recomputed and backward. This runs one batch both ways (the default ``window_buckets`` and ``None``), each
step on its own train state, SmolLM2-135M f32 from the embedded GGUF, the default loss (BAPO, entropy
metric), and checks that the two steps agree on the loss. Prints progress to stderr and one final JSON line.

    .venv/bin/python experiments/benchmarks/bench_loss_window.py [--batch 1] [--length 2048] [--prompt 1536]
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


def log(msg: str) -> None:
    print(f"[bench_loss_window] {msg}", file=sys.stderr, flush=True)


def agent_masks(batch: int, length: int, prompt: int, turns: int, tool_tokens: int):
    """Loss masks of ``length``-token trajectories: ``prompt`` untrained tokens, then ``turns`` assistant turns
    with a ``tool_tokens`` tool output (untrained) after each but the last."""
    import numpy as np

    mask = np.zeros((batch, length), np.float32)
    rest = length - prompt
    turn = (rest - (turns - 1) * tool_tokens) // turns
    if turn < 1:
        raise SystemExit(f"--prompt {prompt} leaves no room for {turns} turns in {length} tokens")
    at = prompt
    for i in range(turns):
        mask[:, at : at + turn] = 1.0
        at += turn + (tool_tokens if i < turns - 1 else 0)
    mask[:, at:] = 1.0  # the last turn takes what rounding left
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--prompt", type=int, default=1536, help="untrained tokens at the start of each row")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--tool-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3, help="timed steps per variant (alternated)")
    args = parser.parse_args()
    if not 0 < args.prompt < args.length:
        raise SystemExit("--prompt must be inside (0, --length)")
    tune_cpu_backend()

    import jax
    import jax.numpy as jnp
    import numpy as np

    from rl_jax.models import load_gguf, smollm2_gguf_path
    from rl_jax.train import DEFAULT_WINDOW_BUCKETS, OptimizerConfig, TrainConfig, collate, create_train_state

    def load():
        return load_gguf(smollm2_gguf_path(), dtype=jnp.float32, param_dtype=jnp.float32, progress=False)

    cfg, model = load()
    train_cfg = TrainConfig(
        optimizer=OptimizerConfig(learning_rate=1e-6, weight_decay=0.01, max_grad_norm=1.0),
        length_buckets=(args.length,),
    )
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, size=(args.batch, args.length)).tolist()
    masks = agent_masks(args.batch, args.length, args.prompt, args.turns, args.tool_tokens)
    old_logp = (np.log(1.0 / cfg.vocab_size) + rng.normal(0, 0.05, size=masks.shape)).tolist()
    advantages = rng.normal(size=args.batch).tolist()
    variants = {}
    for name, buckets in (("window", DEFAULT_WINDOW_BUCKETS), ("full", None)):
        batch = collate(tokens, masks.tolist(), old_logp, advantages, buckets=(args.length,), window_buckets=buckets)
        # a model of its own for each: the step donates its state, so the two must share no buffers
        _, state, step = create_train_state(model if name == "window" else load()[1], train_cfg)
        variants[name] = {"batch": jax.tree.map(jnp.asarray, batch), "state": state, "step": step,
                          "window": batch.loss_window}
    del model
    log(f"B={args.batch} T={args.length}, {int(masks.sum())} trained tokens; loss window "
        f"{variants['window']['window']} of {args.length} positions")

    times: dict[str, list[float]] = {name: [] for name in variants}
    losses: dict[str, float] = {}
    compile_s: dict[str, float] = {}
    for run in range(args.runs + 1):  # run 0 compiles
        for name, v in variants.items():
            start = time.perf_counter()
            v["state"], metrics = v["step"](v["state"], v["batch"])
            jax.block_until_ready((v["state"], metrics))
            seconds = time.perf_counter() - start
            if run == 0:
                compile_s[name] = seconds
                losses[name] = float(metrics["loss"])
                log(f"{name}: first step (compile + run) {seconds:.1f}s, loss {losses[name]:.6f}")
            else:
                times[name].append(seconds)
                log(f"{name}: step {run}/{args.runs} {seconds:.2f}s")
    # both started from the same weights on the same batch: their first losses must agree
    if not np.isclose(losses["window"], losses["full"], rtol=1e-5, atol=1e-7):
        raise SystemExit(f"first-step losses differ: window {losses['window']} vs full {losses['full']}")
    median = {name: statistics.median(t) for name, t in times.items()}
    tokens_per_step = args.batch * args.length
    result = {
        "benchmark": "loss_window",
        "model": "SmolLM2-135M-Instruct f32",
        "batch": args.batch,
        "length": args.length,
        "prompt_tokens": args.prompt,
        "trained_tokens": int(masks.sum()),
        "loss_window": variants["window"]["window"],
        "step_s": {name: [round(t, 3) for t in ts] for name, ts in times.items()},
        "median_step_s": {name: round(s, 3) for name, s in median.items()},
        "tokens_per_s": {name: round(tokens_per_step / s, 1) for name, s in median.items()},
        "speedup": round(median["full"] / median["window"], 3),
        "first_step_s_incl_compile": {name: round(s, 1) for name, s in compile_s.items()},
        "first_loss": losses,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
