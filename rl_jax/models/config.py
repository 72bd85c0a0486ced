"""Model configuration: one frozen dataclass for the Llama and Qwen2/Qwen3 decoder families.

Built from a Hugging Face ``config.json`` dict (``ModelConfig.from_hf``) and written back to one
(``ModelConfig.to_hf``) so exported checkpoints load in transformers and vLLM unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

Family = Literal["llama", "qwen2", "qwen3"]

_ARCHITECTURES: dict[str, str] = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
_SUPPORTED_ROPE = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling. ``kind`` is "linear" or "llama3" (Llama 3.1+ long-context scaling)."""

    kind: str
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def to_hf(self) -> dict[str, Any]:
        if self.kind == "linear":
            return {"rope_type": "linear", "factor": self.factor}
        return {
            "rope_type": "llama3",
            "factor": self.factor,
            "low_freq_factor": self.low_freq_factor,
            "high_freq_factor": self.high_freq_factor,
            "original_max_position_embeddings": self.original_max_position_embeddings,
        }


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a decoder-only transformer (GQA, RoPE, RMSNorm, SwiGLU)."""

    family: Family
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10_000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # bias on the q, k, v projections (Qwen2 always)
    mlp_bias: bool = False
    qk_norm: bool = False  # RMSNorm over head_dim on q and k before RoPE (Qwen3)
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    # keys of the source config.json that we do not model but carry through export untouched
    extra_hf: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.family not in _ARCHITECTURES:
            raise ValueError(f"unknown model family {self.family!r}; supported: {sorted(_ARCHITECTURES)}")
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim must be even for RoPE; got {self.head_dim}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")

    @property
    def q_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, int):
            return (self.eos_token_id,)
        return tuple(self.eos_token_id)

    def num_params(self) -> int:
        """Parameter count (the tied embedding counted once)."""
        d, f, h, kv, dh = self.hidden_size, self.intermediate_size, self.num_heads, self.num_kv_heads, self.head_dim
        attn = d * h * dh * 2 + d * kv * dh * 2 + (h * dh + 2 * kv * dh if self.attention_bias else 0)
        attn += 2 * dh if self.qk_norm else 0
        mlp = 3 * d * f + (2 * f + d if self.mlp_bias else 0)
        per_layer = attn + mlp + 2 * d
        embed = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return embed + self.num_layers * per_layer + d

    def rope_inv_freq(self) -> np.ndarray:
        """Inverse RoPE frequencies [head_dim // 2], scaled as the config says.

        Computed in float32 step by step as transformers does, so both sides rotate by identical angles.
        """
        f32 = np.float32
        exponents = np.arange(0, self.head_dim, 2).astype(f32) / f32(self.head_dim)
        # torch evaluates the power in double and rounds to f32 (numpy's f32 pow differs by an ulp at times)
        inv_freq = f32(1.0) / (self.rope_theta ** exponents.astype(np.float64)).astype(f32)
        s = self.rope_scaling
        if s is None:
            return inv_freq
        if s.kind == "linear":
            return inv_freq / f32(s.factor)
        # llama3: keep high frequencies, divide low ones by factor, interpolate smoothly in between
        low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor
        high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor
        wavelen = f32(2 * math.pi) / inv_freq
        scaled = np.where(wavelen > low_freq_wavelen, inv_freq / f32(s.factor), inv_freq)
        smooth = (f32(s.original_max_position_embeddings) / wavelen - f32(s.low_freq_factor)) / f32(
            s.high_freq_factor - s.low_freq_factor
        )
        smoothed = (f32(1) - smooth) * scaled / f32(s.factor) + smooth * scaled
        is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
        return np.where(is_medium, smoothed, scaled).astype(f32)

    # ------------------------------------------------------------------ Hugging Face config.json

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> ModelConfig:
        """Build from a transformers ``config.json`` dict (model_type llama, qwen2 or qwen3)."""
        model_type = hf.get("model_type")
        if model_type not in _ARCHITECTURES:
            raise ValueError(
                f"unsupported model_type {model_type!r} in config.json; supported: {sorted(_ARCHITECTURES)}"
            )
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"only SwiGLU (hidden_act='silu') is supported; config has {act!r}")
        num_heads = int(hf["num_attention_heads"])
        hidden = int(hf["hidden_size"])
        head_dim = hf.get("head_dim") or hidden // num_heads
        rope_theta, rope_scaling = _rope_from_hf(hf)
        if model_type == "qwen2":
            attention_bias = True
        else:
            attention_bias = bool(hf.get("attention_bias", False))
        if model_type in ("qwen2", "qwen3") and hf.get("use_sliding_window", False):
            raise ValueError("sliding-window attention (use_sliding_window=true) is not supported")
        layer_types = set(hf.get("layer_types") or ["full_attention"])
        if layer_types != {"full_attention"}:
            raise ValueError(f"only full attention layers are supported; config has layer_types {layer_types}")
        eos = hf.get("eos_token_id")
        known = _KNOWN_HF_KEYS | {"rope_parameters"}
        extra = tuple(sorted((k, _freeze(v)) for k, v in hf.items() if k not in known))
        return cls(
            family=model_type,
            vocab_size=int(hf["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=attention_bias,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            qk_norm=model_type == "qwen3",
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
            pad_token_id=hf.get("pad_token_id"),
            extra_hf=extra,
        )

    def to_hf(self) -> dict[str, Any]:
        """A ``config.json`` dict that transformers loads as the same architecture."""
        out: dict[str, Any] = {k: _thaw(v) for k, v in self.extra_hf}
        out.update(
            architectures=[_ARCHITECTURES[self.family]],
            model_type=self.family,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            hidden_act="silu",
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            rope_scaling=self.rope_scaling.to_hf() if self.rope_scaling else None,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=self.tie_word_embeddings,
            bos_token_id=self.bos_token_id,
            eos_token_id=list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
            pad_token_id=self.pad_token_id,
        )
        if self.family == "llama":
            out.update(attention_bias=self.attention_bias, mlp_bias=self.mlp_bias)
        elif self.family == "qwen3":
            out.update(attention_bias=self.attention_bias)
        if self.family in ("qwen2", "qwen3"):
            out.setdefault("use_sliding_window", False)
        # transformers 5 reads rope parameters from here; 4.x and vLLM from rope_theta/rope_scaling
        params: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            params.update(self.rope_scaling.to_hf())
        out["rope_parameters"] = params
        return out


_KNOWN_HF_KEYS = {
    "architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act", "rms_norm_eps", "rope_theta",
    "rope_scaling", "max_position_embeddings", "tie_word_embeddings", "attention_bias", "mlp_bias",
    "bos_token_id", "eos_token_id", "pad_token_id", "use_sliding_window",
}


def _rope_from_hf(hf: Mapping[str, Any]) -> tuple[float, RopeScaling | None]:
    # transformers 5 writes "rope_parameters" (theta inside); 4.x writes rope_theta + rope_scaling
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or params
    theta = float(hf.get("rope_theta") or params.get("rope_theta") or 10_000.0)
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if kind not in _SUPPORTED_ROPE:
        raise ValueError(f"unsupported rope scaling {kind!r}; supported: {_SUPPORTED_ROPE}")
    if kind == "default":
        return theta, None
    if kind == "linear":
        return theta, RopeScaling(kind="linear", factor=float(scaling["factor"]))
    return theta, RopeScaling(
        kind="llama3",
        factor=float(scaling["factor"]),
        low_freq_factor=float(scaling["low_freq_factor"]),
        high_freq_factor=float(scaling["high_freq_factor"]),
        original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
    )


def _freeze(v: Any) -> Any:
    """Make a JSON value hashable so the frozen config stays hashable (it is a jit static argument)."""
    if isinstance(v, dict):
        return ("__dict__", tuple(sorted((k, _freeze(x)) for k, x in v.items())))
    if isinstance(v, list):
        return ("__list__", tuple(_freeze(x) for x in v))
    return v


def _thaw(v: Any) -> Any:
    if isinstance(v, tuple) and len(v) == 2 and v[0] == "__dict__":
        return {k: _thaw(x) for k, x in v[1]}
    if isinstance(v, tuple) and len(v) == 2 and v[0] == "__list__":
        return [_thaw(x) for x in v[1]]
    return v
