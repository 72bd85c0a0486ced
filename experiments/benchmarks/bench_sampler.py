"""Sampler throughput: ours vs transformers' generate and Google Tunix's sampler (when installed), same run.

SmolLM2-135M-Instruct in f32 from the embedded GGUF (transformers reads the very same file), one 49-token
prompt repeated over the batch, 128 new tokens, greedy, no stop tokens (every row runs the full length).

Figures per batch size, each the median over --runs repetitions (engines interleaved so they see the same
machine load): prefill seconds, decode tokens/s (new tokens after the first, over the decode time; for
transformers the decode time is a full generate minus a 1-token generate), end-to-end tokens/s, compile
seconds, our decode FLOP rate as a fraction of the CPU's f32 matmul peak measured in this run, and our weight
reads per second as a fraction of how fast a matrix-vector product streams memory in this run. A program of a
decode step's weight matmuls alone (``MatmulsOnly``: same weights, batch and compiler options, no attention,
cache or sampling) runs in the same loop, so each batch reports our step's time over that of its dots. Our
sampler also runs a second time compiled with XLA's default options (``rl_jax_xla_defaults``), which
measures what ``rl_jax.runtime.sampler_compiler_options`` does.
The last line printed is one JSON object with every figure.

    .venv/bin/python experiments/benchmarks/bench_sampler.py [--batches 1,16] [--runs 3]

Tunix runs when `import tunix` works (the `bench` extra). Its dependencies pin other transformers/tokenizers
versions; to keep the project venv intact it can live in a side directory:
    pip install --no-deps --target /tmp/tunix_site google-tunix==0.1.7 google-metrax clu wrapt tensorboardX \
        jaxtyping wadler_lindig sentencepiece pillow perfetto pandas
    PYTHONPATH=/tmp/tunix_site .venv/bin/python experiments/benchmarks/bench_sampler.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rl_jax.chat import load_tokenizer
from rl_jax.models import ModelConfig, load_gguf, save_pretrained, smollm2_gguf_path
from rl_jax.models.transformer import rms_norm
from rl_jax.runtime import tune_cpu_backend
from rl_jax.sampling import Sampler, SamplingConfig

PROMPT_TOKENS = 49
PROMPT_TEXT = (
    "You are a support agent for a PC-components retailer. A customer writes: my new graphics card "
    "arrived with a cracked fan shroud and the order was placed three weeks ago. They ask whether they can "
    "still return it, how long a refund takes, and whether a replacement can ship before the weekend."
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def best_seconds(fn: Callable[..., jax.Array], *args: jax.Array, repeats: int = 5) -> float:
    """The fastest of ``repeats`` timed calls of a jitted ``fn`` (after one untimed call that compiles it)."""
    fn(*args).block_until_ready()
    return min(timed(lambda: fn(*args).block_until_ready()) for _ in range(repeats))


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best-of-N f32 GFLOP/s of one jitted n x n matmul: the machine's practical matmul ceiling right now."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    return 2 * n**3 / best_seconds(jax.jit(jnp.matmul), a, b, repeats=repeats) / 1e9


def memory_read_gb_s(megabytes: int = 512, repeats: int = 5) -> float:
    """Best-of-N GB/s of a jitted sum over an f32 array far larger than the caches (kept for comparison with
    earlier runs: XLA's sum reads slower than its dots, see ``matvec_read_gb_s``)."""
    x = jnp.ones((megabytes * 2**20 // 4,), jnp.float32)
    return x.nbytes / best_seconds(jax.jit(jnp.sum), x, repeats=repeats) / 1e9


def matvec_read_gb_s(megabytes: int = 512, repeats: int = 5) -> float:
    """Best-of-N GB/s of a jitted [1, 576] x [576, N] product over an f32 matrix far larger than the caches:
    how fast XLA's dots stream weights, a batch-1 decode step's access pattern. On the 2-core CPU a plain
    sum (``memory_read_gb_s``) reads at ~12-18 GB/s and this at ~20-28: the sum understates what a step can
    reach."""
    w = jnp.ones((megabytes * 2**20 // (4 * 576), 576), jnp.float32)
    x = jnp.ones((1, 576), jnp.float32)
    return w.nbytes / best_seconds(jax.jit(lambda w, x: x @ w.T), w, x, repeats=repeats) / 1e9


def decode_flops_per_token(cfg: ModelConfig, context: int) -> float:
    """Matmul FLOPs of one decode step for one row: every weight once, the LM head, attention over context."""
    d, f, h, kv, dh = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    per_layer = 2 * (d * h * dh * 2 + d * kv * dh * 2 + 3 * d * f) + 2 * 2 * h * dh * context
    return cfg.num_layers * per_layer + 2 * d * cfg.vocab_size


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Ours:
    name = "rl_jax"

    def __init__(self, prompt: list[int], new_tokens: int):
        cfg, model = load_gguf(smollm2_gguf_path(), dtype=jnp.float32, param_dtype=jnp.float32, progress=False)
        self.cfg = cfg
        self.model = model
        self.param_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
        self.sampler = Sampler(model)
        self.prompt = prompt
        self.config = SamplingConfig(temperature=0.0, max_new_tokens=new_tokens)
        self.compile_s: dict[int, float] = {}

    def warm(self, batch: int) -> list[int]:
        before = len(self.sampler.compile_log)
        out = self.sampler.generate([self.prompt] * batch, self.config)
        self.compile_s[batch] = sum(r.seconds for r in self.sampler.compile_log[before:])
        return out.tokens[0].tolist()

    def run(self, batch: int) -> tuple[float, float]:
        prompts = [self.prompt] * batch
        start = time.perf_counter()
        cache, logits, packed, shape = self.sampler.prefill(prompts, self.config)
        jax.block_until_ready(logits)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        out = self.sampler.decode(cache, logits, packed, shape, self.config, None)
        jax.block_until_ready(out)
        return prefill, time.perf_counter() - start


class OursXlaDefaults(Ours):
    """Our sampler compiled with XLA's default options instead of ``sampler_compiler_options`` (which leaves
    batches under 8 at the defaults anyway): the same model and code, to measure what the options do."""

    name = "rl_jax_xla_defaults"

    def __init__(self, ours: Ours):  # shares the loaded model; Ours.__init__ would load another copy
        self.cfg, self.model, self.param_bytes = ours.cfg, ours.model, ours.param_bytes
        self.sampler = Sampler(ours.model, compiler_options={})
        self.prompt, self.config = ours.prompt, ours.config
        self.compile_s = {}


class MatmulsOnly:
    """A decode step's weight matmuls and nothing else, in a loop of as many steps: the same weights, shapes
    and compiler options as our decode program, with RMSNorm and SwiGLU between them but no attention, cache or
    sampling (the query, key and value projections summed stand in for attention's output). Its time per step is what XLA's own dots
    cost at this batch; our step can only beat it by making those dots faster."""

    name = "matmuls_only"

    def __init__(self, ours: Ours, new_tokens: int):
        cfg = ours.cfg
        self.steps = new_tokens - 1
        self.cfg = cfg
        self.weights = (
            [
                tuple(getattr(layer, name)[...] for name in (
                    "attn_norm", "wq", "wk", "wv", "wo", "mlp_norm", "w_gate", "w_up", "w_down"
                ))
                for layer in ours.model.layers
            ],
            ours.model.final_norm[...],
            ours.model.unembedding(),
        )
        self.options = ours.sampler.compiler_options
        self.programs: dict[int, Any] = {}
        self.compile_s: dict[int, float] = {}

    def _program(self, batch: int) -> Any:
        cfg, steps = self.cfg, self.steps
        group = cfg.num_heads // cfg.num_kv_heads

        def program(weights: Any, x: jax.Array) -> jax.Array:
            layers, final_norm, head = weights

            def step(_: Any, x: jax.Array) -> jax.Array:
                h = x
                for attn_norm, wq, wk, wv, wo, mlp_norm, w_gate, w_up, w_down in layers:
                    y = rms_norm(h, attn_norm, cfg.rms_norm_eps)
                    q = jnp.einsum("bd,dhk->bhk", y, wq)
                    kv = jnp.einsum("bd,dhk->bhk", y, wk) + jnp.einsum("bd,dhk->bhk", y, wv)
                    h = h + jnp.einsum("bhk,hkd->bd", q + jnp.repeat(kv, group, axis=1), wo)
                    y = rms_norm(h, mlp_norm, cfg.rms_norm_eps)
                    gate = y @ w_gate
                    h = h + (gate / (1 + jnp.exp(-gate)) * (y @ w_up)) @ w_down
                logits = jnp.einsum("bd,vd->bv", rms_norm(h, final_norm, cfg.rms_norm_eps), head)
                # the next step depends on this one's logits, as a decode step's next token does
                return x + 1e-6 * jnp.max(logits, axis=-1, keepdims=True)

            return jax.lax.fori_loop(0, steps, step, x)

        return program

    def _input(self, batch: int) -> jax.Array:
        return jax.random.normal(jax.random.key(0), (batch, self.cfg.hidden_size), jnp.float32)

    def warm(self, batch: int) -> None:
        start = time.perf_counter()
        x = self._input(batch)
        compiled = jax.jit(self._program(batch)).lower(self.weights, x).compile(self.options(batch))
        self.compile_s[batch] = time.perf_counter() - start
        self.programs[batch] = compiled
        compiled(self.weights, x).block_until_ready()

    def run(self, batch: int) -> tuple[float, float]:
        x = self._input(batch)
        return 0.0, timed(lambda: self.programs[batch](self.weights, x).block_until_ready())


class Transformers:
    name = "transformers"

    def __init__(self, prompt: list[int], new_tokens: int, ours: Ours):
        import torch
        import transformers

        # the very weights ours runs, exported as an HF checkpoint (transformers' own GGUF reader needs
        # the extra `accelerate` package)
        self.torch = torch
        with tempfile.TemporaryDirectory() as tmp:
            save_pretrained(ours.model, tmp)
            self.model = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        # no stop token, as for ours: every row runs the full length (min_new_tokens would instead mask the
        # end-of-turn token out of the argmax and change the greedy path)
        self.model.generation_config.eos_token_id = None
        self.prompt = prompt
        self.new_tokens = new_tokens
        self.version = transformers.__version__
        self.threads = torch.get_num_threads()

    def _generate(self, batch: int, new_tokens: int) -> Any:
        ids = self.torch.tensor([self.prompt] * batch)
        with self.torch.inference_mode():
            return self.model.generate(
                ids, attention_mask=self.torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens,
                pad_token_id=0, top_p=None, top_k=None, temperature=None,
            )

    def warm(self, batch: int) -> list[int]:
        out = self._generate(batch, self.new_tokens)
        if out.shape[1] != len(self.prompt) + self.new_tokens:
            raise RuntimeError(f"transformers stopped early: {out.shape[1] - len(self.prompt)} new tokens")
        return out[0, len(self.prompt) :].tolist()

    def run(self, batch: int) -> tuple[float, float]:
        prefill = timed(lambda: self._generate(batch, 1))
        total = timed(lambda: self._generate(batch, self.new_tokens))
        return prefill, total - prefill


class Tunix:
    """Google Tunix's sampler on its Llama3 model, loaded from the same safetensors export.

    Tunix 0.1.7's Llama attention calls apply_rope without the config's rope_theta (it falls back to 1e6,
    SmolLM2 uses 1e5): tunix_smollm.tunix_llama patches it, or its logits are wrong. Its sampler takes
    strings; a minimal tokenizer hands it our prompt ids unchanged (no BOS added), and an impossible stop id
    keeps every row running.
    """

    name = "tunix"

    def __init__(self, prompt: list[int], new_tokens: int, ours: Ours):
        from tunix.generate import sampler as tunix_sampler
        from tunix_smollm import IdsTokenizer, tunix_llama

        cfg = ours.cfg
        model = tunix_llama(cfg, ours.model, dtype=jnp.float32)  # patches apply_rope's rope_theta
        tokenizer = IdsTokenizer(prompt, eos_id=cfg.eos_token_ids[0] if cfg.eos_token_ids else 0)
        cache = tunix_sampler.CacheConfig(
            cache_size=len(prompt) + new_tokens, num_layers=cfg.num_layers, num_kv_heads=cfg.num_kv_heads,
            head_dim=cfg.head_dim,
        )
        self.sampler = tunix_sampler.Sampler(model, tokenizer, cache)
        self.prompt = prompt
        self.new_tokens = new_tokens
        self.compile_s: dict[int, float] = {}

    def _generate(self, batch: int, new_tokens: int) -> Any:
        out = self.sampler(
            ["prompt"] * batch, max_generation_steps=new_tokens, max_prompt_length=len(self.prompt),
            temperature=0.0, eos_tokens=[-1],
        )
        jax.block_until_ready(out.tokens)
        return out

    def warm(self, batch: int) -> list[int]:
        start = time.perf_counter()
        out = self._generate(batch, self.new_tokens)
        self._generate(batch, 1)
        self.compile_s[batch] = time.perf_counter() - start
        return [int(t) for t in out.tokens[0]][: self.new_tokens]

    def run(self, batch: int) -> tuple[float, float]:
        prefill = timed(lambda: self._generate(batch, 1))
        total = timed(lambda: self._generate(batch, self.new_tokens))
        return prefill, total - prefill


def tunix_available() -> bool:
    try:
        import tunix.generate.sampler  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,16", help="comma-separated batch sizes")
    parser.add_argument("--runs", type=int, default=3, help="timed repetitions per engine and batch (median)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--skip-tunix", action="store_true", help="do not run Tunix even when installed")
    parser.add_argument("--skip-matmuls-only", action="store_true",
                        help="do not time the program of a decode step's weight matmuls alone")
    parser.add_argument("--skip-xla-defaults", action="store_true",
                        help="do not also run our sampler compiled with XLA's default options")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    load_start = os.getloadavg()
    xla_flags = tune_cpu_backend()  # before the first computation: every JAX engine here runs with them

    tok = load_tokenizer()
    prompt = tok.encode(PROMPT_TEXT)[:PROMPT_TOKENS]
    if len(prompt) != PROMPT_TOKENS:
        raise SystemExit(f"prompt text gives only {len(prompt)} tokens; need {PROMPT_TOKENS}")

    peak = matmul_peak_gflops()
    log(f"f32 matmul peak (2048^3, best of 5): {peak:.1f} GFLOP/s")
    summed = memory_read_gb_s()
    log(f"memory read (512 MB f32 sum, best of 5): {summed:.1f} GB/s")
    bandwidth = matvec_read_gb_s()
    log(f"weight streaming (512 MB f32 matrix-vector product, best of 5): {bandwidth:.1f} GB/s")
    engines: list[Any] = [Ours(prompt, args.new_tokens)]
    if not args.skip_xla_defaults:
        engines.append(OursXlaDefaults(engines[0]))
    if not args.skip_transformers:
        engines.append(Transformers(prompt, args.new_tokens, engines[0]))
    if not args.skip_tunix and tunix_available():
        engines.append(Tunix(prompt, args.new_tokens, engines[0]))
    floor = None if args.skip_matmuls_only else MatmulsOnly(engines[0], args.new_tokens)

    results: dict[str, Any] = {}
    greedy_agree: dict[str, dict[int, int]] = {}
    for batch in batches:
        firsts = {}
        for engine in engines:
            firsts[engine.name] = engine.warm(batch)
        for name, theirs in firsts.items():
            if name != "rl_jax":
                pairs = zip(firsts["rl_jax"], theirs, strict=True)
                same = next((i for i, (x, y) in enumerate(pairs) if x != y), len(theirs))
                greedy_agree.setdefault(name, {})[batch] = same
        timed_engines = engines if floor is None else [*engines, floor]
        if floor is not None:
            floor.warm(batch)
        samples: dict[str, list[tuple[float, float]]] = {e.name: [] for e in timed_engines}
        for run in range(args.runs):
            for engine in timed_engines:
                prefill, decode = engine.run(batch)
                samples[engine.name].append((prefill, decode))
                log(f"batch {batch} run {run + 1}/{args.runs} {engine.name}: prefill {prefill:.3f}s, "
                    f"decode {batch * (args.new_tokens - 1) / decode:.1f} tok/s")
        for engine in engines:
            prefill = statistics.median(p for p, _ in samples[engine.name])
            decode = statistics.median(d for _, d in samples[engine.name])
            entry = {
                "prefill_s": round(prefill, 4),
                "decode_tok_s": round(batch * (args.new_tokens - 1) / decode, 2),
                "end_to_end_tok_s": round(batch * args.new_tokens / (prefill + decode), 2),
            }
            if engine.name == "tunix":
                entry["compile_s"] = round(engine.compile_s[batch], 2)
            if engine.name.startswith("rl_jax"):
                context = PROMPT_TOKENS + args.new_tokens // 2
                gflops = entry["decode_tok_s"] * decode_flops_per_token(engine.cfg, context) / 1e9
                # every decode step reads every f32 weight once, whatever the batch
                weights_gb_s = entry["decode_tok_s"] / batch * engine.param_bytes / 1e9
                entry.update(
                    compile_s=round(engine.compile_s[batch], 2),
                    decode_gflop_s=round(gflops, 2),
                    fraction_of_matmul_peak=round(gflops / peak, 4),
                    weight_stream_gb_s=round(weights_gb_s, 2),
                    fraction_of_weight_streaming=round(weights_gb_s / bandwidth, 4),
                )
            if engine.name == "rl_jax":
                entry["decode_ms_per_step"] = round(1000 * decode / (args.new_tokens - 1), 2)
            results.setdefault(f"batch_{batch}", {})[engine.name] = entry
        row = results[f"batch_{batch}"]
        if floor is not None:
            step = statistics.median(d for _, d in samples[floor.name]) / floor.steps
            row[floor.name] = {"ms_per_step": round(1000 * step, 2),
                               "compile_s": round(floor.compile_s[batch], 2)}
            ours_step = row["rl_jax"]["decode_ms_per_step"]
            row["rl_jax_step_over_matmuls_only"] = round(ours_step / (1000 * step), 3)
        for other in ("transformers", "tunix", "rl_jax_xla_defaults"):
            if other in row:
                row[f"decode_speedup_vs_{other}"] = round(row["rl_jax"]["decode_tok_s"] / row[other]["decode_tok_s"], 3)

    summary = {
        "benchmark": "sampler",
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantized; transformers loads our safetensors export), f32",
        "prompt_tokens": PROMPT_TOKENS,
        "new_tokens": args.new_tokens,
        "decoding": "greedy, no stop tokens",
        "runs": args.runs,
        "statistic": "median",
        "matmul_peak_gflop_s": round(peak, 1),
        "memory_read_gb_s": round(summed, 1),
        "weight_streaming_gb_s": round(bandwidth, 1),
        "results": results,
        "greedy_leading_tokens_identical_to_ours": greedy_agree,
        "tunix": "run (apply_rope patched with the config's rope_theta)" if tunix_available() else
        "not installed (pip install google-tunix, the `bench` extra, to compare)",
        "jax": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "xla_flags_added": xla_flags,
        "sampler_compiler_options": {b: engines[0].sampler.compiler_options(b) for b in batches},
        "transformers": next((e.version for e in engines if e.name == "transformers"), None),
        "torch_threads": next((e.threads for e in engines if e.name == "transformers"), None),
        "cpu_count": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    np.set_printoptions(linewidth=120)
    main()
