"""Policy models: the NNX transformer (Llama, Qwen2, Qwen3), its KV cache, checkpoint loading and export."""

from rl_jax.models.cache import KVCache
from rl_jax.models.config import ModelConfig, RopeScaling
from rl_jax.models.export import save_pretrained
from rl_jax.models.loading import load_gguf, load_pretrained, smollm2_gguf_path
from rl_jax.models.transformer import LayerStack, Transformer, stack_layer_state, unstack_layer_state

__all__ = [
    "KVCache",
    "LayerStack",
    "ModelConfig",
    "RopeScaling",
    "Transformer",
    "load_gguf",
    "load_pretrained",
    "save_pretrained",
    "smollm2_gguf_path",
    "stack_layer_state",
    "unstack_layer_state",
]
