"""What XLA's CPU backend settings (``rl_jax.runtime.CPU_FLAGS``) buy: the same work with and without them.

XLA reads its flags once per process, so each setting runs in child processes of its own, alternated (default,
tuned, default, tuned, ...) so that the machine's drift falls on both alike. Each child times, in float32:

* standalone matmuls of the shapes that dominate our workloads: decoding SmolLM2-135M at batch 1 and 16
  (x[B, 576] times the [576, 1536] MLP weight), a training step's MLP over 2048 tokens and its LM-head chunk
  over the 49k vocabulary (x[1024, 576] times [576, 49152]), each the best of several runs, in GFLOP/s. Plain
  dots: in a model the same dots sit inside XLA fusions, where the settings act;
* greedy decoding with our sampler (``rl_jax.sampling``) of a SmolLM2-135M-shaped model cut to ``--layers``
  decoder layers (random weights: speed does not depend on them), 64 new tokens after a 49-token prompt at
  batch 1 and 16, tokens/s of the decode (the best of 3, after a compiling run);
* the full GRPO train step of that model at B=4, T=512, as ``bench_train.py`` runs it: the median of
  ``--steps`` steps after a compiling one, with its compile time.

"default" is XLA's own choice (``XLA_FLAGS`` without the two settings); "tuned" adds them as the entry points do
(``tune_cpu_backend``); "no_ynn" (with ``--settings default,tuned,no_ynn``) is "tuned" with YNNPACK off entirely
(``--xla_cpu_experimental_ynn_fusion_type=``), what the sampler's programs for batches of 8 and more get per
program (``rl_jax.runtime.SAMPLER_CPU_OPTIONS``) whatever the flags: so the batch-16 decode figures compare
the flags' other effects only. Prints progress to stderr and one final JSON line with the medians and each
setting's ratio to default (above 1: the setting helps; for the train step, ``speedup`` maps each setting to
default time over its time).

    .venv/bin/python experiments/benchmarks/bench_xla_flags.py [--repeats 2] [--layers 6] [--steps 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rl_jax.runtime import CPU_FLAGS, tune_cpu_backend  # noqa: E402  (no JAX import: safe before XLA starts)

SETTINGS = ("default", "tuned", "no_ynn")
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"

# (name, M, K, N): x[M, K] @ w[K, N]
MATMULS = (
    ("decode_b1_mlp", 1, 576, 1536),
    ("decode_b16_mlp", 16, 576, 1536),
    ("train_mlp", 2048, 576, 1536),
    ("train_lm_head_chunk", 1024, 576, 49152),
)


def log(msg: str) -> None:
    print(f"[bench_xla_flags] {msg}", file=sys.stderr, flush=True)


def time_matmuls(repeats: int = 9) -> dict[str, float]:
    import jax
    import jax.numpy as jnp

    out = {}
    for name, m, k, n in MATMULS:
        x = jax.random.normal(jax.random.key(0), (m, k), jnp.float32)
        w = jax.random.normal(jax.random.key(1), (k, n), jnp.float32)
        f = jax.jit(lambda a, b: a @ b)
        f(x, w).block_until_ready()
        # enough calls per timing that the dispatch (~10 us) does not hide a small matmul
        calls = max(1, int(2e8 // (2 * m * k * n)))
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(calls):
                y = f(x, w)
            y.block_until_ready()
            best = min(best, (time.perf_counter() - t0) / calls)
        out[name] = round(2.0 * m * k * n / best / 1e9, 1)
    return out


def cut_smollm2(layers: int):
    """SmolLM2-135M's configuration with ``layers`` decoder layers, random weights: (config, model)."""
    import gguf
    from flax import nnx

    from rl_jax.models import Transformer, smollm2_gguf_path
    from rl_jax.models.loading import config_from_gguf

    cfg = dataclasses.replace(config_from_gguf(gguf.GGUFReader(smollm2_gguf_path())), num_layers=layers)
    return cfg, Transformer(cfg, rngs=nnx.Rngs(0))


def time_decode(layers: int, batches: tuple[int, ...] = (1, 16), new_tokens: int = 64) -> dict[str, float]:
    import jax
    import numpy as np

    from rl_jax.sampling import Sampler, SamplingConfig

    cfg, model = cut_smollm2(layers)
    sampler = Sampler(model)
    config = SamplingConfig(temperature=0.0, max_new_tokens=new_tokens)
    prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, size=49).tolist()
    out = {}
    for batch in batches:
        prompts = [prompt] * batch
        sampler.generate(prompts, config)  # compiles
        best = float("inf")
        for _ in range(3):
            cache, logits, packed, shape = sampler.prefill(prompts, config)
            jax.block_until_ready(logits)
            t0 = time.perf_counter()
            jax.block_until_ready(sampler.decode(cache, logits, packed, shape, config, None))
            best = min(best, time.perf_counter() - t0)
        out[f"decode_b{batch}_tokens_per_s"] = round(batch * new_tokens / best, 1)
    return out


