"""The trainer's grading route, ``POST /episodes/{id}/grade``, on real `corecraft serve --transport http`
processes: episodes are played over streamable HTTP by the real MCP SDK client (tasks' oracles, whose calls
write), then graded over HTTP and compared with in-process grading of the same calls on the same world."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx2
import pytest
from aiohttp import web
from chat_endpoint import ChatEndpoint
from corecraft_serving import TOKEN, HttpServer, http_client, running_http_server

from corecraft.cli import main as corecraft_main
from corecraft.episode.chat import ChatClient, ChatConfig
from corecraft.episode.types import ToolCallRecord, Trajectory
from corecraft.judge.grader import grade, grade_deterministic
from corecraft.judge.llm import LLMJudge
from corecraft.judge.types import Score
from corecraft.server.grading import MAX_BODY_BYTES
from corecraft.tasks.model import Criterion, Task, ToolCall
from corecraft.tasks.store import TaskSet, load_task_set, save_task_set
from corecraft.tasks.verify import replay
from corecraft.tools import TOOLS
from corecraft.world import World

pytestmark = pytest.mark.anyio

TRAINER = "trainer-token-93ad"
LLM_CRITERION = "courteous_reply"
JUDGE_FAILS = "MAKE-THE-JUDGE-FAIL"


@pytest.fixture(scope="module")
def task_set() -> TaskSet:
    return load_task_set()


@pytest.fixture(scope="module")
def task_world(task_set: TaskSet) -> World:
    return task_set.world()


@pytest.fixture(scope="module")
def writing_tasks(task_set: TaskSet) -> list[Task]:
    """Three tasks of different families whose oracle writes and whose rubric reads the final database."""
    chosen: dict[str, Task] = {}
    for task in task_set.tasks:
        if (task.family not in chosen and any(c.kind == "state" for c in task.criteria)
                and any(TOOLS[c.name].writes for c in task.oracle.tool_calls)):
            chosen[task.family] = task
    assert len(chosen) >= 3
    return list(chosen.values())[:3]


@pytest.fixture(scope="module", params=[1, 2], ids=["1-worker", "2-workers"])
def grading_server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[HttpServer]:
    """The shipped task set's world (no --db); the two-worker server takes its trainer token from the environment."""
    log = tmp_path_factory.mktemp("log") / "grading.log"
    if request.param == 1:
        options: dict = {"extra": ("--trainer-token", TRAINER)}
    else:
        options = {"extra": ("--workers", "2"), "env": {"CORECRAFT_TRAINER_TOKEN": TRAINER}}
    with running_http_server(None, log, **options) as server:
        assert "trainer grading on POST /episodes/<id>/grade (1482 tasks, no LLM judge)" in log.read_text()
        yield server


def _episode() -> str:
    return f"ep-{uuid.uuid4().hex[:12]}"


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _grade(server: HttpServer, episode: str, task_id: str, trajectory: Trajectory | dict,
           token: str | None = TRAINER) -> httpx2.Response:
    """One grading request on a fresh connection (with --workers 2 the kernel may hand it to either worker)."""
    body = {"task_id": task_id, "trajectory": trajectory.to_json() if isinstance(trajectory, Trajectory) else trajectory}
    return httpx2.post(f"{server.base}/episodes/{episode}/grade", json=body, headers=_auth(token), timeout=60)


async def _play(server: HttpServer, episode: str, calls: Sequence[ToolCall], response: str) -> Trajectory:
    """The calls over MCP in the episode, recorded as an agent loop records them (corecraft.eval.episode)."""
    records = []
    async with http_client(server, episode) as client:
        for call in calls:
            arguments = call.to_json()["arguments"]
            result = await client.call_tool(call.name, arguments)
            text = "".join(getattr(block, "text", "") for block in result.content)
            data = result.structured_content
            records.append(ToolCallRecord(call.name, arguments, data if data is not None else text,
                                          bool(result.is_error)))
    return Trajectory(tuple(records), response, turns=len(records) + 1)


