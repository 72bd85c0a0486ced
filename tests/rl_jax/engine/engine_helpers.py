"""Tiny random GQA models and a reference: what the plain Sampler gives for one prompt and one row key."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rl_jax.engine import EngineConfig, EngineCore, GenerationRequest, TokenChunk
from rl_jax.models import ModelConfig, Transformer
from rl_jax.sampling import Sampler, SamplingConfig

CFG = ModelConfig(
    family="llama", vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
    num_kv_heads=2, head_dim=8, rope_theta=10_000.0, max_position_embeddings=256,
)
SMALL = EngineConfig(slots=4, max_len=128, prefix_capacity=0, chunk=8, prefill_rows=(1, 4), decode_steps=4)


def tiny_model(seed: int = 0, dtype=jnp.float32) -> Transformer:
    """Weights drawn with numpy (jax.random would compile a program per parameter shape); the embedding is
    scaled up so next-token distributions are peaked: greedy paths stay far from ties."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(CFG, rngs=nnx.Rngs(0), dtype=dtype,
                                                                   param_dtype=dtype)))
    rng = np.random.default_rng(seed)

    def draw(path: tuple, x: jax.ShapeDtypeStruct) -> jax.Array:
        if len(x.shape) == 1:
            return jnp.asarray(np.ones(x.shape, x.dtype))
        std = 0.8 if "embed" in str(path[0]) else 0.02
        return jnp.asarray(rng.normal(0.0, std, x.shape).astype(x.dtype))

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(draw, state))


def prompt(length: int, seed: int) -> tuple[int, ...]:
    return tuple(int(t) for t in np.random.default_rng(seed).integers(3, CFG.vocab_size, length))


def request(tokens: Sequence[int], new: int, *, seed: int | None = None, **options) -> GenerationRequest:
    if seed is not None:
        options.setdefault("temperature", 0.9)
        options["key"] = jax.random.key(seed)
    else:
        options.setdefault("temperature", 0.0)
    return GenerationRequest(tuple(tokens), new, **options)


_SAMPLERS: dict[int, Sampler] = {}


def sampler_reference(model: Transformer, req: GenerationRequest) -> tuple[list[int], np.ndarray]:
    """Sampler.generate for this request alone, its key as the row key."""
    config = SamplingConfig(temperature=req.temperature, top_k=req.top_k, top_p=req.top_p,
                            max_new_tokens=req.max_new_tokens, stop_token_ids=req.stop_token_ids)
    row_keys = None if req.temperature == 0 else req.key[None]
    sampler = _SAMPLERS.get(id(model))
    if sampler is None:  # one per model: its compiled programs serve every later reference
        sampler = _SAMPLERS[id(model)] = Sampler(model, min_shared_prefix=None)
    out = sampler.generate([list(req.prompt)], config, row_keys=row_keys)
    n = int(out.lengths[0])
    return out.tokens[0, :n].tolist(), out.logprobs[0, :n]


def run(core: EngineCore, *requests: GenerationRequest) -> list[TokenChunk]:
    """Submit the requests together and step until done; each request's whole turn as one chunk."""
    ids = [core.submit(r) for r in requests]
    return collect(core.run_until_idle(), ids)


def collect(events, ids: Sequence[int]) -> list[TokenChunk]:
    tokens: dict[int, list[int]] = {i: [] for i in ids}
    logps: dict[int, list[float]] = {i: [] for i in ids}
    last: dict[int, TokenChunk] = {}
    for turn_id, chunk in events:
        if isinstance(chunk, BaseException):
            raise chunk
        if turn_id in tokens:
            tokens[turn_id].extend(chunk.tokens)
            logps[turn_id].extend(chunk.logprobs)
            last[turn_id] = chunk
    return [TokenChunk(tuple(tokens[i]), tuple(logps[i]), last[i].finish, last[i].prompt_tokens_computed)
            for i in ids]
