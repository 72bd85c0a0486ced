"""Sampling settings: one frozen value per way of sampling (temperature, top-k, top-p, stops, length)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to pick each next token.

    ``temperature == 0`` means greedy decoding (argmax). Otherwise the next token is drawn from
    ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely tokens (0 = no limit) and then
    to the smallest set whose probability mass reaches ``top_p`` (1.0 = no limit), renormalised; the order is
    the one transformers uses (temperature, top-k, top-p).

    The returned per-token log-probs are always those of the *untruncated* tempered distribution,
    ``log_softmax(logits / temperature)`` (``temperature`` 1 when greedy), so they equal what the trainer
    computes from the same parameters at the same temperature; top-k/top-p only shape which tokens are drawn.

    Generation of a row ends after it emits one of ``stop_token_ids`` (the stop token is kept in the output
    and counted in its length: GRPO trains on it) or after ``max_new_tokens`` tokens.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy); got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = no top-k filter); got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 = no nucleus filter); got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1; got {self.max_new_tokens}")
        stops = tuple(int(t) for t in self.stop_token_ids)
        if any(t < 0 for t in stops):
            raise ValueError(f"stop_token_ids must be non-negative token ids; got {self.stop_token_ids}")
        object.__setattr__(self, "stop_token_ids", stops)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def uses_top_p(self) -> bool:
        return self.top_p < 1.0 and not self.greedy

    @property
    def program_key(self) -> tuple[bool, int, bool]:
        """What changes the compiled decode program; temperature, top_p's value and stops are run-time inputs."""
        return (self.greedy, 0 if self.greedy else self.top_k, self.uses_top_p)