def _episodes_open(server: HttpServer) -> int:
    return httpx2.get(f"{server.base}/health", headers=_auth(TOKEN), timeout=30).json()["episodes"]


async def test_the_trainer_gets_exactly_the_in_process_score_of_the_episodes_own_fork(
        grading_server, writing_tasks, task_world):
    for task in writing_tasks:
        played, idle = _episode(), _episode()
        trajectory = await _play(grading_server, played, task.oracle.tool_calls, task.oracle.response)
        await _play(grading_server, idle, [ToolCall("getLoyaltyTier", {})], "")  # opens an episode, writes nothing
        with task_world.fork() as fork, task_world.fork() as untouched:
            in_process = replay(fork.conn, task.oracle.tool_calls, task.oracle.response)
            # the same calls wrote the same state on the server as here
            assert [c.result for c in trajectory.tool_calls] == [c.result for c in in_process.tool_calls]
            expected = grade_deterministic(task, fork.conn, trajectory)
            expected_idle = grade_deterministic(task, untouched.conn, trajectory)
        assert expected.passed, expected  # an oracle scores 100%
        answer = _grade(grading_server, played, task.id, trajectory)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"score": expected.to_json(), "reward": 1.0, "passed": True}
        assert Score.from_json(answer.json()["score"]) == expected
        # The same trajectory graded on an episode that wrote nothing: its state criteria fail, as in process.
        other = _grade(grading_server, idle, task.id, trajectory)
        assert other.status_code == 200, other.text
        assert other.json()["score"] == expected_idle.to_json() and not other.json()["passed"]
        assert other.json()["reward"] == expected_idle.reward < 1.0
        # Grading ends nothing and changes nothing: again (any worker) the same, then the trainer ends it.
        for _ in range(6):
            assert _grade(grading_server, played, task.id, trajectory).json()["score"] == expected.to_json()
        for episode in (played, idle):
            assert httpx2.delete(f"{grading_server.base}/episodes/{episode}", headers=_auth(TOKEN)).status_code == 204
        ended = _grade(grading_server, played, task.id, trajectory)
        assert ended.status_code == 404 and "no open episode" in ended.json()["error"]


