"""What a generation engine offers its callers: the rollout pool, the OpenAI-compatible server, benchmarks.

One request continues one token-id prompt with its own sampling options and PRNG key. ``session`` names a
conversation: an engine that keeps key/value caches between turns (continuous batching with slot reuse) uses
it to find the previous turn's cache, and prefills only the tokens the new prompt adds after what that
session already holds; any prompt is still accepted for any session (a prompt that does not extend the
session's history is simply prefilled from its longest cached prefix). ``None``: no reuse expected.

``stream`` yields the sampled tokens as they are decoded (in chunks; the engine decides how many per chunk)
and ends with a final chunk whose ``finish`` is set; ``generate`` waits for the whole turn. Cancelling the
awaiting task frees the request's slot. Both are asyncio: many requests are in flight at once and the
engine batches them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Finish = Literal["stop", "length", "context"]  # a stop token; max_new_tokens; the model's context is full


@dataclass(frozen=True)
class GenerationRequest:
    prompt: tuple[int, ...]
    max_new_tokens: int
    key: Any = None  # a JAX PRNG key (typed or legacy uint32); None only for greedy decoding
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0
    stop_token_ids: tuple[int, ...] = ()  # generation ends after emitting one (kept in the output)
    session: str | None = None  # a conversation whose cached keys and values may be reused

    def __post_init__(self) -> None:
        if not self.prompt:
            raise ValueError("prompt must hold at least one token")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1; got {self.max_new_tokens}")
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy); got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1]; got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0; got {self.top_k}")
        if self.temperature > 0 and self.key is None:
            raise ValueError("sampling with temperature > 0 needs a PRNG key")


@dataclass(frozen=True)
class TokenChunk:
    """Tokens decoded since the previous chunk, their log-probs (untruncated tempered distribution, as the
    sampler returns them), and on the last chunk why the turn ended."""

    tokens: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish: Finish | None = None
    prompt_tokens_computed: int = 0  # on the last chunk: prompt tokens this turn actually prefilled


class TokenEngine(Protocol):
    """A generation engine; implementations batch concurrent requests."""

    @property
    def context_limit(self) -> int: ...

    def stream(self, request: GenerationRequest) -> AsyncIterator[TokenChunk]: ...

    async def generate(self, request: GenerationRequest) -> TokenChunk:
        """The whole turn as one chunk (all its tokens, ``finish`` set)."""
        ...

    def end_session(self, session: str) -> None:
        """Forget a conversation's cache (its slot may be reused at once)."""
        ...
