"""Generation for multi-turn agents: continuous batching over decode slots, KV reuse across turns, a prefix cache."""

from rl_jax.engine.api import Finish, GenerationRequest, TokenChunk, TokenEngine
from rl_jax.engine.config import EngineConfig
from rl_jax.engine.core import EngineCore, EngineStats
from rl_jax.engine.engine import SlotEngine

__all__ = ["EngineConfig", "EngineCore", "EngineStats", "Finish", "GenerationRequest", "SlotEngine", "TokenChunk",
           "TokenEngine"]
