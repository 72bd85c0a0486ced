"""Batched generation for many episodes at once: episodes await one turn each, the generator runs them together.

Each episode calls ``await generator.generate(prompt_ids, max_new_tokens, key)``. The generator's loop gathers
the pending requests and flushes them as one ``Sampler.generate`` call (one compiled prefill and decode per
bucket; a shared prefix such as the system prompt and tools prefilled once) as soon as every active episode is
waiting, or ``max_wait_s`` after the first request arrived (episodes busy in slow tool calls do not hold the
others back for long). The sampler runs in a worker thread, so the event loop keeps serving MCP tool calls
of the episodes that are not generating.

Each request carries its own PRNG key (``row_keys``), so a row's tokens do not depend on which other requests
share its batch: with the same keys a run is reproducible whatever the timing of the flushes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax.rollout.types import Generation
from rl_jax.sampling import Sampler, SamplingConfig


@dataclass
class _Request:
    prompt: tuple[int, ...]
    max_new_tokens: int
    key: Any
    future: asyncio.Future[Generation]


@dataclass
class GeneratorStats:
    """Counters since the last ``reset``: calls, rows, tokens, and seconds in prefill+decode (incl. compiles)."""

    calls: int = 0
    rows: int = 0
    prompt_tokens: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)


class BatchedGenerator:
    """The ``Generator`` over a ``Sampler``; ``async with generator.running(): ...`` runs its flush loop.

    ``sampling.max_new_tokens`` is the per-turn ceiling; each request may ask for fewer (an episode near the
    end of its context). ``context_limit`` is the model's context: a request whose prompt plus new tokens
    would not fit is cut to what fits.
    """

    def __init__(
        self,
        sampler: Sampler,
        sampling: SamplingConfig,
        *,
        context_limit: int,
        max_batch: int = 64,
        max_wait_s: float = 2.0,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1; got {max_batch}")
        self.sampler = sampler
        self.sampling = sampling
        self.context_limit = context_limit
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.progress = progress
        self.stats = GeneratorStats()
        self._pending: list[_Request] = []
        self._active = 0
        self._wake: asyncio.Event | None = None
        self._first_pending_at: float | None = None

    # ---- episodes tell the generator they exist, so it knows when everyone is waiting ------------------

    @contextlib.contextmanager
    def episode(self) -> Any:
        """Held by an episode while it may still generate: the flush waits for active episodes."""
        self._active += 1
        try:
            yield
        finally:
            self._active -= 1
            self._poke()

    async def generate(self, prompt: Sequence[int], max_new_tokens: int, key: Any) -> Generation:
        if self._wake is None:
            raise RuntimeError("BatchedGenerator.generate outside 'async with generator.running()'")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
        if len(prompt) + 1 > self.context_limit:
            raise ValueError(f"prompt of {len(prompt)} tokens leaves no room in the context ({self.context_limit})")
        future: asyncio.Future[Generation] = asyncio.get_running_loop().create_future()
        self._pending.append(_Request(tuple(int(t) for t in prompt), max_new_tokens, key, future))
        if self._first_pending_at is None:
            self._first_pending_at = time.monotonic()
        self._poke()
        return await future

    def load_state(self, state: Any) -> None:
        """New weights for the next calls (compiled programs are reused)."""
        self.sampler.load_state(state)

    def reset_stats(self) -> GeneratorStats:
        stats, self.stats = self.stats, GeneratorStats()
        return stats

    # ---- the flush loop ------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[BatchedGenerator]:
        self._wake = asyncio.Event()
        task = asyncio.create_task(self._loop(), name="batched-generator")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            for request in self._pending:  # nobody will answer these: fail them rather than hang their episodes
                if not request.future.done():
                    request.future.set_exception(RuntimeError("the generator stopped"))
            self._pending.clear()
            self._wake = None

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _ready(self) -> bool:
        if not self._pending:
            return False
        if len(self._pending) >= max(self._active, 1) or len(self._pending) >= self.max_batch:
            return True
        return self._first_pending_at is not None and time.monotonic() - self._first_pending_at >= self.max_wait_s

    async def _loop(self) -> None:
        assert self._wake is not None
        while True:
            if not self._ready():
                self._wake.clear()
                timeout = None
                if self._first_pending_at is not None:
                    timeout = max(0.0, self.max_wait_s - (time.monotonic() - self._first_pending_at))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            self._first_pending_at = time.monotonic() if self._pending else None
            try:
                results = await asyncio.to_thread(self._run, batch)
            except Exception as exc:  # a failed call fails its requests, not the loop
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)
                continue
            for request, result in zip(batch, results, strict=True):
                if not request.future.done():  # an episode that timed out has cancelled its future
                    request.future.set_result(result)

    def _run(self, batch: list[_Request]) -> list[Generation]:
        """One sampler call for ``batch`` (a worker thread): the longest request's budget, cut to the context."""
        start = time.perf_counter()
        longest = max(len(r.prompt) for r in batch)
        budget = min(max(r.max_new_tokens for r in batch), self.context_limit - longest,
                     self.sampling.max_new_tokens)
        config = _with_max_new(self.sampling, max(budget, 1))
        row_keys = None if config.greedy else jnp.stack([jax.random.key_data(r.key) for r in batch])
        if row_keys is not None:
            row_keys = jax.random.wrap_key_data(row_keys)
        out = self.sampler.generate([list(r.prompt) for r in batch], config, row_keys=row_keys)
        results = []
        for i, request in enumerate(batch):
            n = int(out.lengths[i])
            limit = min(request.max_new_tokens, self.context_limit - len(request.prompt))
            tokens = out.tokens[i, :n].tolist()
            logprobs = out.logprobs[i, :n].astype(np.float64).tolist()
            stopped = bool(n) and tokens[-1] in config.stop_token_ids
            if n > limit:  # the batch's budget was larger than this request's: cut it where it would have been
                tokens, logprobs, stopped = tokens[:limit], logprobs[:limit], False
            results.append(Generation(tuple(tokens), tuple(logprobs), stopped))
        s = self.stats
        s.calls += 1
        s.rows += len(batch)
        s.prompt_tokens += sum(len(r.prompt) for r in batch)
        s.new_tokens += sum(len(r.tokens) for r in results)
        s.seconds += time.perf_counter() - start
        s.batch_sizes.append(len(batch))
        if self.progress is not None:
            self.progress(f"generated {len(batch)} turns ({longest} prompt tokens at most, "
                          f"{sum(len(r.tokens) for r in results)} new) in {time.perf_counter() - start:.1f} s")
        return results


def _with_max_new(config: SamplingConfig, max_new_tokens: int) -> SamplingConfig:
    import dataclasses

    return dataclasses.replace(config, max_new_tokens=max_new_tokens)
