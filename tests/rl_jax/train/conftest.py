"""Trainer tests compile the same few step programs many times (each test builds its own jitted step, and the
resume test runs it again in subprocesses): a compilation cache shared by the session's processes compiles
each program once. The cache lives in a fresh directory per session, so no result outlives the run."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import jax
import numpy as np
import pytest
from train_helpers import random_batch, state_arrays, tiny_model, train_config

_CACHE_DIR = tempfile.mkdtemp(prefix="rl_jax_train_xla_cache_")
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR  # inherited by the tests' subprocesses
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


@pytest.fixture(scope="session")
def mesh_4x2_step() -> dict[str, Any]:
    """One step of the default config on a 4x2 mesh of this process's 8 devices, from ``tiny_model()`` and
    ``random_batch(0)``: the state and metrics as numpy, and the layout of one sharded weight. Shared by the
    single-process and the two-process mesh tests (a mesh step takes tens of seconds to compile here)."""
    from rl_jax.sharding import make_mesh
    from rl_jax.train import create_train_state, shard_batch

    mesh = make_mesh(4, 2)
    _, state, step = create_train_state(tiny_model(), train_config(), mesh)
    state, metrics = step(state, shard_batch(random_batch(0), mesh))
    wq = state.params["layers"][0]["wq"].get_value()
    return {
        "state": state_arrays(state),
        "metrics": {k: np.asarray(v) for k, v in metrics.items()},
        "wq_mesh": dict(wq.sharding.mesh.shape),
        "wq_replicated": wq.sharding.is_fully_replicated,
    }
