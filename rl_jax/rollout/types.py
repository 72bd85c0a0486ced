"""What the rollout pool exchanges with an environment and a generator: narrow, environment-agnostic values.

rl_jax never imports an environment. An environment (CoreCraft's is ``corecraft.env.environment``)
satisfies the ``Environment`` protocol structurally: it opens an episode for a task (its first messages, the
tools as the agent sees them, and where its MCP server is), grades a finished episode, and ends it. The pool
reaches the tools over MCP itself, so any MCP server works the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

# Why an episode ended. ``final``: the policy answered without a tool call. The rest are limits and faults.
StopReason = Literal[
    "final",          # answered
    "length",         # answered, the answer cut at the turn's token limit (graded as it stands)
    "max_turns",      # turn limit
    "context",        # the next turn would not fit the model's context
    "wall_time",      # the episode's time limit
    "tool_server",    # the MCP server failed or did not answer (killed, timed out)
    "start_failed",   # the environment could not open the episode
    "grade_failed",   # the judge failed or timed out
    "error",          # anything else (a bug): recorded with its message, never raised into the run
]
# Episodes that ended for these reasons are faults: handled per ``RolloutConfig.on_fault``.
FAULT_REASONS: frozenset[str] = frozenset({"tool_server", "start_failed", "grade_failed", "error"})


@dataclass(frozen=True)
class McpTarget:
    """Where an episode's tools are: an in-process MCP server object (the SDK's memory transport), or a
    streamable-HTTP URL with the headers that name the episode and carry the agent's credentials.

    ``meta``: what every tool call of the episode carries in its request ``_meta``. An in-process server that
    serves many episodes tells them apart by it (the trainer's client sets it; the policy only names a tool
    and its arguments), so episodes can share one server object and one connected client (``McpClients``).
    """

    server: Any = None
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.server is None) == (self.url is None):
            raise ValueError("an McpTarget is either an in-process server or a URL")


@dataclass(frozen=True)
class EpisodeStart:
    """An opened episode: the messages the policy starts from and the tools (OpenAI ``tools`` entries)."""

    messages: tuple[Mapping[str, Any], ...]
    tools: tuple[Mapping[str, Any], ...]
    mcp: McpTarget
    max_turns: int | None = None          # the environment's own limit (the pool takes the smaller)
    tool_result_chars: int | None = None  # longer tool results are cut before the policy reads them


@dataclass(frozen=True)
class ToolCallRecord:
    name: str
    arguments: Mapping[str, Any]
    result: Any = None      # structured content when the server gave one, else the text
    is_error: bool = False


@dataclass(frozen=True)
class EpisodeRecord:
    """What the agent did: its tool calls and final answer (what a judge grades)."""

    task_id: str
    tool_calls: tuple[ToolCallRecord, ...]
    final_response: str
    turns: int
    stop_reason: StopReason
    messages: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class Grade:
    reward: float
    passed: bool
    details: Mapping[str, Any] = field(default_factory=dict)  # verdicts, evidence: for the run's records


class Environment(Protocol):
    """The trainer's whole view of an environment (see the module docstring)."""

    def task_ids(self, split: str) -> Sequence[str]:
        """Tasks that can be drawn from ``split`` (those the environment can grade as configured)."""
        ...

    async def start(self, task_id: str, episode_id: str) -> EpisodeStart: ...

    async def grade(self, episode_id: str, record: EpisodeRecord) -> Grade: ...

    async def end(self, episode_id: str) -> None:
        """Free the episode (idempotent; called whatever happened)."""
        ...


@dataclass(frozen=True)
class Generation:
    """One sampled turn: the ids as sampled (the stop token included), their log-probs, and why it ended."""

    tokens: tuple[int, ...]
    logprobs: tuple[float, ...]
    stopped: bool  # True: ended on a stop token; False: cut at the token limit


class Generator(Protocol):
    """Continues token-id prompts; requests from many episodes are batched by the implementation."""

    async def generate(self, prompt: Sequence[int], max_new_tokens: int, key: Any) -> Generation: ...
