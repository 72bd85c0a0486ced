"""Our SmolLM2 as Google Tunix's Llama3 model, shared by bench_sampler.py and bench_train.py.

The weights travel through a safetensors export of the loaded model (``rl_jax.models.save_pretrained``) into
``tunix.models.llama3.params.create_model_from_safe_tensors``. Tunix 0.1.6/0.1.7's Llama attention calls
``apply_rope`` without the config's ``rope_theta`` (it falls back to 1e6; SmolLM2 uses 1e5): ``tunix_llama``
rebinds the module's ``apply_rope`` to pass the config's value, or Tunix's logits are wrong. Tunix is
imported lazily, so the benchmarks still import this module where it is not installed.
"""

from __future__ import annotations

import functools
import tempfile
from typing import Any


def tunix_llama(cfg: Any, model: Any, dtype: Any = None) -> Any:
    """Tunix's ``Llama3`` with ``model``'s weights (``cfg``: our ``ModelConfig``), in ``dtype`` (float32)."""
    import jax.numpy as jnp
    from tunix.models.llama3 import model as tunix_model
    from tunix.models.llama3 import params as tunix_params

    from rl_jax.models import save_pretrained

    original = getattr(tunix_model.apply_rope, "_unpatched", tunix_model.apply_rope)
    patched = functools.partial(original, rope_theta=cfg.rope_theta)
    patched._unpatched = original  # type: ignore[attr-defined]
    tunix_model.apply_rope = patched
    tunix_cfg = tunix_model.ModelConfig(
        num_layers=cfg.num_layers, vocab_size=cfg.vocab_size, embed_dim=cfg.hidden_size,
        hidden_dim=cfg.intermediate_size, num_heads=cfg.num_heads, head_dim=cfg.head_dim,
        num_kv_heads=cfg.num_kv_heads, rope_theta=cfg.rope_theta, norm_eps=cfg.rms_norm_eps,
        weight_tying=cfg.tie_word_embeddings,
    )
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp)
        return tunix_params.create_model_from_safe_tensors(tmp, tunix_cfg, dtype=dtype or jnp.float32)


class IdsTokenizer:
    """The minimal tokenizer Tunix accepts: ``encode`` hands back fixed ids unchanged (no BOS added)."""

    def __init__(self, ids: list[int], eos_id: int, pad_id: int = 0):
        self.ids, self._eos, self._pad = list(ids), eos_id, pad_id

    def encode(self, text: str, **_: Any) -> list[int]:
        return list(self.ids)

    def decode(self, ids: Any, **_: Any) -> str:
        return ""

    def bos_id(self) -> None:
        return None

    def eos_id(self) -> int:
        return self._eos

    def pad_id(self) -> int:
        return self._pad