def time_train_step(layers: int, steps: int, batch: int = 4, length: int = 512) -> dict[str, float]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from rl_jax.train import OptimizerConfig, TrainConfig, collate, create_train_state

    cfg, model = cut_smollm2(layers)
    train_cfg = TrainConfig(optimizer=OptimizerConfig(learning_rate=1e-6, weight_decay=0.01, max_grad_norm=1.0),
                            length_buckets=(length,))
    _, state, train_step = create_train_state(model, train_cfg)
    del model
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, size=(batch, length))
    masks = np.ones((batch, length), np.float32)
    masks[:, : length // 8] = 0.0  # the prompt
    old_logp = np.log(1.0 / cfg.vocab_size) + rng.normal(0, 0.05, size=masks.shape)
    data = collate(tokens.tolist(), masks.tolist(), old_logp.tolist(), rng.normal(size=batch).tolist(),
                   buckets=(length,))
    data = jax.tree.map(jnp.asarray, data)
    t0 = time.perf_counter()
    state, metrics = train_step(state, data)
    jax.block_until_ready((state, metrics))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = train_step(state, data)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    assert int(metrics["skipped"]) == 0 and np.isfinite(float(metrics["loss"]))
    return {"train_step_s": round(statistics.median(times), 3), "train_compile_s": round(compile_s, 1),
            "train_tokens_per_s": round(batch * length / statistics.median(times), 1)}


def run_child(args: argparse.Namespace) -> dict:
    import jax

    flags = os.environ.get("XLA_FLAGS", "")
    result = {"setting": args.child, "xla_flags": flags, "jax": jax.__version__, "matmul_gflops": time_matmuls()}
    result.update(time_decode(args.layers))
    result.update(time_train_step(args.layers, args.steps))
    return result


def child_env(setting: str) -> dict[str, str]:
    env = dict(os.environ)
    names = {flag.split("=", 1)[0] for flag in CPU_FLAGS}
    # the user's other flags stay; the two settings are removed for "default" and added for "tuned"
    kept = [part for part in env.get("XLA_FLAGS", "").split() if part.split("=", 1)[0] not in names]
    env["XLA_FLAGS"] = " ".join(kept)
    if setting in ("tuned", "no_ynn"):
        added = tune_cpu_backend(env)
        if not added:
            raise SystemExit("this jaxlib is not the series the settings were measured with: nothing to compare")
    if setting == "no_ynn":
        env["XLA_FLAGS"] = " ".join(
            part for part in env["XLA_FLAGS"].split() if not part.startswith(YNN_FLAG)
        ) + f" {YNN_FLAG}="
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="child runs per setting, alternated")
    parser.add_argument("--layers", type=int, default=6, help="decoder layers of the trained model (SmolLM2: 30)")
    parser.add_argument("--steps", type=int, default=3, help="timed train steps per child (after a compiling one)")
    parser.add_argument("--settings", default="default,tuned",
                        help=f"comma-separated settings to alternate, of {','.join(SETTINGS)}")
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1 or args.layers < 1 or args.steps < 1:
        parser.error("--repeats, --layers and --steps must be at least 1")
    if args.child:
        print(json.dumps(run_child(args)))
        return

    settings = args.settings.split(",")
    if "default" not in settings or any(s not in SETTINGS for s in settings):
        parser.error(f"--settings must name default and any of {SETTINGS}")
    runs: dict[str, list[dict]] = {s: [] for s in settings}
    for i in range(args.repeats):
        for setting in settings:
            log(f"run {i + 1}/{args.repeats}: {setting}...")
            cmd = [sys.executable, __file__, "--child", setting, "--layers", str(args.layers),
                   "--steps", str(args.steps)]
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=child_env(setting))
            if proc.returncode != 0:
                raise SystemExit(f"the {setting} child failed (exit {proc.returncode})")
            runs[setting].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = runs[setting][-1]
            log(f"  {r['matmul_gflops']} GFLOP/s, decode {r['decode_b1_tokens_per_s']} / "
                f"{r['decode_b16_tokens_per_s']} tok/s, step {r['train_step_s']} s")

    def median(setting: str, get) -> float:
        return round(statistics.median(get(r) for r in runs[setting]), 3)

    figures: dict = {"bench": "xla_flags", "cpu_flags": list(CPU_FLAGS), "repeats": args.repeats,
                     "layers": args.layers, "batch": 4, "length": 512, "cpu_count": os.cpu_count(),
                     "jax": runs["default"][0]["jax"], "matmul_gflops": {}, "decode": {}, "train": {}}
    others = [s for s in settings if s != "default"]
    for name, *_ in MATMULS:
        row = {s: median(s, lambda r, n=name: r["matmul_gflops"][n]) for s in settings}
        row.update({f"{s}_over_default": round(row[s] / row["default"], 2) for s in others})
        figures["matmul_gflops"][name] = row
    for key in ("decode_b1_tokens_per_s", "decode_b16_tokens_per_s"):
        row = {s: median(s, lambda r, k=key: r[k]) for s in settings}
        row.update({f"{s}_over_default": round(row[s] / row["default"], 2) for s in others})
        figures["decode"][key] = row
    for key in ("train_step_s", "train_compile_s", "train_tokens_per_s"):
        figures["train"][key] = {s: median(s, lambda r, k=key: r[k]) for s in runs}
    step = figures["train"]["train_step_s"]
    figures["train"]["speedup"] = {s: round(step["default"] / step[s], 2) for s in others}
    figures["runs"] = runs
    figures["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
