"""Tiny random Transformers for the engine and server tests, their weights drawn with numpy (jax.random would
compile one XLA program per parameter shape, which costs more than the tests on a busy 2-core machine)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rl_jax.models import ModelConfig, Transformer


def tiny_config(vocab_size: int = 300, context: int = 256) -> ModelConfig:
    return ModelConfig(family="llama", vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_layers=2,
                       num_heads=4, num_kv_heads=2, head_dim=8, rope_theta=10_000.0,
                       max_position_embeddings=context)


def tiny_model(config: ModelConfig, seed: int = 0) -> Transformer:
    """Random weights with a scaled-up embedding, so next-token distributions are peaked and sampled paths
    differ between keys."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)

    def draw(path: tuple, x: jax.ShapeDtypeStruct) -> jax.Array:
        if len(x.shape) == 1:  # norm scales
            return jnp.asarray(np.ones(x.shape, x.dtype))
        std = 0.8 if "embed" in str(path[0]) else 0.02
        return jnp.asarray(rng.normal(0.0, std, x.shape).astype(x.dtype))

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(draw, state))


class ServerThread:
    """``rl_jax.serve`` on a free loopback port, in its own thread and event loop, so blocking clients (the
    ``openai`` package, ``corecraft eval``'s own ``asyncio.run``) can talk to it from the test.

        with ServerThread(service) as server:
            openai.OpenAI(base_url=server.url, api_key="x")
    """

    def __init__(self, service, *, api_key: str | None = None) -> None:
        import asyncio
        import threading

        self.service = service
        self.api_key = api_key
        self.url = ""
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def call(self, coro, timeout: float = 120.0):
        """Run ``coro`` on the server's loop (where the engine lives) and wait for its result."""
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> ServerThread:
        from rl_jax.serve import start_server

        self.thread.start()
        self.server = self.call(start_server(self.service, api_key=self.api_key))
        self.url = self.server.url
        return self

    def __exit__(self, *exc: object) -> None:
        self.call(self.server.stop())
        close = getattr(self.service.engine, "aclose", None)
        if close is not None:
            self.call(close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
