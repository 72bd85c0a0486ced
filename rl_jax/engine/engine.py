"""``SlotEngine``: the ``TokenEngine`` with continuous batching, KV reuse across turns and a prefix cache.

Every ``stream``/``generate`` call submits one turn to an ``EngineCore`` and waits for its chunks. One runner
task per event loop (started by the first request) runs the core's steps in a worker thread while there is work,
and hands each step's chunks to the requests' queues; the loop keeps accepting requests meanwhile, and they
join the running batch at the next step. When the engine has been idle, its first step waits up to ``max_wait_s``
for more requests (or until they would fill the slots), so that a burst arriving over a few milliseconds (HTTP
clients) starts as one batch rather than its first arrivals decoding alone while the rest wait for their next
call. A caller that goes away (its task cancelled, its stream closed) has its turn cancelled: its slot is free
at the next step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from flax import nnx
from jax.sharding import Mesh

from rl_jax.engine.api import GenerationRequest, TokenChunk
from rl_jax.engine.config import EngineConfig
from rl_jax.engine.core import EngineCore, EngineStats
from rl_jax.models import Transformer


class SlotEngine:
    """A ``TokenEngine`` over ``EngineCore`` (see ``EngineConfig`` for the sizes). ``load_state`` swaps weights
    in place; ``compiled_programs`` and ``core.compile_log`` say what was compiled and how long it took.
    ``max_wait_s``: how long the first request after an idle spell waits for others to join its batch (0: none)."""

    def __init__(self, model: Transformer, config: EngineConfig | None = None, *, mesh: Mesh | None = None,
                 cache_dtype: Any = None, compiler_options: Mapping[str, Any] | None = None,
                 max_wait_s: float = 0.05) -> None:
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0; got {max_wait_s}")
        self.core = EngineCore(model, config, mesh=mesh, cache_dtype=cache_dtype, compiler_options=compiler_options)
        self.max_wait_s = max_wait_s
        self._queues: dict[int, asyncio.Queue[TokenChunk | BaseException]] = {}
        self._runner: asyncio.Task[None] | None = None
        self._runner_loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="slot-engine")

    @property
    def context_limit(self) -> int:
        return self.core.context_limit

    @property
    def compiled_programs(self) -> int:
        return self.core.compiled_programs

    @property
    def stats(self) -> EngineStats:
        return self.core.stats

    def reset_stats(self) -> EngineStats:
        stats, self.core.stats = self.core.stats, EngineStats()
        return stats

    def load_state(self, model_or_state: nnx.Module | nnx.State) -> None:
        self.core.load_state(model_or_state)

    def end_session(self, session: str) -> None:
        self.core.end_session(session)
        self._poke()

    async def generate(self, request: GenerationRequest) -> TokenChunk:
        tokens: list[int] = []
        logprobs: list[float] = []
        async for chunk in self.stream(request):
            tokens.extend(chunk.tokens)
            logprobs.extend(chunk.logprobs)
            if chunk.finish is not None:
                return TokenChunk(tuple(tokens), tuple(logprobs), chunk.finish, chunk.prompt_tokens_computed)
        raise RuntimeError("the engine's stream ended without a final chunk")

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TokenChunk]:
        self._ensure_runner()
        turn_id = self.core.submit(request)
        queue: asyncio.Queue[TokenChunk | BaseException] = asyncio.Queue()
        self._queues[turn_id] = queue
        self._poke()
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finish is not None
                yield item
                if finished:
                    return
        finally:
            self._queues.pop(turn_id, None)
            if not finished:  # the caller went away: free the slot
                self.core.cancel(turn_id)
                self._poke()

    async def aclose(self) -> None:
        """Stop the runner (the running step finishes first) and the worker thread."""
        if self._runner is not None and not self._runner.done():
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------ the runner

    def _poke(self) -> None:
        if self._wake is not None and self._runner_loop is not None and not self._runner_loop.is_closed():
            self._runner_loop.call_soon_threadsafe(self._wake.set)

    def _ensure_runner(self) -> None:
        loop = asyncio.get_running_loop()
        if self._runner is not None and not self._runner.done() and self._runner_loop is loop:
            return
        self._runner_loop, self._wake = loop, asyncio.Event()
        self._runner = loop.create_task(self._run(), name="slot-engine")

    async def _gather(self) -> None:
        """After an idle spell: let more requests arrive before the first step, up to ``max_wait_s`` or until
        the waiting ones would fill the slots."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while self.core.waiting_turns() < self.core.config.slots and (left := deadline - loop.time()) > 0:
            await asyncio.sleep(min(left, 0.005))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        idle = True  # nothing ran since the last step that found no work (or since the start)
        while True:
            if not self.core.has_work():
                self._wake.clear()
                if not self.core.has_work():
                    idle = True
                    await self._wake.wait()
                    continue
            if idle:
                await self._gather()
                idle = False
            try:
                events = await loop.run_in_executor(self._executor, self.core.step)
            except Exception as exc:  # a failed step fails the turns in the engine, not the engine
                for turn_id in self.core.abort():
                    queue = self._queues.get(turn_id)
                    if queue is not None:
                        queue.put_nowait(exc)
                continue
            for turn_id, item in events:
                queue = self._queues.get(turn_id)
                if queue is not None:
                    queue.put_nowait(item)
            # let the callers just answered run up to their next request (an episode's next turn) before the
            # next step starts, so requests that follow one another join the same step
            await asyncio.sleep(0)
