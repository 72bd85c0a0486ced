"""CoreCraft as a trainer sees it: open an episode for a task, grade it where its world lives, end it.

``CoreCraftEnv`` satisfies ``rl_jax.rollout.Environment`` (structurally: corecraft never imports rl_jax). Each
episode gets its own fork of the task world, and its tools are reached over MCP:
- in process (default): one MCP server object serves every episode of the environment (the SDK's in-process
  transport: the full protocol, no sockets); an episode's target names it in the request ``_meta`` of every
  call (``EPISODE_META_KEY``, set by the trainer's client, never by the policy), and the server serves only
  the episodes ``start`` opened, each on its own fork. Grading reads the fork directly; forks come from a
  ``ForkPool`` (an episode writes inside a transaction that its end rolls back; the connection is reused);
- streamable HTTP: a ``corecraft serve --transport http`` fleet names the episode by the
  ``X-CoreCraft-Episode`` header; grading runs on the server, on the trainer-only route
  ``POST /episodes/{id}/grade`` that only the trainer token opens (the agent's token never does).

Episodes are opened with the ``EpisodeSpec``'s prompt (``corecraft.episode.definition``), exactly as
``corecraft eval`` opens them. The hidden task data (rubric, ground truth) stays here: the agent gets the request.

Tasks with free-form (LLM) criteria need an LLM judge; with none configured they are not drawn, and
``left_out`` says how many were set aside, so no episode is ever graded on part of its rubric.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from corecraft.episode.chat import ChatClient, ChatConfig
from corecraft.episode.definition import (
    EpisodeSpec,
    agent_tools,
    company_policy,
    corecraft_tool_listing,
    opening_messages,
)
from corecraft.episode.types import ToolCallRecord, Trajectory
from corecraft.judge.grader import grade
from corecraft.judge.llm import LLMJudge
from corecraft.server.app import Borrowed, shared_in_process_server
from corecraft.server.episodes import EPISODE_META_KEY, EpisodeManager
from corecraft.tasks.model import Task
from corecraft.tasks.store import TaskSet
from corecraft.world import ForkPool


@dataclass(frozen=True)
class HttpFleet:
    """A running ``corecraft serve --transport http`` and the credentials of its two audiences."""

    url: str                    # the MCP endpoint, e.g. http://127.0.0.1:8765/mcp
    agent_token: str | None     # what the policy's MCP client sends
    trainer_token: str          # opens the grading route; never given to the policy

    @property
    def base(self) -> str:
        return self.url.rsplit("/", 1)[0]


@dataclass(frozen=True)
class McpTargetLike:
    """Where an episode's tools are (the fields of ``rl_jax.rollout.McpTarget``; see ``_target``)."""

    server: Any = None
    url: str | None = None
    headers: Mapping[str, str] | None = None
    meta: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class EpisodeOpening:
    """What ``start`` returns: the fields of ``rl_jax.rollout.EpisodeStart``."""

    messages: tuple[Mapping[str, Any], ...]
    tools: tuple[Mapping[str, Any], ...]
    mcp: Any
    max_turns: int | None
    tool_result_chars: int | None


@dataclass(frozen=True)
class GradeResult:
    """What ``grade`` returns: the fields of ``rl_jax.rollout.Grade``."""

    reward: float
    passed: bool
    details: Mapping[str, Any]


