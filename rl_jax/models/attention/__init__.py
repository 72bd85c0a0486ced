"""Attention behind one interface, a backend per platform (``interface`` says what a backend implements):

* ``reference``: plain XLA einsums on any platform, the oracle the others are tested against;
* ``cpu``: the paths tuned for XLA:CPU (causal tiles and flash loops with written-out backward passes,
  prefill tiles, chunked and cascade attention over the cache, decode as multiplies and sums);
* ``cudnn``: ``jax.nn.dot_product_attention`` with cuDNN's flash attention, on GPU;
* ``pallas``: Pallas splash attention, on TPU.

``select_backend("auto")`` picks by the platform JAX computes on; ``Transformer(attention_backend=...)`` (and
``PolicyConfig.attention_backend``) override it.
"""

from rl_jax.models.attention.cpu import CpuAttention
from rl_jax.models.attention.gpu import CudnnAttention
from rl_jax.models.attention.interface import AttentionBackend, Prefix
from rl_jax.models.attention.reference import ReferenceAttention
from rl_jax.models.attention.selection import BACKEND_NAMES, AttentionBackendName, select_backend
from rl_jax.models.attention.tpu import SplashAttention

__all__ = [
    "BACKEND_NAMES",
    "AttentionBackend",
    "AttentionBackendName",
    "CpuAttention",
    "CudnnAttention",
    "Prefix",
    "ReferenceAttention",
    "SplashAttention",
    "select_backend",
]
