"""A ``TokenEngine`` over the plain ``Sampler``: concurrent requests gathered into batched calls, nothing kept.

Requests that arrive while the sampler is busy (or within ``max_wait_s`` of the first one, so a burst of
clients lands in one call) are flushed together: one ``Sampler.generate`` call per group of requests that
share their sampling options (temperature, top-k, top-p, stop ids are one ``SamplingConfig`` per call), each
row with its own PRNG key and token budget. Every call prefills each whole prompt again: there is no reuse
across turns (``session`` is ignored) beyond the sampler's own shared-prefix prefill within one call. That
makes it the baseline the continuous engine is measured against, and an engine the server can use anywhere.

The sampler runs in one worker thread, so the event loop keeps serving while it computes. A request whose
awaiting task is cancelled before its call starts is dropped; one cancelled during its call is computed but
its result discarded (a sampler call cannot be interrupted). Streaming delivers the whole turn as one chunk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax.engine.api import Finish, GenerationRequest, TokenChunk
from rl_jax.sampling import Sampler, SamplingConfig


@dataclass
class SamplerEngineStats:
    """Counters since construction (or ``reset_stats``): sampler calls, rows, tokens, cancellations."""

    calls: int = 0
    rows: int = 0
    prompt_tokens: int = 0
    new_tokens: int = 0
    cancelled: int = 0  # requests whose caller went away before their answer
    seconds: float = 0.0  # in sampler calls, compiles included
    prefill_seconds: float = 0.0  # the calls' prefill stages, compiles included
    decode_seconds: float = 0.0  # the calls' decode stages, compiles included
    prefill_positions: int = 0  # positions the prefill programs computed (bucketed rows x lengths, padding included)
    batch_sizes: list[int] = field(default_factory=list)


@dataclass
class _Pending:
    request: GenerationRequest
    future: asyncio.Future[TokenChunk]


def _options(request: GenerationRequest) -> SamplingConfig:
    """The sampling config a request's group is called with (``max_new_tokens`` is set per call)."""
    return SamplingConfig(temperature=request.temperature, top_k=request.top_k, top_p=request.top_p,
                          stop_token_ids=request.stop_token_ids)


def _key_data(key: Any) -> jax.Array:
    """Raw key data of a typed or legacy uint32 key, so keys of both kinds can be stacked."""
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    return jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key