async def test_only_the_trainer_token_opens_the_route(grading_server, writing_tasks):
    episode, task = _episode(), writing_tasks[0]
    trajectory = await _play(grading_server, episode, [ToolCall("getLoyaltyTier", {})], "")
    for token in (TOKEN, None, "wrong", TRAINER + "x", TRAINER[:-1]):  # the agent's token, none, wrong ones
        refused = _grade(grading_server, episode, task.id, trajectory, token=token)
        assert refused.status_code == 401, (token, refused.text)
        assert refused.json() == {"error": "missing or wrong trainer token"}
        assert refused.headers["www-authenticate"].startswith("Bearer")
    raw = {"Authorization": TRAINER}  # the token without the scheme
    assert httpx2.post(f"{grading_server.base}/episodes/{episode}/grade", headers=raw).status_code == 401
    # Refused before anything is looked at: an unknown episode or a bad body says 401 too, not 404 or 400.
    assert _grade(grading_server, "never-started", "no-such-task", {}, token=TOKEN).status_code == 401
    # The trainer's token is no agent credential: the MCP endpoint and the other routes still want the agent's.
    mcp = httpx2.post(f"{grading_server.url}", headers=_auth(TRAINER), timeout=30,
                      json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert mcp.status_code == 401
    assert httpx2.get(f"{grading_server.base}/health", headers=_auth(TRAINER)).status_code == 401
    assert httpx2.delete(f"{grading_server.base}/episodes/{episode}", headers=_auth(TRAINER)).status_code == 401
    assert _grade(grading_server, episode, task.id, trajectory).status_code == 200
    assert httpx2.delete(f"{grading_server.base}/episodes/{episode}", headers=_auth(TOKEN)).status_code == 204


async def test_unknown_episodes_and_tasks_are_404_and_create_nothing(grading_server, writing_tasks):
    task = writing_tasks[0]
    empty = Trajectory((), "")
    before = _episodes_open(grading_server)
    for episode in ("never-started", "default"):
        missing = _grade(grading_server, episode, task.id, empty)
        assert missing.status_code == 404
        assert missing.json() == {"error": f"no open episode {episode!r} (never started, ended, or freed when idle)"}
    assert _episodes_open(grading_server) == before  # grading looked, and created no episode
    episode = _episode()
    await _play(grading_server, episode, [ToolCall("getLoyaltyTier", {})], "")
    unknown = _grade(grading_server, episode, "no_such_task-000", empty)
    assert unknown.status_code == 404
    assert unknown.json() == {"error": "no task 'no_such_task-000' in the server's task set"}
    httpx2.delete(f"{grading_server.base}/episodes/{episode}", headers=_auth(TOKEN))


async def test_an_episode_opened_before_any_tool_call_is_graded_on_its_untouched_fork(
        grading_server, writing_tasks, task_world):
    """A trainer opens each episode (PUT, the agent's token): one that ends without a tool call is graded on
    the world as the agent found it, not refused as unknown."""
    task, episode = writing_tasks[0], _episode()
    assert httpx2.put(f"{grading_server.base}/episodes/{episode}", timeout=30).status_code == 401
    assert httpx2.put(f"{grading_server.base}/episodes/{episode}", headers=_auth(TRAINER), timeout=30).status_code == 401
    for _ in range(2):  # idempotent
        assert httpx2.put(f"{grading_server.base}/episodes/{episode}", headers=_auth(TOKEN), timeout=30).status_code == 204
    silent = Trajectory((), "I cannot help with that.", turns=1)
    graded = _grade(grading_server, episode, task.id, silent)
    assert graded.status_code == 200
    with task_world.fork() as fork:
        assert Score.from_json(graded.json()["score"]) == grade_deterministic(task, fork.conn, silent)
    assert httpx2.delete(f"{grading_server.base}/episodes/{episode}", headers=_auth(TOKEN)).status_code == 204


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "body is not JSON"),
        (b"[]", "body must be a JSON object"),
        (b'{"trajectory": {}}', "task_id must be a non-empty string"),
        (b'{"task_id": 7, "trajectory": {}}', "task_id must be a non-empty string"),
        (b'{"task_id": "t", "trajectory": []}', "trajectory must be an object"),
        (b'{"task_id": "t", "trajectory": {"tool_calls": [{"arguments": {}}]}}', "each with a string name"),
        (b'{"task_id": "t", "trajectory": {"tool_calls": [{"name": "x", "arguments": [1]}]}}', "must be objects"),
        (b'{"task_id": "t", "trajectory": {"final_response": 3}}', "final_response must be a string"),
        (b'{"task_id": "t", "trajectory": {"turns": "many"}}', "trajectory is malformed"),
        (b'{"task_id": "t", "trajectory": {}, "mode": "llm_all"}', "unknown fields ['mode']"),
        (b"\xff\xfe", "body is not JSON"),
    ],
)
async def test_malformed_requests_are_400_in_one_line(grading_server, body, message):
    answer = httpx2.post(f"{grading_server.base}/episodes/some-episode/grade", content=body,
                         headers={**_auth(TRAINER), "content-type": "application/json"}, timeout=30)
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"] and "\n" not in answer.json()["error"]


