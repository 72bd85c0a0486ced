"""Generation for multi-turn agents: continuous batching over decode slots, KV reuse across turns, a prefix cache."""

from rl_jax.engine.api import Finish, GenerationRequest, TokenChunk, TokenEngine

__all__ = ["Finish", "GenerationRequest", "TokenChunk", "TokenEngine"]
