"""The engine on a 4x2 (data, model) mesh of fake CPU devices equals the engine on one device."""

from __future__ import annotations

import chex
import numpy as np
from engine_helpers import SMALL, prompt, request, run, tiny_model

from rl_jax.engine import EngineCore
from rl_jax.sharding import make_mesh, shard_module


def test_engine_on_a_4x2_mesh_equals_one_device():
    requests = [request(prompt(6 + 5 * i, 140 + i), 7, **({} if i % 2 else {"seed": 150 + i})) for i in range(4)]
    want = run(EngineCore(tiny_model(0), SMALL), *requests)
    mesh = make_mesh(4, 2)
    core = EngineCore(shard_module(tiny_model(0), mesh), SMALL, mesh=mesh)
    assert core._cache.k[0].sharding.spec[:2] == ("data", "model")  # slots over data, kv heads over model
    got = run(core, *requests)
    for g, w in zip(got, want, strict=True):
        assert g.tokens == w.tokens
        chex.assert_trees_all_close(np.asarray(g.logprobs), np.asarray(w.logprobs), atol=2e-5)