class SamplerEngine:
    """``TokenEngine`` over ``sampler``; ``context_limit`` is the model's context (prompt plus new tokens).

    ``max_batch`` caps the rows of one call; ``max_wait_s`` is how long the first pending request waits for
    others to join its call when the sampler is idle: 32 HTTP clients' requests arrive over tens of
    milliseconds (each parsed, rendered and tokenized), and a burst split over two calls costs a whole call.
    """

    def __init__(self, sampler: Sampler, *, context_limit: int, max_batch: int = 64, max_wait_s: float = 0.05):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1; got {max_batch}")
        if context_limit < 2:
            raise ValueError(f"context_limit must be >= 2; got {context_limit}")
        self.sampler = sampler
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.stats = SamplerEngineStats()
        self._context_limit = context_limit
        self._pending: list[_Pending] = []
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sampler-engine")

    # ---- TokenEngine -----------------------------------------------------------------------------------

    @property
    def context_limit(self) -> int:
        return self._context_limit

    async def generate(self, request: GenerationRequest) -> TokenChunk:
        if len(request.prompt) >= self._context_limit:
            raise ValueError(f"prompt of {len(request.prompt)} tokens leaves no room in the context "
                             f"({self._context_limit})")
        self._ensure_loop()
        assert self._wake is not None
        future: asyncio.Future[TokenChunk] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(request, future))
        self._wake.set()
        try:
            return await future
        except asyncio.CancelledError:
            self.stats.cancelled += 1
            future.cancel()
            raise

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TokenChunk]:
        yield await self.generate(request)

    def end_session(self, session: str) -> None:
        """Nothing is kept between turns."""

    # ---- beyond the protocol -----------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Requests accepted and not yet answered or cancelled."""
        return sum(not p.future.done() for p in self._pending)

    def load_state(self, state: Any) -> None:
        """New weights for the next calls (the sampler's compiled programs are reused)."""
        self.sampler.load_state(state)

    def reset_stats(self) -> SamplerEngineStats:
        stats, self.stats = self.stats, SamplerEngineStats()
        return stats

    async def aclose(self) -> None:
        """Stop the flush loop; requests still waiting fail."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        for pending in self._pending:
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("the engine stopped"))
        self._pending.clear()
        self._executor.shutdown(wait=True)

    # ---- the flush loop ------------------------------------------------------------------------------------

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._wake = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(self._loop(), name="sampler-engine")

    async def _loop(self) -> None:
        assert self._wake is not None
        while True:
            self._pending = [p for p in self._pending if not p.future.done()]
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            # a burst of clients arrives over a few milliseconds: give it one call rather than one each
            deadline = time.monotonic() + self.max_wait_s
            while len(self._pending) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), left)
            live = [p for p in self._pending if not p.future.done()]
            batch, self._pending = live[: self.max_batch], live[self.max_batch :]
            if not batch:
                continue
            requests = [p.request for p in batch]
            try:
                results: Sequence[TokenChunk | BaseException] = await asyncio.wrap_future(
                    self._executor.submit(self._run, requests))
            except Exception as exc:  # a failed call fails its requests, not the loop
                results = [exc] * len(batch)
            for pending, result in zip(batch, results, strict=True):
                if pending.future.done():  # its caller went away during the call
                    continue
                if isinstance(result, BaseException):
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result(result)

    # ---- sampler calls (the worker thread) -------------------------------------------------------------

    def _run(self, requests: list[GenerationRequest]) -> list[TokenChunk]:
        """One sampler call per group of equal sampling options and fitting budgets; results in order.

        A call's token budget is its largest row's and prompt plus budget must fit the context, so rows near
        the end of the context (whose budget is smaller) go to a call of their own rather than cut everyone's
        turn short."""
        limits = [min(r.max_new_tokens, self._context_limit - len(r.prompt)) for r in requests]
        out: list[TokenChunk | None] = [None] * len(requests)
        groups: dict[SamplingConfig, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(_options(request), []).append(i)
        for options, rows in groups.items():
            left = rows
            while left:
                budget = max(limits[i] for i in left)
                fits = [i for i in left if len(requests[i].prompt) + budget <= self._context_limit]
                chunks = self._call(options, budget, [requests[i] for i in fits], [limits[i] for i in fits])
                for i, chunk in zip(fits, chunks, strict=True):
                    out[i] = chunk
                taken = set(fits)
                left = [i for i in left if i not in taken]
        return [chunk for chunk in out if chunk is not None]

    def _call(self, options: SamplingConfig, budget: int, requests: list[GenerationRequest],
              limits: list[int]) -> list[TokenChunk]:
        start = time.perf_counter()
        config = replace(options, max_new_tokens=budget)
        row_keys = None
        if not config.greedy:
            row_keys = jax.random.wrap_key_data(jnp.stack([_key_data(r.key) for r in requests]))
        prompts = [list(r.prompt) for r in requests]
        plan = self.sampler.plan(prompts, config)
        stages = dict(self.sampler.stage_seconds)
        result = self.sampler.generate(prompts, config, row_keys=row_keys)
        chunks = []
        for i, (request, limit) in enumerate(zip(requests, limits, strict=True)):
            n = min(int(result.lengths[i]), limit)
            tokens = tuple(int(t) for t in result.tokens[i, :n])
            logprobs = tuple(float(x) for x in result.logprobs[i, :n].astype(np.float64))
            finish: Finish
            if tokens and tokens[-1] in config.stop_token_ids:
                finish = "stop"
            elif n >= request.max_new_tokens:
                finish = "length"
            else:
                finish = "context"
            chunks.append(TokenChunk(tokens, logprobs, finish, prompt_tokens_computed=len(request.prompt)))
        s = self.stats
        s.calls += 1
        s.rows += len(requests)
        s.prompt_tokens += sum(len(r.prompt) for r in requests)
        s.new_tokens += sum(len(c.tokens) for c in chunks)
        s.seconds += time.perf_counter() - start
        s.prefill_seconds += self.sampler.stage_seconds.get("prefill", 0.0) - stages.get("prefill", 0.0)
        s.decode_seconds += self.sampler.stage_seconds.get("decode", 0.0) - stages.get("decode", 0.0)
        # a shared prefix is computed once per call (at one row; on a mesh, one per batch shard)
        s.prefill_positions += plan.prefix_slots + plan.batch * (plan.length - plan.prefix_slots)
        s.batch_sizes.append(len(requests))
        return chunks
