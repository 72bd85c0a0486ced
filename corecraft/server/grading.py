"""The trainer's grading route: ``POST /episodes/{id}/grade`` grades a finished episode where its world lives.

An RL trainer whose episodes run on the HTTP fleet sends the task id and the agent's trajectory; the server
grades it against the episode's fork (its final state) and answers the score. The rubric, the hidden ground
truth and the verdicts' evidence go only to the trainer: the route sits in front of the MCP app (it is never
an MCP tool), is authorized by the trainer's token alone (the agent's token is refused, and the two must
differ), and does not exist when no trainer token is configured.

Grading reads a read-only copy of the fork (``Episodes.snapshot``: a state between two tool calls), never the
fork itself, so it writes nothing, holds no lock on the episode, and does not end it (the trainer ends it with
``DELETE /episodes/{id}``). The grading itself (SQLite queries and text checks over the trajectory, up to the
body cap in size) runs on a thread of its own with its own event loop, so it holds up the server's tool calls
no more than the GIL makes it (SQLite releases it while it works); the LLM judge, for tasks with free-form
criteria, is awaited on that loop, which also owns the judge's HTTP session. ``corecraft.judge.grader.grade``
is used unchanged: the trainer gets exactly the in-process score.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from typing import Any

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from corecraft.episode.chat import ChatClient, ChatConfig
from corecraft.episode.types import Trajectory
from corecraft.judge.grader import grade
from corecraft.judge.llm import JudgeError, LLMJudge
from corecraft.judge.types import Score
from corecraft.server.app import ASGIApp
from corecraft.server.episodes import (
    EpisodeBusy,
    EpisodeError,
    Episodes,
    SharedEpisodeStore,
    validate_episode_id,
)
from corecraft.tasks.model import Task

logger = logging.getLogger(__name__)

# A trajectory of a long episode with large tool results is a few MB of JSON; beyond this a body is a mistake.
MAX_BODY_BYTES = 8 * 1024 * 1024
# Gradings under way at once in one server process. Each holds a copy of its episode's database (5.6 MB on the
# shipped task world) until its score is in, so a trainer sending thousands at once queues here rather than
# copying thousands of databases; 16 keeps the LLM judge's 8 concurrent requests (ChatConfig's default) busy.
MAX_GRADINGS = 16
# Every path of this shape belongs to the trainer: none of it is ever handed to the agent-facing app.
GRADE_PATH = re.compile(r"/episodes/(?P<episode_id>.*)/grade/?", re.S)


class BadRequest(ValueError):
    """The request body is not a grading request (400)."""


def parse_body(body: bytes) -> tuple[str, Trajectory]:
    """``{"task_id": str, "trajectory": Trajectory.to_json()}`` -> (task id, trajectory); BadRequest names the
    problem. Unknown fields are refused, so a client expecting an option this server lacks hears about it."""
    try:
        obj = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise BadRequest('body must be a JSON object {"task_id": ..., "trajectory": ...}')
    unknown = sorted(set(obj) - {"task_id", "trajectory"})
    if unknown:
        raise BadRequest(f"unknown fields {unknown}: the body holds only task_id and trajectory")
    task_id, raw = obj.get("task_id"), obj.get("trajectory")
    if not isinstance(task_id, str) or not task_id:
        raise BadRequest("task_id must be a non-empty string")
    if not isinstance(raw, dict):
        raise BadRequest("trajectory must be an object (corecraft.episode.types.Trajectory.to_json())")
    calls = raw.get("tool_calls", [])
    if not isinstance(calls, list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls):
        raise BadRequest("trajectory.tool_calls must be a list of objects, each with a string name")
    if not all(isinstance(c.get("arguments") or {}, dict) for c in calls):
        raise BadRequest("trajectory.tool_calls[].arguments must be objects")
    if not isinstance(raw.get("final_response", ""), str):
        raise BadRequest("trajectory.final_response must be a string")
    if not isinstance(raw.get("messages", []), list):
        raise BadRequest("trajectory.messages must be a list")
    try:
        return task_id, Trajectory.from_json(raw)
    except (KeyError, TypeError, ValueError) as exc:  # e.g. turns that is not an integer
        raise BadRequest(f"trajectory is malformed ({type(exc).__name__}: {exc})") from None


class Grader:
    """Grades trajectories against tasks on a thread with its own event loop (see the module docstring).

    ``start`` and ``close`` are called by the server's lifespan, so with ``--workers N`` every worker process
    starts its own thread after the fork (threads do not survive one)."""

    def __init__(self, tasks: Iterable[Task], judge: ChatConfig | None = None) -> None:
        self.tasks: Mapping[str, Task] = {t.id: t for t in tasks}
        self.judge_config = judge
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._judge: LLMJudge | None = None

    def lacks_judge_for(self, task: Task) -> bool:
        """The task has LLM criteria and there is no judge: grading it would score part of its rubric."""
        return self.judge_config is None and any(c.kind == "llm" for c in task.criteria)

    def start(self) -> None:
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        started: Future[None] = Future()

        def run() -> None:
            asyncio.set_event_loop(loop)
            client: ChatClient | None = None
            try:
                try:
                    if self.judge_config is not None:
                        # the client's HTTP session belongs to this loop: it is opened and closed here
                        client = loop.run_until_complete(ChatClient(self.judge_config).__aenter__())
                        self._judge = LLMJudge(client)
                except BaseException as exc:
                    started.set_exception(exc)
                    return
                started.set_result(None)
                loop.run_forever()
            finally:
                if client is not None:
                    loop.run_until_complete(client.close())
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="corecraft-grader", daemon=True)
        self._thread.start()
        started.result()

    def close(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._thread = self._loop = None

    async def grade(self, task: Task, copy: sqlite3.Connection, trajectory: Trajectory) -> Score:
        """The score of ``trajectory`` on ``copy`` (an episode's ``snapshot``, closed here), graded on the grading
        thread."""
        if self._loop is None:
            copy.close()
            raise RuntimeError("the grader is not started")
        return await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(self._grade(task, copy, trajectory), self._loop))

    async def _grade(self, task: Task, copy: sqlite3.Connection, trajectory: Trajectory) -> Score:
        try:
            return await grade(task, copy, trajectory, judge=self._judge, mode="hybrid")
        finally:
            copy.close()


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=dict(headers or {}))


class TrainerRoutes:
    """ASGI middleware in front of the agent-facing app (and its bearer check): requests for the grading path
    are answered here, authorized by the trainer's token only; everything else passes through untouched."""

    def __init__(self, app: ASGIApp, *, token: str, grader: Grader, episodes: Episodes,
                 agent_token: str | None = None) -> None:
        if not token:
            raise ValueError("the trainer token must not be empty")
        if agent_token is not None and hmac.compare_digest(token.encode(), agent_token.encode()):
            raise ValueError("the trainer token must differ from the agent's token")
        self.app = app
        self.grader = grader
        self.episodes = episodes
        self._expected = f"Bearer {token}".encode()
        self._slots = anyio.Semaphore(MAX_GRADINGS)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        match = GRADE_PATH.fullmatch(scope["path"]) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if not hmac.compare_digest(given, self._expected):
            # Before anything else: without the trainer's token nothing is learnt (not even which episodes exist).
            response: Response = _error(401, "missing or wrong trainer token",
                                        {"WWW-Authenticate": 'Bearer realm="corecraft-trainer"'})
        elif scope["method"] != "POST":
            response = _error(405, f"{scope['method']} is not allowed here: POST a grading request",
                              {"Allow": "POST"})
        else:
            response = await self._grade(Request(scope, receive), match.group("episode_id"))
        await response(scope, receive, send)

    async def _grade(self, request: Request, raw_episode_id: str) -> Response:
        try:
            episode_id = validate_episode_id(raw_episode_id)
        except EpisodeError as exc:
            return _error(400, str(exc))
        try:
            body = await _read_body(request)
        except _TooLarge:
            return _error(413, f"body over {MAX_BODY_BYTES} bytes")
        except ClientDisconnect:
            return _error(400, "the client disconnected before sending the whole body")
        try:
            task_id, trajectory = parse_body(body)
        except BadRequest as exc:
            return _error(400, str(exc))
        task = self.grader.tasks.get(task_id)
        if task is None:
            return _error(404, f"no task {task_id!r} in the server's task set")
        if self.grader.lacks_judge_for(task):
            # Never a reward from part of the rubric: the trainer must know this task cannot be graded here.
            return _error(409, f"task {task_id} has LLM criteria and this server has no LLM judge "
                               "(start it with --judge-base-url and --judge-model)")
        async with self._slots:
            try:
                if isinstance(self.episodes, SharedEpisodeStore):
                    # a file other workers write: copying it may wait for their lock, so off the event loop
                    copy = await anyio.to_thread.run_sync(self.episodes.snapshot, episode_id)
                else:
                    # an in-memory fork: copied on the loop that runs its tool calls, so between two of them
                    copy = self.episodes.snapshot(episode_id)
            except EpisodeBusy as exc:  # the trainer graded before the episode's last call was done
                return _error(503, f"{exc}: grade it once its calls are done", {"Retry-After": "1"})
            if copy is None:
                return _error(404, f"no open episode {episode_id!r} (never started, ended, or freed when idle)")
            try:
                score = await self.grader.grade(task, copy, trajectory)
            except JudgeError as exc:
                return _error(502, f"the LLM judge failed: {exc}")
            except Exception:
                logger.exception("grading episode %s on task %s failed", episode_id, task_id)
                return _error(500, f"grading task {task_id} failed on the server (see its log)")
        return JSONResponse({"score": score.to_json(), "reward": score.reward, "passed": score.passed})


class _TooLarge(Exception):
    pass


async def _read_body(request: Request) -> bytes:
    """The body, refusing one over MAX_BODY_BYTES: up front by its Content-Length, else as it streams in."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)
