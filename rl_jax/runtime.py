"""Process-wide settings of XLA's CPU backend that entry points apply before JAX starts.

XLA reads ``XLA_FLAGS`` once, when its first backend initialises, so these are offered to entry points (the
experiments, the benchmarks) rather than applied on import: a library must not change a process it is merely
imported into. Flags only tune the CPU backend; on GPU or TPU they change nothing but the host's own work.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import Any

# Measured on this project's 2-core CPU by experiments/benchmarks/bench_xla_flags.py (BUILD.md): the full GRPO
# train step of a 6-layer SmolLM2-135M-shaped model at B=4, T=512 ran 1.3x faster with both; greedy decoding
# was even (0.95-0.99x, within the machine's drift).
CPU_FLAGS: tuple[str, ...] = (
    # YNNPACK takes the dots only: its reductions over the vocabulary (log-sum-exp, entropy) ran slower than
    # XLA's own loops and cost ~1 s of a 6-layer step's 10 s
    "--xla_cpu_experimental_ynn_fusion_type=dot",
    # oneDNN (PyTorch's CPU library) for the dots YNNPACK leaves, the small-M ones of decoding among them
    "--xla_cpu_use_onednn=true",
)


# XLA aborts the process on a flag it does not know, and experimental flags come and go between releases:
# they are added only for the jaxlib series they were measured with.
TESTED_JAXLIB = "0.10."


def tune_cpu_backend(environ: MutableMapping[str, str] = os.environ, jaxlib_version: str | None = None) -> list[str]:
    """Add ``CPU_FLAGS`` to ``XLA_FLAGS``, each unless the user already set that flag (theirs wins), when the
    installed jaxlib is the series they were measured with. Call it before the first JAX computation; returns
    the flags it added."""
    if jaxlib_version is None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            jaxlib_version = version("jaxlib")
        except PackageNotFoundError:
            return []
    if not jaxlib_version.startswith(TESTED_JAXLIB):
        return []
    present = environ.get("XLA_FLAGS", "")
    names = {part.split("=", 1)[0] for part in present.split()}
    added = [flag for flag in CPU_FLAGS if flag.split("=", 1)[0] not in names]
    if added:
        environ["XLA_FLAGS"] = " ".join([present, *added]).strip()
    return added


# Compiler options of the sampler's programs on CPU (per program, unlike XLA_FLAGS: the train step keeps its
# YNNPACK dots). Without YNNPACK, a decode step's small-M dots ([16, 576] x [576, 1536]) and its attention go
# to XLA's own kernels, which ran batch 16 ~1.25x and batch 8 ~1.2x faster on the 2-core CPU; at batch 4 the
# same change ran 2.2x slower and at batch 1 2-9% slower, so smaller batches keep XLA's defaults (BUILD.md).
# An empty list is XLA's way of saying "no YNNPACK fusions".
SAMPLER_CPU_OPTIONS: dict[str, str] = {"xla_cpu_experimental_ynn_fusion_type": ""}
SAMPLER_CPU_OPTIONS_MIN_BATCH = 8  # the smallest batch bucket measured faster with them


def platform_of(tree: Any) -> str:
    """The platform ("cpu", "gpu", "tpu") holding the first array of ``tree`` (a model's state; JAX's default
    backend when it holds none)."""
    import jax

    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array):
            return next(iter(leaf.devices())).platform
    return jax.default_backend()


def sampler_compiler_options(platform: str, batch: int, jaxlib_version: str | None = None) -> dict[str, str]:
    """Compiler options for the sampler's programs of ``batch`` rows on ``platform`` ("cpu", "gpu", "tpu"):
    the measured CPU options for the batches and jaxlib series they were measured with, nothing elsewhere
    (XLA rejects options it does not know)."""
    if platform != "cpu" or batch < SAMPLER_CPU_OPTIONS_MIN_BATCH:
        return {}
    if jaxlib_version is None:
        import jaxlib

        jaxlib_version = jaxlib.__version__
    return dict(SAMPLER_CPU_OPTIONS) if jaxlib_version.startswith(TESTED_JAXLIB) else {}


def release_freed_memory() -> bool:
    """Hand the C heap's freed pages back to the OS (glibc ``malloc_trim``); False where there is no glibc.

    XLA's compiler allocates gigabytes while it compiles a large program (the default preset's train step: RSS
    from 1.9 to 6.9 GB) and frees them, but glibc keeps the freed pages mapped, so the program's own buffers
    then stack on top: 9.15 GB at the first step against 5.6 GB with the pages returned in between (BUILD.md).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return False
    trim(0)
    return True