class CoreCraftEnv:
    """The environment for a trainer; use as ``async with CoreCraftEnv(...) as env`` (it owns the judge's client).

    ``target`` builds the MCP target value the trainer expects from ``(server=..., url=..., headers=...)`` or
    ``(server=..., meta=...)`` keyword arguments (pass ``rl_jax.rollout.McpTarget``); by default a plain record with those fields.
    ``spare_forks``: ended episodes' fork connections kept for reuse in process (``ForkPool``).
    """

    def __init__(self, task_set: TaskSet, spec: EpisodeSpec, *, judge: ChatConfig | None = None,
                 fleet: HttpFleet | None = None, target: Any = McpTargetLike, spare_forks: int = 16) -> None:
        self.task_set = task_set
        self.spec = spec
        self.fleet = fleet
        self._target = target
        self._judge_config = judge
        self._judge_client: ChatClient | None = None
        self._tasks = {t.id: t for t in task_set.tasks}
        self._world = task_set.world() if fleet is None else None
        self._policy = ""
        if spec.policy_in_context:
            world = self._world or task_set.world()
            with world.reader() as reader:
                self._policy = company_policy(reader.conn)
        self._tools = tuple(agent_tools(spec, corecraft_tool_listing()))
        self._open: dict[str, tuple[Task, Any]] = {}  # episode id -> (task, its fork or None over HTTP)
        self._http: Any = None
        self._forks: ForkPool | None = None
        self._episodes: EpisodeManager | None = None
        self._server: Any = None
        if self._world is not None:
            self._forks = ForkPool(self._world, spares=spare_forks)
            # only the episodes start() adds exist; this environment ends them (no idle sweep, no cap)
            self._episodes = EpisodeManager(None, idle_timeout_s=math.inf, max_episodes=sys.maxsize)
            self._server = shared_in_process_server(self._episodes)

    # ---- tasks ---------------------------------------------------------------------------------------------

    def gradable(self, task: Task) -> bool:
        return self._judge_config is not None or not any(c.kind == "llm" for c in task.criteria)

    def task_ids(self, split: str) -> list[str]:
        return [t.id for t in self.task_set.tasks if t.split == split and self.gradable(t)]

    def left_out(self, split: str) -> int:
        """Tasks of ``split`` not drawn because they have LLM criteria and no judge is configured."""
        return sum(1 for t in self.task_set.tasks if t.split == split and not self.gradable(t))

    def describe(self) -> dict[str, Any]:
        return {"episode": self.spec.to_json(), "transport": "http" if self.fleet else "in_process",
                "judge": self._judge_config.model if self._judge_config else None,
                "tasks": {s: len(self.task_ids(s)) for s in ("train", "eval")},
                "left_out_llm_tasks": {s: self.left_out(s) for s in ("train", "eval")}}

    # ---- lifetime ------------------------------------------------------------------------------------------

    async def __aenter__(self) -> CoreCraftEnv:
        if self._judge_config is not None:
            self._judge_client = ChatClient(self._judge_config)
            await self._judge_client.__aenter__()
        if self.fleet is not None:
            import aiohttp

            self._http = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for episode_id in list(self._open):
            await self.end(episode_id)
        if self._judge_client is not None:
            await self._judge_client.close()
            self._judge_client = None
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._forks is not None:
            self._forks.close()

    # ---- episodes ------------------------------------------------------------------------------------------

    def opening(self, task_id: str) -> tuple[list[dict[str, str]], tuple[Mapping[str, Any], ...]]:
        """``(first messages, tools)`` of an episode of ``task_id``: what the agent sees before its first turn."""
        task = self._tasks.get(task_id)
        if task is None:
            raise KeyError(f"unknown task {task_id!r}")
        return opening_messages(self.spec, task.request, self._policy), self._tools

    async def start(self, task_id: str, episode_id: str) -> EpisodeOpening:
        messages, tools = self.opening(task_id)
        task = self._tasks[task_id]
        if episode_id in self._open:
            raise ValueError(f"episode {episode_id!r} is already open")
        if self.fleet is None:
            assert self._forks is not None and self._episodes is not None
            fork = self._forks.take()
            try:
                self._episodes.add(episode_id, Borrowed(fork.conn))
            except BaseException:
                fork.close()
                raise
            self._open[episode_id] = (task, fork)
            mcp = self._target(server=self._server, meta={EPISODE_META_KEY: episode_id})
        else:
            headers = {"X-CoreCraft-Episode": episode_id}
            if self.fleet.agent_token:
                headers["Authorization"] = f"Bearer {self.fleet.agent_token}"
            assert self._http is not None, "CoreCraftEnv over HTTP is used inside 'async with'"
            # open it on the server now: an episode that ends without a tool call is still graded, on its fork
            status, text = await self._send("PUT", f"/episodes/{episode_id}", headers=self._agent_auth())
            if status != 204:
                raise RuntimeError(f"opening episode {episode_id} on {self.fleet.base}: HTTP {status} {text[:200]}")
            self._open[episode_id] = (task, None)
            mcp = self._target(url=self.fleet.url, headers=headers)
        return EpisodeOpening(tuple(messages), tools, mcp, self.spec.max_turns, self.spec.tool_result_chars)

    async def grade(self, episode_id: str, record: Any) -> GradeResult:
        """Grade a finished episode (``record``: an ``EpisodeRecord``-like value) by its task's whole rubric."""
        task, fork = self._open[episode_id]
        trajectory = to_trajectory(record)
        if fork is not None:
            judge = LLMJudge(self._judge_client) if self._judge_client is not None else None
            score = await grade(task, fork.conn, trajectory, judge=judge, mode="hybrid")
            return GradeResult(score.reward, score.passed, score.to_json())
        assert self.fleet is not None and self._http is not None
        status, text = await self._send("POST", f"/episodes/{episode_id}/grade",
                                        json={"task_id": task.id, "trajectory": trajectory.to_json()},
                                        headers={"Authorization": f"Bearer {self.fleet.trainer_token}"})
        body = json.loads(text) if text else {}
        if status != 200:
            raise RuntimeError(f"grading {episode_id} over HTTP: {status} {body.get('error', text[:200])}")
        return GradeResult(float(body["reward"]), bool(body["passed"]), body["score"])

    async def end(self, episode_id: str) -> None:
        task_fork = self._open.pop(episode_id, None)
        if task_fork is None:
            return
        _, fork = task_fork
        if fork is not None:
            assert self._episodes is not None and self._forks is not None
            self._episodes.end(episode_id)  # no call reaches the fork after this
            self._forks.give(fork)
            return
        assert self.fleet is not None
        if self._http is not None:
            with contextlib.suppress(Exception):
                await self._send("DELETE", f"/episodes/{episode_id}", headers=self._agent_auth())

    async def _send(self, method: str, path: str, **kwargs: Any) -> tuple[int, str]:
        """One request to the fleet, retried on a dropped connection: every route used here is idempotent
        (open, grade, end), and a pooled keep-alive connection the server has just closed (uvicorn closes idle
        ones after 5 s) fails the first write (seen: 15 of 256 concurrent gradings, bench_rollout)."""
        import aiohttp

        assert self.fleet is not None and self._http is not None
        for attempt in range(3):
            try:
                async with self._http.request(method, self.fleet.base + path, **kwargs) as resp:
                    return resp.status, await resp.text()
            except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _agent_auth(self) -> dict[str, str]:
        """The episode routes (open, end) take the agent's credentials; grading takes the trainer's."""
        assert self.fleet is not None
        return {"Authorization": f"Bearer {self.fleet.agent_token}"} if self.fleet.agent_token else {}


def to_trajectory(record: Any) -> Trajectory:
    """The judge's ``Trajectory`` from a trainer's episode record (any object with its fields)."""
    calls: Sequence[Any] = record.tool_calls
    return Trajectory(tuple(ToolCallRecord(c.name, dict(c.arguments), c.result, bool(c.is_error)) for c in calls),
                      str(record.final_response), turns=int(record.turns), stop_reason=str(record.stop_reason),
                      messages=tuple(record.messages))
