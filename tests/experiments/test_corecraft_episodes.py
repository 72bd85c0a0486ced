"""Episodes of the RL driver on the real CoreCraft environment: real forks, the real MCP SDK (memory transport and
streamable HTTP), the real judge. The policy here is a scripted one (a ``Generator`` that writes given turns),
so the tool traffic is known: the token bookkeeping, the prompt both drivers give, and every fault path are
checked against it. Training with a sampled policy is in ``test_grpo_corecraft_main.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from chat_endpoint import ChatEndpoint

from corecraft.env.environment import CoreCraftEnv, HttpFleet
from corecraft.episode import EpisodeSpec
from corecraft.episode.chat import ChatClient, ChatConfig
from corecraft.eval.agent import run_agent
from corecraft.eval.episode import mcp_episode
from corecraft.tasks.model import Criterion
from corecraft.tasks.store import TaskSet, load_task_set
from rl_jax.chat import ToolCall, format_assistant_text, load_chat_format, start_transcript
from rl_jax.rollout import EpisodeTools, Generation, McpClients, McpTarget, RolloutConfig, run_episode

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "corecraft" / "server"))  # corecraft_serving: real `corecraft serve`
LOGP = -0.25  # what the scripted policy reports for each of its tokens
TRAINER_TOKEN = "trainer-token-7d2a"  # opens the server's grading route; never the agent's


@pytest.fixture(scope="module")
def fmt():
    return load_chat_format()


@pytest.fixture(scope="module")
def task_set() -> TaskSet:
    return load_task_set(None)


@pytest.fixture(scope="module")
def task(task_set):
    return next(t for t in task_set.tasks if t.split == "train")


class ScriptedPolicy:
    """A ``Generator`` that answers each call with the next scripted turn, tokenized, ending in the stop token.

    ``on_turn`` runs before a turn is returned (a test kills a server there)."""

    def __init__(self, fmt, turns: Sequence[str], on_turn: dict[int, Any] | None = None):
        self.fmt, self.turns, self.on_turn = fmt, list(turns), on_turn or {}
        self.prompts: list[tuple[int, ...]] = []
        self.sampled: list[tuple[int, ...]] = []

    async def generate(self, prompt, max_new_tokens, key) -> Generation:
        n = len(self.prompts)
        self.prompts.append(tuple(prompt))
        if n in self.on_turn:
            self.on_turn[n]()
        ids = (*self.fmt.tokenizer.encode(self.turns[n]), self.fmt.tokenizer.stop_token_ids[0])
        self.sampled.append(ids)
        return Generation(ids, (LOGP,) * len(ids), True)


def call(name: str, **arguments: Any) -> str:
    return format_assistant_text("", [ToolCall(name, arguments)])


def run(env: CoreCraftEnv, policy, task_id: str, cfg: RolloutConfig | None = None, context: int = 8192,
        episode: str = "e1"):
    import jax

    cfg = cfg or RolloutConfig()

    async def go():
        async with env:
            return await run_episode(env, policy, policy.fmt, task_id, episode, cfg, jax.random.key(0), context)

    return asyncio.run(go())


def spans(mask: Sequence[int]) -> list[tuple[int, int, int]]:
    """(value, start, end) runs of a 0/1 mask."""
    out, start = [], 0
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            out.append((mask[start], start, i))
            start = i
    return out


def test_tokens_are_the_prompt_the_sampled_turns_and_the_templates_tool_results(fmt, task_set, task):
    spec = EpisodeSpec(prompt_form="signatures", max_turns=5, tool_result_chars=600)
    env = CoreCraftEnv(task_set, spec, target=McpTarget)
    turns = [call("searchKnowledgebase", query="return", kind="policy"),
             call("getKnowledgebaseArticle", article_id="KB-NOPE-0"),
             "Thank you. Your return is being reviewed."]
    policy = ScriptedPolicy(fmt, turns)
    r = run(env, policy, task.id)

    assert r.stop_reason == "final" and not r.fault and r.record.turns == 3
    assert [c.name for c in r.record.tool_calls] == ["searchKnowledgebase", "getKnowledgebaseArticle"]
    assert not r.record.tool_calls[0].is_error and r.record.tool_calls[1].is_error
    assert r.record.final_response == turns[2]

    messages, tools = env.opening(task.id)
    prompt = start_transcript(fmt, messages, tools).ids
    assert r.ids[: len(prompt)] == prompt == policy.prompts[0]
    # the trained stretches are exactly the sampled ids, nothing else; each turn's prompt is the sequence so far
    runs = spans(r.loss_mask)
    sampled = [r.ids[s:e] for v, s, e in runs if v == 1]
    assert sampled == policy.sampled
    for turn, (_, start, _) in enumerate(run_ for run_ in runs if run_[0] == 1):
        assert policy.prompts[turn] == r.ids[:start]
    assert all(lp == LOGP for lp, m in zip(r.logprobs, r.loss_mask, strict=True) if m)
    assert all(lp == 0.0 for lp, m in zip(r.logprobs, r.loss_mask, strict=True) if not m)
    # between turns: the template's rendering of the real tool results, clipped as the spec says
    between = [fmt.tokenizer.decode(list(r.ids[s:e])) for v, s, e in runs[1:] if v == 0]
    first = r.record.tool_calls[0].result
    titles = [hit["title"] for hit in first["results"]]  # what the tool returned is what the policy read...
    assert "<tool_response>" in between[0] and titles and titles[0][:30] in between[0]
    assert "result cut" in between[0]  # ...clipped to the spec's 600 characters, with the note saying so
    assert "Error" in between[1]
    # and the whole sequence is the chat template's rendering of the conversation it records
    rendered = fmt.render(list(r.record.messages), list(tools))
    assert rendered.startswith(fmt.tokenizer.decode(list(r.ids)))


def test_episodes_sharing_the_in_process_server_and_client_see_only_their_own_world(fmt, task_set, task):
    """One MCP server object and one SDK client for all episodes: each call names its episode in its _meta, a
    write lands in that episode's fork only, and a call naming no episode, or one not opened, is refused."""
    env = CoreCraftEnv(task_set, EpisodeSpec(prompt_form="signatures"), target=McpTarget)

    email = "shared-server-probe@example.com"

    def found(result) -> int:
        assert not result.is_error, result.content
        return len(json.loads(result.content[0].text)["customers"])

    async def go():
        async with env, McpClients() as clients:
            a, b = await env.start(task.id, "ep-a"), await env.start(task.id, "ep-b")
            assert a.mcp.server is b.mcp.server and a.mcp.meta != b.mcp.meta
            async with clients.session(a.mcp) as ta, clients.session(b.mcp) as tb:
                assert ta.client is tb.client  # one connection, tools listed once
                wrote = await ta.call_tool("createCustomer", {"first_name": "Pat", "last_name": "Probe",
                                                              "email": email})
                assert not wrote.is_error, wrote.content
                seen = [found(await t.call_tool("searchCustomers", {"email": email})) for t in (ta, tb)]
                anonymous = await EpisodeTools(ta.client).call_tool("searchCustomers", {"email": email})
                stranger = await EpisodeTools(ta.client, {k: "ep-x" for k in a.mcp.meta}).call_tool(
                    "searchCustomers", {"email": email})
            await env.end("ep-a")
            async with clients.session(b.mcp) as tb:
                ended = await EpisodeTools(tb.client, a.mcp.meta).call_tool("searchCustomers", {"email": email})
            await env.end("ep-b")
            return seen, anonymous, stranger, ended

    seen, anonymous, stranger, ended = asyncio.run(go())
    assert seen == [1, 0]  # the write is in episode a's world only
    for refused in (anonymous, stranger, ended):
        assert refused.is_error and "episode" in refused.content[0].text