async def test_malformed_ids_methods_and_huge_bodies(grading_server):
    bad_id = _grade(grading_server, "-starts-with-a-dash", "t", {})
    assert bad_id.status_code == 400 and "is malformed" in bad_id.json()["error"]
    got = httpx2.get(f"{grading_server.base}/episodes/e/grade", headers=_auth(TRAINER))
    assert got.status_code == 405 and got.headers["allow"] == "POST"
    huge = b'{"task_id": "t", "trajectory": {"final_response": "' + b"x" * MAX_BODY_BYTES + b'"}}'
    declared = httpx2.post(f"{grading_server.base}/episodes/e/grade", content=huge, headers=_auth(TRAINER),
                           timeout=60)
    assert declared.status_code == 413 and declared.json() == {"error": f"body over {MAX_BODY_BYTES} bytes"}

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused while it streams in
        for start in range(0, len(huge), 1 << 20):
            yield huge[start:start + (1 << 20)]

    streamed = httpx2.post(f"{grading_server.base}/episodes/e/grade", content=chunks(), headers=_auth(TRAINER),
                           timeout=60)
    assert streamed.status_code == 413
    assert httpx2.get(f"{grading_server.base}/health", headers=_auth(TOKEN)).status_code == 200  # still serving


async def test_nothing_about_grading_is_an_mcp_tool(grading_server):
    async with http_client(grading_server, _episode()) as client:
        tools = (await client.list_tools()).tools
        assert sorted(t.name for t in tools) == sorted(TOOLS)
        listed = json.dumps([t.model_dump(mode="json") for t in tools]).lower()
        for word in ("grade", "grading", "rubric", "trainer", "criteri", "ground_truth"):
            assert word not in listed, word
        assert (await client.call_tool("grade", {"task_id": "x"})).is_error


async def test_without_a_trainer_token_the_route_does_not_exist(http_server):
    # http_server (conftest): an agent token, no trainer token, one and two workers
    absent = httpx2.post(f"{http_server.base}/episodes/e/grade", json={"task_id": "t", "trajectory": {}},
                         headers=_auth(TOKEN), timeout=30)
    assert absent.status_code == 404
    assert httpx2.post(f"{http_server.base}/episodes/e/grade", json={}).status_code == 401  # as every route


# ------------------------------------------------------------------------------- tasks with LLM criteria
@pytest.fixture(scope="module")
def llm_task(writing_tasks: list[Task]) -> Task:
    base = writing_tasks[0]
    extra = Criterion(LLM_CRITERION, "llm", "format", "The final answer is courteous to the customer.", "judge")
    return dataclasses.replace(base, id="courtesy-000", criteria=(*base.criteria, extra))


@pytest.fixture(scope="module")
def llm_task_dir(tmp_path_factory, task_set: TaskSet, task_world: World, llm_task: Task) -> Path:
    """A task set of one task with an LLM criterion, on the shipped task world."""
    return save_task_set(tmp_path_factory.mktemp("tasks"), task_world, [llm_task], dict(task_set.manifest["build"]))


async def _judge(request: web.Request) -> web.Response:
    """A scripted judge: the LLM criterion is satisfied, except for a transcript asking for a failure, which
    gets replies that are no verdicts at all."""
    body = await request.json()
    transcript = json.dumps(body["messages"])  # every message: a re-ask must fail again
    content = "no verdicts here" if JUDGE_FAILS in transcript else json.dumps(
        {"verdicts": [{"id": LLM_CRITERION, "satisfied": True, "evidence": "thanks the customer"}]})
    return web.json_response({"choices": [{"message": {"role": "assistant", "content": content}}]})


