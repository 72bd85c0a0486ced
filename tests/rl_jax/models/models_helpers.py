"""Tiny random Hugging Face checkpoints of each supported family, and helpers to run the reference.

transformers and torch are the reference implementation here (test-only dependencies).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

VOCAB = 97

_BASE = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
)

# name -> (config class name, extra config kwargs). Together they cover: llama3 rope scaling, linear scaling,
# tied and untied embeddings, QKV bias (qwen2), QK-norm with head_dim != hidden/heads (qwen3), MHA and GQA.
FAMILY_CASES: dict[str, tuple[str, dict]] = {
    "llama3_scaled_untied": (
        "LlamaConfig",
        dict(
            rope_theta=500_000.0, tie_word_embeddings=False,
            rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                              original_max_position_embeddings=16),
        ),
    ),
    "llama_tied_linear_mha": (
        "LlamaConfig",
        dict(tie_word_embeddings=True, num_key_value_heads=4, rope_scaling=dict(rope_type="linear", factor=2.0)),
    ),
    "qwen2_tied": ("Qwen2Config", dict(tie_word_embeddings=True, rope_theta=1_000_000.0)),
    "qwen3_untied": ("Qwen3Config", dict(tie_word_embeddings=False, head_dim=32)),
}


def make_hf_model(case: str, seed: int = 0):
    import torch
    import transformers

    cls_name, extra = FAMILY_CASES[case]
    config = getattr(transformers, cls_name)(**{**_BASE, **extra})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # move norms and biases off their init values so they are really tested
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def write_hf_checkpoints(root: Path) -> dict[str, Path]:
    """case name -> directory of a saved random HF checkpoint."""
    out = {}
    for case in FAMILY_CASES:
        model = make_hf_model(case)
        model.save_pretrained(root / case)
        out[case] = root / case
    return out


def hf_logits(model_dir: Path, ids: np.ndarray, attention_mask: np.ndarray | None = None,
              positions: np.ndarray | None = None, dtype: str = "float32") -> np.ndarray:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
    kwargs = {}
    if attention_mask is not None:
        kwargs["attention_mask"] = torch.tensor(attention_mask, dtype=torch.long)
    if positions is not None:
        kwargs["position_ids"] = torch.tensor(positions, dtype=torch.long)
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long), **kwargs).logits.numpy()


def left_padded_batch(lengths: list[int], total: int, vocab: int = VOCAB, seed: int = 0):
    """Token ids, bool mask and positions [B, total] for rows of the given real lengths, left-padded."""
    rng = np.random.default_rng(seed)
    b = len(lengths)
    ids = rng.integers(3, vocab, size=(b, total)).astype(np.int32)
    mask = np.zeros((b, total), bool)
    positions = np.zeros((b, total), np.int32)
    for i, n in enumerate(lengths):
        mask[i, total - n:] = True
        positions[i, total - n:] = np.arange(n)
        ids[i, : total - n] = 0
    return ids, mask, positions