@pytest.mark.parametrize("form", ["full", "compact", "signatures"])
def test_the_eval_agent_and_the_rl_agent_give_the_model_the_same_first_prompt(fmt, task_set, task, form):
    """`corecraft eval` (OpenAI messages over MCP) and the RL driver open an episode identically."""
    seen: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": "done"}}]})

    spec = EpisodeSpec(prompt_form=form)
    env = CoreCraftEnv(task_set, spec, target=McpTarget)
    world = task_set.world()

    async def eval_driver(url: str) -> None:
        from corecraft.episode.definition import company_policy

        with world.reader() as reader:
            policy = company_policy(reader.conn) if spec.policy_in_context else ""
        with world.fork() as fork:
            async with ChatClient(ChatConfig(base_url=url, model="m")) as chat, mcp_episode(fork.conn) as tools:
                await run_agent(chat, tools, task.request, policy=policy, spec=spec)

    with ChatEndpoint(handle) as endpoint:
        asyncio.run(eval_driver(endpoint.url))
    body = seen[0]
    eval_ids = fmt.encode(body["messages"], body["tools"], add_generation_prompt=True)
    messages, tools = env.opening(task.id)
    assert eval_ids == list(start_transcript(fmt, messages, tools).ids)
    assert (form == "full") == ("# Company policy" in body["messages"][0]["content"])