async def test_llm_criteria_without_a_judge_are_409_never_part_of_the_rubric(llm_task_dir, llm_task, world_db,
                                                                              tmp_path):
    log = tmp_path / "no-judge.log"
    extra = ("--trainer-token", TRAINER, "--tasks", str(llm_task_dir))
    # --db: the served world is that file, even though the task set has another (a warning says so)
    with running_http_server(world_db, log, extra=extra) as server:
        assert "is not the world of the task set" in log.read_text()
        episode = _episode()
        trajectory = await _play(server, episode, [ToolCall("getLoyaltyTier", {})], "Thank you!")
        refused = _grade(server, episode, llm_task.id, trajectory)
        assert refused.status_code == 409
        assert refused.json()["error"].startswith(f"task {llm_task.id} has LLM criteria and this server has no LLM judge")
        assert _grade(server, episode, "apply_valid_promotion-000", trajectory).status_code == 404  # not this set


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_llm_criteria_are_graded_by_the_configured_judge_as_in_process(llm_task_dir, llm_task, task_world,
                                                                             tmp_path, workers):
    with ChatEndpoint(_judge) as endpoint:
        log = tmp_path / "judge.log"
        extra = ("--trainer-token", TRAINER, "--tasks", str(llm_task_dir), "--judge-base-url", endpoint.url,
                 "--judge-model", "scripted", "--workers", workers)  # each worker opens its own judge client
        with running_http_server(None, log, extra=extra) as server:
            assert "(1 tasks, LLM judge scripted)" in log.read_text()
            episode = _episode()
            trajectory = await _play(server, episode, llm_task.oracle.tool_calls, llm_task.oracle.response)
            answer = _grade(server, episode, llm_task.id, trajectory)
            assert answer.status_code == 200, answer.text
            with task_world.fork() as fork:
                replay(fork.conn, llm_task.oracle.tool_calls, llm_task.oracle.response)
                async with ChatClient(ChatConfig(base_url=endpoint.url, model="scripted")) as client:
                    expected = await grade(llm_task, fork.conn, trajectory, judge=LLMJudge(client), mode="hybrid")
            assert [v.source for v in expected.verdicts][-1] == "llm" and expected.passed
            assert answer.json() == {"score": expected.to_json(), "reward": 1.0, "passed": True}
            failing = dataclasses.replace(trajectory, final_response=JUDGE_FAILS)
            broken = _grade(server, episode, llm_task.id, failing)
            assert broken.status_code == 502 and broken.json()["error"].startswith("the LLM judge failed")


# ------------------------------------------------------------------------------------------- start-up
@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--token", "same", "--trainer-token", "same"], {}, "the trainer token equals the agent's token"),
        ([], {"CORECRAFT_SERVER_TOKEN": "same", "CORECRAFT_TRAINER_TOKEN": "same"},
         "the trainer token equals the agent's token"),
        (["--token", "same"], {"CORECRAFT_TRAINER_TOKEN": "same"}, "the trainer token equals the agent's token"),
        (["--tasks", "somewhere"], {}, "--tasks applies to the trainer's grading route"),
        (["--judge-base-url", "http://127.0.0.1:1/v1", "--judge-model", "m"], {},
         "--judge-base-url applies to the trainer's grading route"),
        (["--trainer-token", "t", "--seed", "3"], {}, "--seed/--scale build a world without the task set's"),
        (["--trainer-token", "t", "--judge-base-url", "http://127.0.0.1:1/v1"], {},
         "needs both --judge-base-url and --judge-model"),
        (["--trainer-token", "t", "--judge-base-url", "http://127.0.0.1:1/v1", "--judge-model", "m",
          "--judge-api-key-env", "CORECRAFT_TEST_UNSET_KEY"], {}, "CORECRAFT_TEST_UNSET_KEY is not set"),
        (["--trainer-token", "t", "--tasks", "/nonexistent/tasks"], {}, "no manifest.json"),
    ],
)
def test_serve_refuses_grading_options_that_cannot_work_in_one_line(monkeypatch, capsys, args, env, message):
    for name in ("CORECRAFT_SERVER_TOKEN", "CORECRAFT_TRAINER_TOKEN", "CORECRAFT_TEST_UNSET_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert corecraft_main(["serve", "--transport", "http", "--port", "0", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_a_stdio_server_takes_no_trainer_token(world_db, capsys):
    assert corecraft_main(["serve", "--db", str(world_db), "--trainer-token", "t"]) == 2
    assert "--trainer-token applies to --transport http" in capsys.readouterr().err
