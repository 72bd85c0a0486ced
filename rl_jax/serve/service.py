"""Chat completions over a ``TokenEngine``: messages and tools to prompt ids, choices to OpenAI reply bodies.

One ``ChatService`` serves one model. A request renders its conversation with the model's chat template
(tools as the template takes them), becomes ``n`` engine requests (one per choice, keys folded from the seed),
and each choice's token stream becomes text, stop-string cuts and parsed tool calls (``ChoiceText``). The
engine batches whatever requests are in flight, from every client. Leaving a choice's stream early (a stop
string, a client gone) closes it, which frees its slot in the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax

from rl_jax.chat.chat_format import ChatFormat
from rl_jax.chat.messages import Message
from rl_jax.chat.template import ChatTemplateError
from rl_jax.engine.api import GenerationRequest, TokenChunk, TokenEngine
from rl_jax.serve.choice_text import ChoiceText, FinalChoice
from rl_jax.serve.protocol import ApiError, ChatRequest, token_logprob_entries, usage
from rl_jax.serve.sessions import SessionBook


@dataclass(frozen=True)
class ServeConfig:
    model_name: str
    default_max_tokens: int = 1024  # a request without max_tokens: this many at most, within the context
    session_capacity: int = 1024  # conversations remembered for KV reuse (SessionBook)


@dataclass
class _Choice:
    index: int
    session: str
    text: ChoiceText
    logprobs: list[float]
    tokens: list[int]
    length_cut: bool = False
    prompt_tokens_computed: int = 0
    final: FinalChoice | None = None


class ChatService:
    def __init__(self, engine: TokenEngine, fmt: ChatFormat, config: ServeConfig) -> None:
        self.engine = engine
        self.fmt = fmt
        self.config = config
        self.sessions = SessionBook(engine.end_session, capacity=config.session_capacity)

    @property
    def model_name(self) -> str:
        return self.config.model_name

    # ---- request to engine requests --------------------------------------------------------------------

    def check_model(self, request: ChatRequest) -> None:
        if request.model != self.model_name:
            raise ApiError(404, f"The model '{request.model}' does not exist; this server serves "
                           f"'{self.model_name}' (GET /v1/models)", param="model", code="model_not_found")

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        tools = list(request.tools) if request.use_tools and request.tools else None
        try:
            ids = self.fmt.encode(request.messages, tools, add_generation_prompt=True)
        except (ChatTemplateError, ValueError, TypeError) as exc:
            raise ApiError(400, f"the chat template cannot render these messages: {exc}", param="messages") from None
        limit = self.engine.context_limit
        if len(ids) >= limit:
            raise ApiError(400, f"This model's maximum context length is {limit} tokens. However, your messages "
                           f"resulted in {len(ids)} tokens. Please reduce the length of the messages.",
                           param="messages", code="context_length_exceeded")
        return ids

    def _generation_requests(self, request: ChatRequest, prompt: Sequence[int],
                             sessions: Sequence[str]) -> list[GenerationRequest]:
        room = self.engine.context_limit - len(prompt)
        max_new = min(request.max_tokens or self.config.default_max_tokens, room)
        greedy = request.temperature == 0.0 or request.top_p == 0.0
        seed = request.seed if request.seed is not None else secrets.randbits(62)
        # a 64-bit seed in two 31-bit halves: every seed a client may send names its own key
        key = None if greedy else jax.random.fold_in(jax.random.key(seed & 0x7FFFFFFF), (seed >> 31) & 0x7FFFFFFF)
        stops = tuple(self.fmt.tokenizer.stop_token_ids)
        return [GenerationRequest(
            prompt=tuple(prompt), max_new_tokens=max_new,
            key=None if key is None else (key if request.n == 1 else jax.random.fold_in(key, i)),
            temperature=0.0 if greedy else request.temperature, top_p=1.0 if greedy else request.top_p,
            top_k=request.top_k, stop_token_ids=stops, session=session,
        ) for i, session in enumerate(sessions)]

    def _sessions(self, request: ChatRequest, pinned: str | None) -> list[str]:
        """Choice 0 continues the conversation's session (or the client's pinned one); others get new ones."""
        first = pinned or self.sessions.claim(self.model_name, self._tools(request), request.messages)
        return [first if i == 0 else (f"{pinned}/{i}" if pinned else uuid.uuid4().hex) for i in range(request.n)]

    @staticmethod
    def _tools(request: ChatRequest) -> tuple[Mapping[str, Any], ...]:
        return request.tools if request.use_tools else ()

    def _remember(self, request: ChatRequest, choice: _Choice, pinned: str | None) -> None:
        if pinned is None and choice.final is not None:
            messages: tuple[Message, ...] = (*request.messages, choice.final.typed)
            self.sessions.remember(self.model_name, self._tools(request), messages, choice.session)

    def _new_choice(self, request: ChatRequest, index: int, session: str) -> _Choice:
        text = ChoiceText(self.fmt.tokenizer, stop_strings=request.stop,
                          parse_tools=request.use_tools and bool(request.tools))
        return _Choice(index, session, text, [], [])

    # ---- running one choice ------------------------------------------------------------------------------

    async def _run_choice(self, choice: _Choice, generation: GenerationRequest) -> AsyncIterator[
            tuple[str, TokenChunk]]:
        """The choice's (text delta, chunk) pairs, until the engine ends the turn or a stop string does."""
        stream = self.engine.stream(generation)
        try:
            async for chunk in _refusals_as_400(stream):
                choice.tokens.extend(chunk.tokens)
                choice.logprobs.extend(chunk.logprobs)
                delta = choice.text.add(chunk.tokens)
                if chunk.finish is not None:
                    choice.length_cut = chunk.finish in ("length", "context") and not choice.text.stopped
                    choice.prompt_tokens_computed = chunk.prompt_tokens_computed
                yield delta, chunk
                if choice.text.stopped or chunk.finish is not None:
                    break
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]
        choice.final = choice.text.final(length_cut=choice.length_cut)

    # ---- whole replies -----------------------------------------------------------------------------------

    async def complete(self, request: ChatRequest, *, session: str | None = None) -> dict[str, Any]:
        """A non-streamed reply body."""
        self.check_model(request)
        # rendering and tokenizing a CoreCraft-sized prompt takes ~0.1 s: off the loop, which keeps streaming
        prompt = await asyncio.to_thread(self.prompt_ids, request)
        sessions = self._sessions(request, session)
        generations = self._generation_requests(request, prompt, sessions)
        choices = [self._new_choice(request, i, s) for i, s in enumerate(sessions)]

        async def run(choice: _Choice, generation: GenerationRequest) -> None:
            async for _ in self._run_choice(choice, generation):
                pass

        try:
            await asyncio.gather(*(run(c, g) for c, g in zip(choices, generations, strict=True)))
        except BaseException:
            for s in sessions:
                self.engine.end_session(s)
            raise
        body_choices = []
        for choice in choices:
            assert choice.final is not None
            self._remember(request, choice, session)
            entry: dict[str, Any] = {"index": choice.index, "message": choice.final.message,
                                     "finish_reason": choice.final.finish_reason, "logprobs": None}
            if request.logprobs:
                entry["logprobs"] = {"content": token_logprob_entries(choice.text.token_texts(choice.tokens),
                                                                      choice.logprobs), "refusal": None}
            body_choices.append(entry)
        completion = sum(len(c.tokens) for c in choices)
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.model_name, "choices": body_choices,
                "usage": usage(len(prompt), completion, self._cached(prompt, choices))}

    @staticmethod
    def _cached(prompt: Sequence[int], choices: Sequence[_Choice]) -> int:
        computed = choices[0].prompt_tokens_computed if choices else len(prompt)
        return max(0, len(prompt) - computed)

    async def stream(self, request: ChatRequest, *, session: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """Streamed reply chunks (``chat.completion.chunk`` bodies). A request that cannot be served raises
        ``ApiError`` from the first ``__anext__``, before any chunk: take the first one before answering."""
        self.check_model(request)
        # rendering and tokenizing a CoreCraft-sized prompt takes ~0.1 s: off the loop, which keeps streaming
        prompt = await asyncio.to_thread(self.prompt_ids, request)
        sessions = self._sessions(request, session)
        generations = self._generation_requests(request, prompt, sessions)
        choices = [self._new_choice(request, i, s) for i, s in enumerate(sessions)]
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": self.model_name}

        def chunk(index: int, delta: dict[str, Any], finish: str | None = None,
                  logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
            entry: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
            if logprobs is not None:
                entry["logprobs"] = {"content": logprobs, "refusal": None}
            return {**base, "choices": [entry]}

        queue: asyncio.Queue[dict[str, Any] | BaseException | None] = asyncio.Queue()

        async def run(choice: _Choice, generation: GenerationRequest) -> None:
            opened = False

            async def put(delta: dict[str, Any], finish: str | None = None,
                          entries: list[dict[str, Any]] | None = None) -> None:
                # the role chunk waits for the engine's first answer: a request the engine refuses then fails
                # before any chunk, as a plain JSON error rather than an error inside a 200 stream
                nonlocal opened
                if not opened:
                    opened = True
                    await queue.put(chunk(choice.index, {"role": "assistant", "content": ""}))
                await queue.put(chunk(choice.index, delta, finish, entries))

            try:
                async for delta, piece in self._run_choice(choice, generation):
                    entries = (token_logprob_entries(choice.text.token_texts(piece.tokens), piece.logprobs)
                               if request.logprobs else None)
                    if delta or entries:
                        await put({"content": delta} if delta else {}, None, entries)
                final = choice.final
                assert final is not None
                rest = choice.text.rest()
                if rest and final.finish_reason != "tool_calls":
                    await put({"content": rest})
                calls = final.message.get("tool_calls") or []
                if calls:
                    await put({"tool_calls": [{"index": j, **call} for j, call in enumerate(calls)]})
                await put({}, final.finish_reason)
                self._remember(request, choice, session)
            except Exception as exc:  # handed to the consumer, which raises it
                await queue.put(exc)
            finally:
                await queue.put(None)

        tasks = [asyncio.create_task(run(c, g)) for c, g in zip(choices, generations, strict=True)]
        try:
            running = len(tasks)
            while running:
                item = await queue.get()
                if item is None:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
            if request.include_usage:
                yield {**base, "choices": [],
                       "usage": usage(len(prompt), sum(len(c.tokens) for c in choices),
                                      self._cached(prompt, choices))}
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            if any(c.final is None for c in choices):  # cut short: nobody will continue these sessions
                for s in sessions:
                    self.engine.end_session(s)


async def _refusals_as_400(stream: AsyncIterator[TokenChunk]) -> AsyncIterator[TokenChunk]:
    """The engine refuses a request it cannot hold (``ValueError``: a prompt past what a slot holds): the
    client's request, so a 400 naming why."""
    try:
        async for chunk in stream:
            yield chunk
    except ValueError as exc:
        # a prompt past a slot's room is past this server's context: clients (corecraft eval) end the episode
        code = "context_length_exceeded" if re.search(r"context|capacity", str(exc)) else "invalid_value"
        raise ApiError(400, f"the engine cannot serve this request: {exc}", param="messages", code=code) from None
