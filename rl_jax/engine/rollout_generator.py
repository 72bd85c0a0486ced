"""The rollout pool's ``Generator`` over a ``TokenEngine``: what lets the pool switch from re-prefilling batches
(``BatchedGenerator``) to the engine's continuous batching and KV reuse across turns.

It offers what the pool and the learner use of ``BatchedGenerator`` (``context_limit``, ``episode()``,
``running()``, ``load_state``, ``reset_stats``), so it can stand in its place. An episode may name itself
(``session``) so its next turn finds its slot at once; without one, the engine still finds the slot whose cached
tokens the prompt extends. The engine batches whatever is in flight, so nothing waits for other episodes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from rl_jax.engine.api import GenerationRequest, TokenEngine
from rl_jax.rollout.generator import GeneratorStats
from rl_jax.rollout.types import Generation
from rl_jax.sampling import SamplingConfig


class EngineGenerator:
    """``Generator`` over ``engine`` with the run's ``sampling`` options (``max_new_tokens``: the per-turn
    ceiling); ``load_state`` goes to the engine (an engine without one, such as a remote server, is refused)."""

    def __init__(self, engine: TokenEngine, sampling: SamplingConfig) -> None:
        self.engine = engine
        self.sampling = sampling
        self.stats = GeneratorStats()

    @property
    def context_limit(self) -> int:
        return self.engine.context_limit

    async def generate(self, prompt: Sequence[int], max_new_tokens: int, key: Any,
                       session: str | None = None) -> Generation:
        s = self.sampling
        start = time.perf_counter()
        request = GenerationRequest(
            prompt=tuple(int(t) for t in prompt), max_new_tokens=min(max_new_tokens, s.max_new_tokens),
            key=None if s.greedy else key, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
            stop_token_ids=s.stop_token_ids, session=session,
        )
        out = await self.engine.generate(request)
        stats = self.stats
        stats.calls += 1
        stats.rows += 1
        stats.prompt_tokens += len(request.prompt)
        stats.new_tokens += len(out.tokens)
        stats.seconds += time.perf_counter() - start
        return Generation(out.tokens, out.logprobs, stopped=out.finish == "stop")

    def end_session(self, session: str) -> None:
        self.engine.end_session(session)

    def load_state(self, state: Any) -> None:
        load = getattr(self.engine, "load_state", None)
        if load is None:
            raise TypeError(f"{type(self.engine).__name__} cannot take new weights")
        load(state)

    def reset_stats(self) -> GeneratorStats:
        stats, self.stats = self.stats, GeneratorStats()
        reset = getattr(self.engine, "reset_stats", None)  # an engine in this process keeps stage counters
        if reset is not None:
            engine_stats = reset()
            stats.prefill_seconds, stats.decode_seconds = engine_stats.prefill_seconds, engine_stats.decode_seconds
        return stats

    @contextlib.contextmanager
    def episode(self) -> Iterator[Callable[[], None]]:
        """The pool's episode bracket; the engine batches what is in flight, so there is nothing to track."""
        yield lambda: None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[EngineGenerator]:
        yield self

