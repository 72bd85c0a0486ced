"""Where each of our parameters lives in a Hugging Face checkpoint, and how its layout differs.

Every mapping is a view: an HF tensor is reshaped (splitting a fused heads*head_dim axis) and transposed into
our layout. Views of a memory-mapped file cost nothing, so a loader can slice out just one device's shard.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rl_jax.models.config import ModelConfig

StatePath = tuple[str | int, ...]


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """Our parameter at ``path`` equals ``hf_tensor.reshape(split).transpose(perm)``."""

    path: StatePath
    hf_name: str
    split: tuple[int, ...] | None = None  # reshape of the HF tensor before the transpose
    perm: tuple[int, ...] | None = None

    def to_ours(self, hf: np.ndarray) -> np.ndarray:
        """A view (no copy for memory-mapped input) of the HF tensor in our layout."""
        x = hf.reshape(self.split) if self.split is not None else hf
        return x.transpose(self.perm) if self.perm is not None else x

    def to_hf(self, ours: np.ndarray, hf_shape: tuple[int, ...]) -> np.ndarray:
        x = ours.transpose(np.argsort(self.perm)) if self.perm is not None else ours
        return np.ascontiguousarray(x).reshape(hf_shape)


def tensor_maps(cfg: ModelConfig) -> list[TensorMap]:
    """All parameters of a model of this config, in checkpoint order."""
    d, h, kv, dh = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    maps = [TensorMap(("embed",), "model.embed_tokens.weight")]
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        layer: list[TensorMap] = [
            TensorMap(("layers", i, "attn_norm"), p + "input_layernorm.weight"),
            # HF projections are [out, in] with out = heads * head_dim
            TensorMap(("layers", i, "wq"), p + "self_attn.q_proj.weight", (h, dh, d), (2, 0, 1)),
            TensorMap(("layers", i, "wk"), p + "self_attn.k_proj.weight", (kv, dh, d), (2, 0, 1)),
            TensorMap(("layers", i, "wv"), p + "self_attn.v_proj.weight", (kv, dh, d), (2, 0, 1)),
            TensorMap(("layers", i, "wo"), p + "self_attn.o_proj.weight", (d, h, dh), (1, 2, 0)),
        ]
        if cfg.attention_bias:
            layer += [
                TensorMap(("layers", i, "bq"), p + "self_attn.q_proj.bias", (h, dh)),
                TensorMap(("layers", i, "bk"), p + "self_attn.k_proj.bias", (kv, dh)),
                TensorMap(("layers", i, "bv"), p + "self_attn.v_proj.bias", (kv, dh)),
            ]
        if cfg.qk_norm:
            layer += [
                TensorMap(("layers", i, "q_norm"), p + "self_attn.q_norm.weight"),
                TensorMap(("layers", i, "k_norm"), p + "self_attn.k_norm.weight"),
            ]
        layer += [
            TensorMap(("layers", i, "mlp_norm"), p + "post_attention_layernorm.weight"),
            TensorMap(("layers", i, "w_gate"), p + "mlp.gate_proj.weight", None, (1, 0)),
            TensorMap(("layers", i, "w_up"), p + "mlp.up_proj.weight", None, (1, 0)),
            TensorMap(("layers", i, "w_down"), p + "mlp.down_proj.weight", None, (1, 0)),
        ]
        if cfg.mlp_bias:
            layer += [
                TensorMap(("layers", i, "b_gate"), p + "mlp.gate_proj.bias"),
                TensorMap(("layers", i, "b_up"), p + "mlp.up_proj.bias"),
                TensorMap(("layers", i, "b_down"), p + "mlp.down_proj.bias"),
            ]
        maps += layer
    maps.append(TensorMap(("final_norm",), "model.norm.weight"))
    if not cfg.tie_word_embeddings:
        maps.append(TensorMap(("lm_head",), "lm_head.weight"))
    return maps


def hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in an HF checkpoint of this config."""
    d, f, h, kv, dh, v = (
        cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size
    )
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (v, d)
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (h * dh, d),
            p + "self_attn.k_proj.weight": (kv * dh, d),
            p + "self_attn.v_proj.weight": (kv * dh, d),
            p + "self_attn.o_proj.weight": (d, h * dh),
            p + "self_attn.q_proj.bias": (h * dh,),
            p + "self_attn.k_proj.bias": (kv * dh,),
            p + "self_attn.v_proj.bias": (kv * dh,),
            p + "self_attn.q_norm.weight": (dh,),
            p + "self_attn.k_norm.weight": (dh,),
            p + "mlp.gate_proj.weight": (f, d),
            p + "mlp.up_proj.weight": (f, d),
            p + "mlp.down_proj.weight": (d, f),
            p + "mlp.gate_proj.bias": (f,),
            p + "mlp.up_proj.bias": (f,),
            p + "mlp.down_proj.bias": (d,),
        })
    return shapes
