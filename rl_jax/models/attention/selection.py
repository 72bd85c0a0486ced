"""Which backend runs: by name, or ``"auto"`` by the platform JAX computes on."""

from __future__ import annotations

from typing import Literal, get_args

import jax

from rl_jax.models.attention.cpu import CpuAttention
from rl_jax.models.attention.gpu import CudnnAttention
from rl_jax.models.attention.interface import AttentionBackend
from rl_jax.models.attention.reference import ReferenceAttention
from rl_jax.models.attention.tpu import SplashAttention

AttentionBackendName = Literal["auto", "reference", "cpu", "cudnn", "pallas"]
BACKEND_NAMES: tuple[str, ...] = get_args(AttentionBackendName)

# "auto" on each platform; any other platform gets the reference
_BY_PLATFORM = {"cpu": "cpu", "gpu": "cudnn", "tpu": "pallas"}
# backends whose kernels run on one platform only (the others are plain XLA and run anywhere)
_ONLY_ON = {"cudnn": "gpu", "pallas": "tpu"}


def select_backend(
    name: str, *, attention_chunk: int = 1024, causal_max_length: int = 2048, platform: str | None = None
) -> AttentionBackend:
    """The backend called ``name`` (one of ``BACKEND_NAMES``) for ``platform`` (default: JAX's default
    backend). The two lengths are the CPU paths' settings (``attention_chunk`` also the accelerators', whose
    attention over the cache runs those paths). Raises ValueError for an unknown name or a kernel the platform
    cannot run (to test those kernels elsewhere, build ``CudnnAttention(implementation="xla")`` or
    ``SplashAttention(interpret=True)`` directly)."""
    platform = platform or jax.default_backend()
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown attention backend {name!r}: choose one of {', '.join(BACKEND_NAMES)}")
    if name == "auto":
        name = _BY_PLATFORM.get(platform, "reference")
    if name in _ONLY_ON and platform != _ONLY_ON[name]:
        raise ValueError(
            f"attention backend {name!r} runs on {_ONLY_ON[name]} only, and JAX computes on {platform}: "
            f"choose 'auto', 'reference' or 'cpu' here"
        )
    if name == "cpu":
        return CpuAttention(attention_chunk=attention_chunk, causal_max_length=causal_max_length)
    if name == "cudnn":
        return CudnnAttention(attention_chunk=attention_chunk)
    if name == "pallas":
        return SplashAttention(attention_chunk=attention_chunk)
    return ReferenceAttention()