def test_both_drivers_clip_a_long_tool_result_alike():
    """The eval agent (corecraft.episode.clip_result) and the RL driver write the same cut and note."""
    from corecraft.episode import clip_result
    from rl_jax.rollout.episode import _tool_message

    long = "x" * 5000
    assert _tool_message(long, "t", None, 600).content == clip_result(long, 600)
    assert _tool_message("short", "t", None, 600).content == clip_result("short", 600) == "short"


def test_prompt_forms_fit_smollm2_in_the_order_of_their_size(fmt, task_set, task):
    sizes = {}
    for form in ("full", "compact", "signatures"):
        env = CoreCraftEnv(task_set, EpisodeSpec(prompt_form=form), target=McpTarget)
        messages, tools = env.opening(task.id)
        sizes[form] = len(start_transcript(fmt, messages, tools).ids)
    assert sizes["signatures"] < sizes["compact"] < 8192 < sizes["full"]


def test_a_malformed_tool_call_is_answered_with_the_parse_error_and_the_episode_goes_on(fmt, task_set, task):
    env = CoreCraftEnv(task_set, EpisodeSpec(prompt_form="signatures", max_turns=4), target=McpTarget)
    policy = ScriptedPolicy(fmt, ['<tool_call>{"name": "searchOrders", "arguments": {oops</tool_call>',
                                  "I could not look it up."])
    r = run(env, policy, task.id)
    assert r.stop_reason == "final" and not r.fault
    assert r.parse_errors == 1 and r.record.turns == 2 and not r.record.tool_calls
    feedback = fmt.tokenizer.decode(list(policy.prompts[1][len(policy.prompts[0]) + len(policy.sampled[0]):]))
    assert "invalid JSON" in feedback


def test_limits_end_an_episode_with_their_reason(fmt, task_set, task):
    loop_forever = [call("searchOrders", status="pending")] * 10
    env = CoreCraftEnv(task_set, EpisodeSpec(prompt_form="signatures", max_turns=2), target=McpTarget)
    r = run(env, ScriptedPolicy(fmt, loop_forever), task.id)
    assert r.stop_reason == "max_turns" and r.record.turns == 2 and not r.fault
    assert 0.0 <= r.reward < 1.0  # graded like any answer

    env = CoreCraftEnv(task_set, EpisodeSpec(prompt_form="signatures", max_turns=8), target=McpTarget)
    messages, tools = env.opening(task.id)
    prompt = len(start_transcript(fmt, messages, tools).ids)
    r = run(env, ScriptedPolicy(fmt, loop_forever), task.id, context=prompt + 60)
    assert r.stop_reason == "context" and len(r.ids) <= prompt + 60

    slow = ScriptedPolicy(fmt, loop_forever, on_turn={1: lambda: time.sleep(1.5)})
    r = run(env, slow, task.id, cfg=RolloutConfig(episode_timeout_s=1.0))
    assert r.stop_reason == "wall_time"


class StalledPolicy(ScriptedPolicy):
    """Answers its first turn, then takes longer than the episode may (awaiting, as a batched generator does)."""

    async def generate(self, prompt, max_new_tokens, key) -> Generation:
        if self.prompts:
            await asyncio.sleep(30)
        return await super().generate(prompt, max_new_tokens, key)


def test_an_episode_out_of_time_while_generating_is_graded_not_dropped(fmt, task_set, task):
    """Episodes share a deadline, so running out of time mid-generation is the usual way wall time ends: it is a
    limit (the episode is graded as it stands), not a fault of the tool server."""
    env = CoreCraftEnv(task_set, EpisodeSpec(prompt_form="signatures", max_turns=8), target=McpTarget)
    started = time.monotonic()
    r = run(env, StalledPolicy(fmt, [call("searchOrders", status="pending"), "never"]), task.id,
            cfg=RolloutConfig(episode_timeout_s=1.5))
    assert r.stop_reason == "wall_time" and not r.fault, (r.stop_reason, r.error)
    assert r.record.turns == 1 and len(r.record.tool_calls) == 1 and 0.0 <= r.reward <= 1.0
    assert time.monotonic() - started < 15


def test_a_judge_that_never_answers_fails_the_grade_not_the_run(fmt, task_set, task):
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(4)  # far past the grade timeout; short enough for the endpoint to shut down
        return web.json_response({})

    judged = dataclasses.replace(task, criteria=(*task.criteria, Criterion(
        "llm1", "llm", "correctness", "The reply is polite.", check="llm")))
    tasks = TaskSet(task_set.root, task_set.manifest, [judged])
    with ChatEndpoint(hang) as endpoint:
        judge = ChatConfig(base_url=endpoint.url, model="judge", timeout_s=20, max_retries=0)
        env = CoreCraftEnv(tasks, EpisodeSpec(prompt_form="signatures"), judge=judge, target=McpTarget)
        assert env.task_ids("train") == [judged.id]
        r = run(env, ScriptedPolicy(fmt, ["Hello."]), judged.id, cfg=RolloutConfig(grade_timeout_s=1.0))
    assert r.stop_reason == "grade_failed" and r.fault and r.reward == 0.0 and "Timeout" in r.error

    no_judge = CoreCraftEnv(tasks, EpisodeSpec(prompt_form="signatures"), target=McpTarget)
    assert no_judge.task_ids("train") == [] and no_judge.left_out("train") == 1


