"""Trainer tests compile the same few step programs many times (each test builds its own jitted step, and the
resume test runs it again in subprocesses): a compilation cache shared by the session's processes compiles
each program once. The cache lives in a fresh directory per session, so no result outlives the run."""

import os
import tempfile

import jax

_CACHE_DIR = tempfile.mkdtemp(prefix="rl_jax_train_xla_cache_")
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR  # inherited by the tests' subprocesses
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
