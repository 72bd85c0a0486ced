"""Batched generation for many episodes at once: episodes await one turn each, the generator runs them together.

Each episode calls ``await generator.generate(prompt_ids, max_new_tokens, key)``. The generator's loop gathers
the pending requests and flushes them as one ``Sampler.generate`` call (one compiled prefill and decode per
bucket; a shared prefix such as the system prompt and tools prefilled once) as soon as every active episode is
waiting, or ``max_wait_s`` after the first request arrived (episodes busy in slow tool calls do not hold the
others back for long). The sampler runs in a worker thread, so the event loop keeps serving MCP tool calls
of the episodes that are not generating.

Each request carries its own PRNG key (``row_keys``) and keeps its own token budget, so which other requests
share its batch changes a row's tokens only through the float rounding of the batch's shapes; flushes that
gather the same requests (every episode waiting, the usual case with fast tools) give the same results, whatever
the order the requests arrived in (a flush's rows are ordered by their keys).

Multi-host (``jax.process_count() > 1``): the sampler's programs span every process's devices, so every process
must enter each call with the same prompts. Each process runs its own episodes and, in rounds, gathers every
process's ready requests (``process_allgather``); all processes then run the union as one call and each keeps
its own rows. A process whose episodes are done keeps joining rounds, with nothing to add, until every process
is done (``running`` exits only then).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

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
    # the generating model's own stages (the sampler's or the engine's counters), compiles included; filled by
    # the generator's ``reset_stats``
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0


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
        collective: bool | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1; got {max_batch}")
        self.sampler = sampler
        self.sampling = sampling
        self.context_limit = context_limit
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.progress = progress
        # rounds across processes (module docstring); None: whenever several processes share the devices
        self.collective = jax.process_count() > 1 if collective is None else collective
        self.stats = GeneratorStats()
        self._stages_at_reset = dict(sampler.stage_seconds)  # the sampler's stage counters at the last reset
        self._pending: list[_Request] = []
        self._active = 0
        self._wake: asyncio.Event | None = None
        self._first_pending_at: float | None = None
        self._closing = False  # running() is exiting: this process has no more requests to make
        self._failed: BaseException | None = None  # the multi-host rounds failed: nothing more is answered
        # the sampler call in flight, in its worker thread: waited for before running() returns, so it never
        # overlaps what the caller does next (a train step donating the parameters it reads)
        self._inflight: concurrent.futures.Future[Any] | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="batched-generator")

    # ---- episodes tell the generator they exist, so it knows when everyone is waiting ------------------

    @contextlib.contextmanager
    def episode(self) -> Iterator[Callable[[], None]]:
        """Held by an episode from its start; the flush waits for active episodes. Yields ``done``: call it when
        the episode will generate nothing more (before its grading), so flushes stop waiting for it."""
        self._active += 1
        finished = False

        def done() -> None:
            nonlocal finished
            if not finished:
                finished = True
                self._active -= 1
                self._poke()

        try:
            yield done
        finally:
            done()

    async def generate(self, prompt: Sequence[int], max_new_tokens: int, key: Any) -> Generation:
        """Up to ``max_new_tokens`` (at most ``sampling.max_new_tokens``) tokens after ``prompt``."""
        if self._wake is None:
            raise RuntimeError("BatchedGenerator.generate outside 'async with generator.running()'")
        if self._failed is not None:
            raise RuntimeError(f"the generator failed: {self._failed!r}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
        if len(prompt) + 1 > self.context_limit:
            raise ValueError(f"prompt of {len(prompt)} tokens leaves no room in the context ({self.context_limit})")
        future: asyncio.Future[Generation] = asyncio.get_running_loop().create_future()
        limit = min(max_new_tokens, self.sampling.max_new_tokens)
        self._pending.append(_Request(tuple(int(t) for t in prompt), limit, key, future))
        if self._first_pending_at is None:
            self._first_pending_at = time.monotonic()
        self._poke()
        return await future

    def load_state(self, state: Any) -> None:
        """New weights for the next calls (compiled programs are reused)."""
        self.sampler.load_state(state)

    def reset_stats(self) -> GeneratorStats:
        stats, self.stats = self.stats, GeneratorStats()
        stages, before = dict(self.sampler.stage_seconds), self._stages_at_reset
        stats.prefill_seconds = stages.get("prefill", 0.0) - before.get("prefill", 0.0)
        stats.decode_seconds = stages.get("decode", 0.0) - before.get("decode", 0.0)
        self._stages_at_reset = stages
        return stats

    # ---- the flush loop ------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[BatchedGenerator]:
        self._wake = asyncio.Event()
        self._closing = False
        task = asyncio.create_task(self._rounds() if self.collective else self._loop(), name="batched-generator")
        try:
            yield self
            if self.collective:  # the other processes may still need this one in their calls
                self._closing = True
                self._poke()
                await task
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if self._inflight is not None and not self._inflight.done():  # bounded by one sampler call
                with contextlib.suppress(Exception):
                    await asyncio.wrap_future(self._inflight)
            self._fail_pending(RuntimeError("the generator stopped"))
            self._wake = None

    def _fail_pending(self, exc: BaseException) -> None:
        """Nobody will answer these: fail them rather than leave their episodes waiting out their time."""
        for request in self._pending:
            if not request.future.done():
                request.future.set_exception(exc)
        self._pending.clear()

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a worker thread, remembered as in flight until it returns."""
        self._inflight = self._executor.submit(fn, *args)
        return await asyncio.wrap_future(self._inflight)

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _ready(self) -> bool:
        if not self._pending:
            return False
        if len(self._pending) >= max(self._active, 1) or len(self._pending) >= self.max_batch:
            return True
        return self._first_pending_at is not None and time.monotonic() - self._first_pending_at >= self.max_wait_s

    async def _wait_until_ready(self, also: Callable[[], bool] = lambda: False, by: float | None = None) -> None:
        """Until a flush is due, ``also()`` holds, or the monotonic time ``by`` passes."""
        assert self._wake is not None
        while not (self._ready() or also() or (by is not None and time.monotonic() >= by)):
            self._wake.clear()
            wakes = [] if by is None else [by]
            if self._first_pending_at is not None:
                wakes.append(self._first_pending_at + self.max_wait_s)
            timeout = max(0.0, min(wakes) - time.monotonic()) if wakes else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _take(self) -> list[_Request]:
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        self._first_pending_at = time.monotonic() if self._pending else None
        return batch

    async def _loop(self) -> None:
        while True:
            await self._wait_until_ready()
            batch = self._take()
            try:
                results = await self._in_thread(self._run, batch)
            except Exception as exc:  # a failed call fails its requests, not the loop
                results = [exc] * len(batch)
            self._answer(batch, results)

    async def _rounds(self) -> None:
        """Multi-host: one collective round per flush, until every process has closed (module docstring)."""
        while True:
            # join a round when this process's episodes are all waiting, it has none left to wait for, or a
            # round is due anyway (max_wait_s after the last): the other processes' requests must not wait on
            # this one's episodes that are busy in tool calls or grading
            await self._wait_until_ready(also=lambda: self._closing or (self._active == 0 and not self._pending),
                                         by=time.monotonic() + self.max_wait_s)
            batch = self._take() if self._pending else []
            closing = self._closing and not batch and not self._pending
            try:
                results, everyone_closed = await self._in_thread(self._run_round, batch, closing)
            except Exception as exc:
                # a failed collective leaves the processes out of step: answer nothing more, so this process's
                # episodes end now (as errors) instead of waiting out their time
                self._failed = exc
                self._answer(batch, [exc] * len(batch))
                self._fail_pending(exc)
                raise
            self._answer(batch, results)
            if everyone_closed:
                return
            if not batch:
                await asyncio.sleep(0.01)  # nobody here is waiting: do not spin the other processes' rounds

    @staticmethod
    def _answer(batch: list[_Request], results: Sequence[Generation | BaseException]) -> None:
        for request, result in zip(batch, results, strict=True):
            if request.future.done():  # an episode that timed out has cancelled its future
                continue
            if isinstance(result, BaseException):
                request.future.set_exception(result)
            else:
                request.future.set_result(result)

    def _run_round(self, batch: list[_Request], closing: bool) -> tuple[list[Generation], bool]:
        """Gather every process's requests, run their union on all processes, keep this process's rows."""
        n, me = jax.process_count(), jax.process_index()
        longest = max((len(r.prompt) for r in batch), default=0)
        header = np.array([len(batch), longest, int(closing)], np.int64)
        headers = np.asarray(multihost_utils.process_allgather(header)).reshape(n, 3)
        if headers[:, 2].all():
            return [], True
        rows, width = int(headers[:, 0].max()), int(headers[:, 1].max())
        if rows == 0:
            return [], False
        key_width = self._key_width()
        table = np.zeros((rows, width + 3 + key_width), np.int64)  # prompt, length, max_new, live, key data
        for i, r in enumerate(batch):
            table[i, : len(r.prompt)] = r.prompt
            table[i, width : width + 3] = (len(r.prompt), r.max_new_tokens, 1)
            table[i, width + 3 :] = self._key_data(r.key)
        tables = np.asarray(multihost_utils.process_allgather(table)).reshape(n, rows, -1)
        union: list[_Request] = []
        owners: list[tuple[int, int]] = []
        for p in range(n):
            for i in range(rows):
                length, max_new, live = (int(x) for x in tables[p, i, width : width + 3])
                if live:
                    key = self._wrap_key(tables[p, i, width + 3 :])
                    union.append(_Request(tuple(int(t) for t in tables[p, i, :length]), max_new, key, None))  # type: ignore[arg-type]
                    owners.append((p, i))
        results = self._run(union)
        mine = {i: res for (p, i), res in zip(owners, results, strict=True) if p == me}
        return [mine[i] for i in range(len(batch))], False

    def _key_width(self) -> int:
        return int(np.prod(jax.random.key_data(jax.random.key(0)).shape))

    def _key_data(self, key: Any) -> np.ndarray:
        if key is None:
            return np.zeros(self._key_width(), np.int64)
        return np.asarray(jax.random.key_data(key)).reshape(-1).astype(np.int64)

    def _wrap_key(self, data: np.ndarray) -> Any:
        shape = jax.random.key_data(jax.random.key(0)).shape
        return jax.random.wrap_key_data(jnp.asarray(data.astype(np.uint32).reshape(shape)))

    def _run(self, requests: list[_Request]) -> list[Generation]:
        """Sampler calls for ``requests`` (a worker thread); results in the order of ``requests``.

        Every row gets its own whole budget, ``min(its max_new_tokens, context - its prompt)``: a call's token
        budget is its largest row's, and prompt plus budget must fit the context, so rows near the end of the
        context (whose budget is smaller) go to a call of their own rather than cut everyone's turn short.
        Within a call rows are ordered by key, so a batch's layout does not depend on arrival order."""
        limit = [min(r.max_new_tokens, self.context_limit - len(r.prompt)) for r in requests]
        out: list[Generation] = [None] * len(requests)  # type: ignore[list-item]
        left = sorted(range(len(requests)), key=lambda i: (self._key_data(requests[i].key).tobytes(), i))
        while left:
            budget = max(limit[i] for i in left)  # its row fits by the definition of its limit: never empty
            fits = [i for i in left if len(requests[i].prompt) + budget <= self.context_limit]
            for i, result in zip(fits, self._run_ordered([requests[i] for i in fits], budget,
                                                         [limit[i] for i in fits]), strict=True):
                out[i] = result
            left = [i for i in left if i not in set(fits)]
        return out

    def _run_ordered(self, batch: list[_Request], budget: int, limits: Sequence[int]) -> list[Generation]:
        """One sampler call: ``budget`` new tokens at most, row ``i`` kept to ``limits[i]``."""
        start = time.perf_counter()
        longest = max(len(r.prompt) for r in batch)
        config = _with_max_new(self.sampling, max(budget, 1))
        row_keys = None if config.greedy else jnp.stack([jax.random.key_data(r.key) for r in batch])
        if row_keys is not None:
            row_keys = jax.random.wrap_key_data(row_keys)
        out = self.sampler.generate([list(r.prompt) for r in batch], config, row_keys=row_keys)
        results = []
        for i, limit in enumerate(limits):
            n = int(out.lengths[i])
            tokens = out.tokens[i, :n].tolist()
            logprobs = out.logprobs[i, :n].astype(np.float64).tolist()
            stopped = bool(n) and tokens[-1] in config.stop_token_ids
            if n > limit:  # the call's budget was larger than this row's: cut it where it would have been
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