@pytest.fixture()
def http_server(tmp_path, task_set):
    from corecraft_serving import running_http_server

    db = tmp_path / "world.db"
    task_set.world().save(db)
    with running_http_server(db, tmp_path / "serve.log", extra=("--trainer-token", TRAINER_TOKEN)) as server:
        yield server


def test_a_tool_server_killed_mid_episode_ends_it_as_a_fault(fmt, task_set, task, http_server):
    fleet = HttpFleet(http_server.url, http_server.token, trainer_token=TRAINER_TOKEN)
    env = CoreCraftEnv(task_set, EpisodeSpec(prompt_form="signatures", max_turns=4), fleet=fleet, target=McpTarget)

    def kill() -> None:
        http_server.proc.kill()
        http_server.proc.wait()

    policy = ScriptedPolicy(fmt, [call("searchOrders", status="pending"), call("searchOrders", status="shipped"),
                                  "done"], on_turn={1: kill})
    started = time.monotonic()
    r = run(env, policy, task.id, cfg=RolloutConfig(tool_timeout_s=10))
    assert r.stop_reason == "tool_server" and r.fault, r.error
    assert len(r.record.tool_calls) == 1 and not r.record.tool_calls[0].is_error  # the first call went through
    assert time.monotonic() - started < 30


def test_tool_calls_over_http_reach_the_episodes_own_world(fmt, task_set, task, http_server):
    """Over streamable HTTP the episode's tools and its grading reach the same fork on the server, and the
    grade is the one the in-process environment gives for the same episode."""
    fleet = HttpFleet(http_server.url, http_server.token, trainer_token=TRAINER_TOKEN)
    turns = [call("searchOrders", status="pending"), "ok"]
    over_http = CoreCraftEnv(task_set, EpisodeSpec(prompt_form="signatures", max_turns=2), fleet=fleet,
                             target=McpTarget)
    r = run(over_http, ScriptedPolicy(fmt, turns), task.id, episode="h1")
    assert r.stop_reason == "final" and not r.fault, r.error
    assert r.record.tool_calls and not r.record.tool_calls[0].is_error
    local = run(CoreCraftEnv(task_set, EpisodeSpec(prompt_form="signatures", max_turns=2), target=McpTarget),
                ScriptedPolicy(fmt, turns), task.id)
    assert r.grade_details == local.grade_details and r.ids == local.ids
    # a silent episode (no tool call ever reached the server) is graded too: the trainer opened it
    silent = run(over_http, ScriptedPolicy(fmt, ["I cannot help."]), task.id, episode="h2")
    assert silent.stop_reason == "final" and not silent.fault, silent.error


@pytest.mark.parametrize("argv", [["--set", "rollout.group_sise=4"], ["--set", "rollout.group_size=many"],
                                  ["--set", "sampling.temperature=0.7"], ["--set", "rollout.group_size=0"],
                                  ["--preset", "nope"]])
def test_bad_experiment_arguments_are_refused_with_one_line(argv, capsys):
    from experiments.grpo_corecraft import parse_args

    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error" in err, err


def test_a_resume_without_a_run_folder_or_with_another_config_is_refused(tmp_path, capsys):
    from experiments.config import PRESETS
    from experiments.grpo_corecraft import CONFIG_FILE, parse_args
    from experiments.overrides import config_to_dict

    with pytest.raises(SystemExit):
        parse_args(["--resume", str(tmp_path)])
    assert "no config.json" in capsys.readouterr().err
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config_to_dict(PRESETS["tiny"])))
    cfg, run_dir, resume = parse_args(["--resume", str(tmp_path), "--set", "learner.steps=5"])
    assert resume and run_dir == tmp_path and cfg.learner.steps == 5
    with pytest.raises(SystemExit):
        parse_args(["--resume", str(tmp_path), "--set", "rollout.group_size=3"])
    assert "rollout.group_size" in capsys.readouterr().err


def test_a_bad_mesh_fails_with_one_line_and_no_traceback():
    proc = subprocess.run([sys.executable, "experiments/grpo_corecraft.py", "--mesh", "eight"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "error" in proc.stderr, proc.stderr
