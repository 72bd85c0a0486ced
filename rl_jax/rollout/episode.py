"""One episode, token-exact: the policy's sampled ids kept as sampled, tool results rendered by the chat template.

    prompt (template) | turn 1 (sampled, mask 1) | tool results (template, mask 0) | turn 2 (sampled) | ...

The episode opens through the environment, reaches its tools over MCP (in process or streamable HTTP), and ends
with a grade. Nothing an episode meets is allowed to crash or hang the run: every await has a timeout, and a
fault (a tool server that dies or stalls, a judge that times out, a start that fails, a bug) ends the episode
with its reason in ``stop_reason``; the pool decides what a faulty episode is worth (``RolloutConfig.on_fault``).
A malformed tool call is not a fault: the policy reads the parser's error as the tool's answer and goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import ssl
import time
import traceback
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import jax

from rl_jax.chat import (
    ChatFormat,
    TokenTranscript,
    append_messages,
    append_sampled,
    start_transcript,
    tool_result,
)
from rl_jax.rollout.types import (
    FAULT_REASONS,
    Environment,
    EpisodeRecord,
    EpisodeStart,
    Generator,
    Grade,
    McpTarget,
    StopReason,
    ToolCallRecord,
)

OnFault = Literal["drop", "zero_reward"]


@dataclass(frozen=True)
class RolloutConfig:
    """How episodes are run. Turn limits, the tool list and the prompt come from the environment's episode
    definition, a turn's token limit from the sampler's ``SamplingConfig.max_new_tokens``; these are the
    policy side's other limits and the pool's fault handling."""

    group_size: int = 4               # rollouts per task (GRPO's group)
    context_limit: int | None = None  # tokens; None: the model's max_position_embeddings
    episode_timeout_s: float = 900.0  # wall time of one episode, generation included
    start_timeout_s: float = 60.0
    tool_timeout_s: float = 60.0
    grade_timeout_s: float = 300.0
    max_concurrent: int = 256         # episodes in flight
    max_wait_s: float = 2.0           # the generator's flush wait (rl_jax.rollout.generator)
    on_fault: OnFault = "drop"        # drop: no gradient, not in its group's statistics; zero_reward: reward 0

    def __post_init__(self) -> None:
        if self.group_size < 1 or self.max_concurrent < 1:
            raise ValueError("group_size and max_concurrent must be >= 1")
        if self.on_fault not in ("drop", "zero_reward"):
            raise ValueError(f"on_fault must be 'drop' or 'zero_reward'; got {self.on_fault!r}")
        for name in ("episode_timeout_s", "start_timeout_s", "tool_timeout_s", "grade_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")


@dataclass(frozen=True)
class Rollout:
    """A finished episode: what the trainer trains on and what the metrics count.

    ``ids``, ``loss_mask`` and ``logprobs`` are aligned and end at the last sampled token (what follows it
    predicts nothing the trainer uses); ``logprobs`` are the sampler's, 0 where the mask is 0.
    """

    task_id: str
    episode_id: str
    ids: tuple[int, ...]
    loss_mask: tuple[int, ...]
    logprobs: tuple[float, ...]
    record: EpisodeRecord
    reward: float
    passed: bool
    prompt_tokens: int
    parse_errors: int = 0
    error: str = ""                 # what went wrong, for a fault
    grade_details: Mapping[str, Any] = field(default_factory=dict)
    seconds: Mapping[str, float] = field(default_factory=dict)  # generate / tools / grade / total

    @property
    def stop_reason(self) -> StopReason:
        return self.record.stop_reason

    @property
    def fault(self) -> bool:
        return self.stop_reason in FAULT_REASONS

    @property
    def sampled_tokens(self) -> int:
        return sum(self.loss_mask)

    @property
    def tool_errors(self) -> int:
        return sum(c.is_error for c in self.record.tool_calls)


class _Stop(Exception):
    def __init__(self, reason: StopReason, message: str = ""):
        super().__init__(message or reason)
        self.reason = reason


class EpisodeTools:
    """One episode's tools over a connected MCP SDK client: every call carries the episode's ``meta``."""

    __slots__ = ("client", "meta")

    def __init__(self, client: Any, meta: Mapping[str, Any] | None = None) -> None:
        self.client = client
        self.meta = dict(meta or {})

    async def call_tool(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        # a fresh dict a call: the SDK stamps its protocol fields into the request's _meta
        return await self.client.call_tool(name, arguments, meta=dict(self.meta) if self.meta else None)


@contextlib.asynccontextmanager
async def mcp_client(target: McpTarget) -> AsyncIterator[EpisodeTools]:
    """A connected MCP SDK client of the episode's own, for its tools: the memory transport or streamable HTTP.
    (``McpClients`` shares one client among the episodes of an in-process server instead.)"""
    from mcp import Client

    if target.server is not None:
        async with Client(target.server) as client:
            yield EpisodeTools(client, target.meta)
        return
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    async with httpx2.AsyncClient(headers=dict(target.headers), timeout=60, verify=_ssl_context()) as http, \
            Client(streamable_http_client(target.url, http_client=http)) as client:
        yield EpisodeTools(client, target.meta)


class McpClients:
    """MCP clients shared by the episodes in flight: one connected SDK client per in-process server object,
    opened on its first use and closed with this object (``async with McpClients() as clients``).

    A client connects once and lists the tools once (the SDK lists them on a client's first call, to check
    results against the tools' output schemas, walking every input schema), instead of once per episode:
    2.5 ms of CPU an episode with one client each (bench_rollout, BUILD.md). The episodes of a shared server
    are told apart by their targets' ``meta``, which each call carries, so the server keeps them apart, not
    the connection. The client runs in a task of its own (its task group must be entered and left by one
    task); a call runs in the calling episode's task, under that episode's timeouts. An HTTP target gets a
    client of its own per episode (its headers name the episode), as with ``mcp_client``.
    """

    def __init__(self, connect_timeout_s: float = 60.0, close_timeout_s: float = 10.0) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.close_timeout_s = close_timeout_s
        # id(server) -> (server, the client once connected, the owner's stop signal, the owner task)
        self._clients: dict[int, tuple[Any, asyncio.Future[Any], asyncio.Event, asyncio.Task[None]]] = {}
        self._retired: list[asyncio.Task[None]] = []
        self._closed = False

    async def __aenter__(self) -> McpClients:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @contextlib.asynccontextmanager
    async def session(self, target: McpTarget) -> AsyncIterator[EpisodeTools]:
        """The episode's tools: over the server's shared client, or (HTTP) over a client of its own."""
        if target.server is None:
            async with mcp_client(target) as tools:
                yield tools
            return
        yield EpisodeTools(await self._client(target.server), target.meta)

    async def _client(self, server: Any) -> Any:
        if self._closed:
            raise RuntimeError("McpClients is closed")
        entry = self._clients.get(id(server))
        if entry is not None and entry[3].done():  # its connection ended (a failed connect, a server fault)
            del self._clients[id(server)]
            self._retired.append(entry[3])
            entry = None
        if entry is None:
            ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            stop = asyncio.Event()
            task = asyncio.create_task(self._own(server, ready, stop), name="mcp-shared-client")
            entry = self._clients[id(server)] = (server, ready, stop, task)
        # shielded: an episode that times out waiting must not cancel the connection the others wait for
        try:
            return await asyncio.wait_for(asyncio.shield(entry[1]), self.connect_timeout_s)
        except TimeoutError:
            raise ConnectionError(f"the MCP client did not connect in {self.connect_timeout_s:g} s") from None

    @staticmethod
    async def _own(server: Any, ready: asyncio.Future[Any], stop: asyncio.Event) -> None:
        from mcp import Client

        try:
            async with Client(server) as client:
                ready.set_result(client)
                await stop.wait()
        except BaseException as exc:  # reported to whoever waits for the connection; the task ends quietly
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else RuntimeError(f"MCP client: {exc!r}"))
            if not isinstance(exc, Exception):
                raise

    async def aclose(self) -> None:
        """Close every shared client (each in its own task), within ``close_timeout_s``."""
        self._closed = True
        entries, self._clients = list(self._clients.values()), {}
        for _, _, stop, _ in entries:
            stop.set()
        tasks = [*(e[3] for e in entries), *self._retired]
        self._retired = []
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.close_timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context per process: building one (loading the CA bundle) cost 35-53 ms of CPU per episode's
    client, two thirds of an HTTP episode's client-side CPU (bench_rollout, BUILD.md)."""
    return ssl.create_default_context()


def _text_of(result: Any) -> str:
    return "\n".join(p for p in (getattr(c, "text", "") for c in (result.content or [])) if p)


def _tool_message(text: str, name: str, call_id: str | None, limit: int) -> Any:
    if len(text) > limit:
        text = text[:limit] + f"\n[result cut: {len(text) - limit} more characters; narrow the query or paginate]"
    return tool_result(text, tool_call_id=call_id, name=name)


async def run_episode(
    env: Environment,
    generator: Generator,
    fmt: ChatFormat,
    task_id: str,
    episode_id: str,
    cfg: RolloutConfig,
    key: jax.Array,
    context_limit: int,
    done_generating: Callable[[], None] | None = None,
    clients: McpClients | None = None,
) -> Rollout:
    """Run one episode to its end and grade it; never raises (faults are in the result's ``stop_reason``).

    ``done_generating`` is called once the episode will ask the generator for nothing more (before grading),
    so batched generation stops waiting for it. ``clients``: MCP clients shared with other episodes (see
    ``McpClients``); without, the episode connects a client of its own."""
    started = time.monotonic()
    deadline = started + cfg.episode_timeout_s
    seconds = {"generate": 0.0, "tools": 0.0, "grade": 0.0}
    calls: list[ToolCallRecord] = []
    transcript: TokenTranscript | None = None
    logprobs: list[float] = []
    turns, parse_errors, final, reason, error = 0, 0, "", "final", ""

    def left(limit: float) -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Stop("wall_time", f"episode over its {cfg.episode_timeout_s:g} s limit")
        return min(limit, remaining)

    try:
        try:
            start: EpisodeStart = await asyncio.wait_for(env.start(task_id, episode_id), left(cfg.start_timeout_s))
        except _Stop:
            raise
        except Exception as exc:
            raise _Stop("start_failed", f"{type(exc).__name__}: {exc}") from exc
        max_turns = start.max_turns or 1_000_000
        result_chars = start.tool_result_chars or 1_000_000
        transcript = start_transcript(fmt, start.messages, start.tools)
        logprobs = [0.0] * len(transcript.ids)
        known = {t["function"]["name"] for t in start.tools if "function" in t}
        reason = "max_turns"
        loop = asyncio.get_running_loop()
        try:
            # the whole session, its connection and close included, within the episode's time
            async with asyncio.timeout_at(loop.time() + left(cfg.episode_timeout_s)), \
                    (clients.session(start.mcp) if clients is not None else mcp_client(start.mcp)) as client:
                try:
                    while turns < max_turns:
                        room = context_limit - len(transcript.ids)
                        if room < 2:
                            reason = "context"
                            break
                        t0 = time.monotonic()
                        timeout = left(cfg.episode_timeout_s)
                        try:
                            generated = await asyncio.wait_for(generator.generate(
                                transcript.ids, room, jax.random.fold_in(key, turns)), timeout)
                        except TimeoutError:
                            raise
                        except Exception as exc:
                            raise _Stop("error", f"generation failed: {type(exc).__name__}: {exc}") from exc
                        seconds["generate"] += time.monotonic() - t0
                        turns += 1
                        transcript, parsed = append_sampled(fmt, transcript, generated.tokens)
                        logprobs += list(generated.logprobs)
                        if not parsed.calls and not parsed.errors:
                            # an answer cut at the token limit is still the answer, graded as it stands
                            final, reason = parsed.content, "final" if generated.stopped else "length"
                            break
                        final = parsed.content
                        replies = []
                        parse_errors += len(parsed.errors)
                        for problem in parsed.errors:
                            replies.append(_tool_message(f"Error: {problem.message}", "tool_call", None,
                                                         result_chars))
                        t0 = time.monotonic()
                        for call in parsed.calls:
                            args = dict(call.arguments)
                            if call.name not in known:
                                text, data, is_error = f"Error: unknown tool {call.name!r}", None, True
                            else:
                                timeout = left(cfg.tool_timeout_s)  # before the call: an expired episode makes none
                                try:
                                    result = await asyncio.wait_for(client.call_tool(call.name, args), timeout)
                                except Exception as exc:
                                    raise _Stop("tool_server", f"{call.name}: {type(exc).__name__}: {exc}") from exc
                                text, data = _text_of(result), result.structured_content
                                is_error = bool(result.is_error)
                                if data is None and not is_error:
                                    with contextlib.suppress(ValueError):
                                        data = json.loads(text)
                            calls.append(ToolCallRecord(call.name, args, data if data is not None else text, is_error))
                            replies.append(_tool_message(text, call.name, call.id, result_chars))
                        seconds["tools"] += time.monotonic() - t0
                        if turns >= max_turns:
                            break  # the last turn's results would be read by nobody
                        transcript = append_messages(fmt, transcript, replies)
                        logprobs += [0.0] * (len(transcript.ids) - len(logprobs))
                finally:
                    if done_generating is not None:
                        done_generating()  # the generator stops waiting for this episode
                # classified here, before the MCP client's task group wraps what escapes it in a group
                # (outside, a timeout or a bug would read as the tool server's failure)
        except _Stop:
            raise
        except TimeoutError:
            raise _Stop("wall_time", f"episode over its {cfg.episode_timeout_s:g} s limit") from None
        except BaseExceptionGroup as group:  # anyio wraps what escapes the MCP client's task group
            leaves = _leaves(group)
            stop = next((e for e in leaves if isinstance(e, _Stop)), None)
            if stop is None and any(isinstance(e, TimeoutError) for e in leaves):
                stop = _Stop("wall_time", f"episode over its {cfg.episode_timeout_s:g} s limit")
            raise stop or _Stop("tool_server", f"MCP session: {leaves[0]!r}") from group
        except Exception as exc:  # the session itself: connecting, its handshake, closing
            raise _Stop("tool_server", f"MCP session: {type(exc).__name__}: {exc}") from exc
    except _Stop as stop:
        reason, error = stop.reason, str(stop)
    except TimeoutError:
        reason, error = "wall_time", f"episode over its {cfg.episode_timeout_s:g} s limit"
    except Exception as exc:  # a bug: recorded, never raised into the run
        reason, error = "error", "".join(traceback.format_exception_only(exc)).strip()

    record = EpisodeRecord(task_id, tuple(calls), final, turns, reason,
                           tuple(m.to_dict() for m in transcript.messages) if transcript else ())
    reward, passed, details = 0.0, False, {}
    if reason not in FAULT_REASONS:
        t0 = time.monotonic()
        try:
            grade: Grade = await asyncio.wait_for(env.grade(episode_id, record), cfg.grade_timeout_s)
            reward, passed, details = float(grade.reward), bool(grade.passed), dict(grade.details)
        except Exception as exc:
            reason, error = "grade_failed", f"{type(exc).__name__}: {exc}"
            record = EpisodeRecord(task_id, record.tool_calls, final, turns, reason, record.messages)
        seconds["grade"] = time.monotonic() - t0
    with contextlib.suppress(Exception):
        await asyncio.wait_for(env.end(episode_id), cfg.start_timeout_s)
    seconds["total"] = time.monotonic() - started

    ids, mask, logps = _trainable(transcript, logprobs)
    return Rollout(task_id, episode_id, ids, mask, logps, record, reward, passed,
                   prompt_tokens=0 if transcript is None else _first_sampled(transcript),
                   parse_errors=parse_errors, error=error, grade_details=details, seconds=seconds)


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def _first_sampled(transcript: TokenTranscript) -> int:
    return next((i for i, m in enumerate(transcript.loss_mask) if m), len(transcript.loss_mask))


def _trainable(transcript: TokenTranscript | None, logprobs: list[float]) -> tuple[tuple, tuple, tuple]:
    """The transcript up to its last sampled token (what comes after predicts nothing trained)."""
    if transcript is None:
        return (), (), ()
    end = max((i + 1 for i, m in enumerate(transcript.loss_mask) if m), default=len(transcript.ids))
    return transcript.ids[:end], transcript.loss_mask[:end], tuple(logprobs[:end])
