"""Hostile calls through the real MCP SDK client, over streamable HTTP and over stdio: thousands across all 23
tools, every one a clean tool error or a result; the server stays up; the base world is unchanged (the file
served, and what a fresh episode sees).

Hypothesis draws the calls in batches that are sent at once, so a run also has many requests in flight on a
server (several episodes over HTTP, one stdio process), and its time goes to the calls rather than waiting on
each round trip.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import Any

import anyio
import httpx2
import pytest
from anyio.from_thread import BlockingPortal
from corecraft_fuzz import arguments, id_pool
from corecraft_serving import TOKEN, http_client, stdio_params
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp_types import CallToolResult

from corecraft.tools import TOOL_NAMES, TOOLS, call_tool
from corecraft.tools.examples import example_calls

CALLS = 2_500  # per transport
BATCH = 10  # calls per Hypothesis example, sent concurrently
HTTP_EPISODES = 4
PROBES = (("searchCustomers", {}), ("searchOrders", {}), ("searchKnowledgebase", {"kind": "policy"}))

Call = tuple[str, dict[str, Any]]


@pytest.fixture(scope="module")
def fuzz_setup(world) -> tuple[st.SearchStrategy[Call], list[Any]]:
    """The strategy for one call (any tool, hostile arguments) and what PROBES show in the base world."""
    with world.fork() as fork:
        ids, valid = id_pool(fork.conn), example_calls(fork.conn)
        base_view = [call_tool(fork.conn, name, args).data for name, args in PROBES]
    per_tool = {n: arguments(TOOLS[n].input_schema, ids, valid[n]).filter(lambda a: isinstance(a, dict))
                for n in TOOL_NAMES}
    calls = st.sampled_from(TOOL_NAMES).flatmap(lambda n: st.tuples(st.just(n), per_tool[n]))
    return calls, base_view


async def _send(clients: list[Client], batch: list[Call]) -> list[CallToolResult]:
    """The whole batch at once, spread over the clients (episodes) round robin."""
    results: list[CallToolResult | None] = [None] * len(batch)

    async def one(i: int) -> None:
        name, args = batch[i]
        results[i] = await clients[i % len(clients)].call_tool(name, args)

    async with anyio.create_task_group() as tg:
        for i in range(len(batch)):
            tg.start_soon(one, i)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def _check(name: str, args: dict[str, Any], result: CallToolResult) -> None:
    if result.is_error:
        text = result.content[0].text
        # The bare text is what the SDK sends for an exception it did not expect: a crash, not a tool error.
        assert text != f"Error executing tool {name}", f"{name} crashed on {args!r:.300}"
        assert text.startswith(f"Error executing tool {name}: "), text
    else:
        assert isinstance(result.structured_content, dict), f"{name}: {result.content!r:.300}"


def _fuzz(portal: BlockingPortal, clients: list[Client], calls: st.SearchStrategy[Call]) -> int:
    """Send CALLS hostile calls in batches; returns how many were sent and checked."""
    sent = 0

    # No shrinking: each step would replay batches against the server (minutes), and the failure message
    # already names the offending call.
    @settings(max_examples=CALLS // BATCH, deadline=None, derandomize=True, database=None,
              phases=[Phase.generate], suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(calls, min_size=BATCH, max_size=BATCH))
    def run(batch: list[Call]) -> None:
        nonlocal sent
        for (name, args), result in zip(batch, portal.call(_send, clients, batch), strict=True):
            _check(name, args, result)
        sent += len(batch)

    run()
    return sent


async def _probe(client: Client) -> list[Any]:
    return [(await client.call_tool(name, args)).structured_content for name, args in PROBES]


@contextlib.contextmanager
def _portal() -> Iterator[BlockingPortal]:
    # The SDK client is async; Hypothesis drives a plain function: a portal runs the client's loop in a thread.
    with anyio.from_thread.start_blocking_portal() as portal:
        yield portal


@pytest.mark.slow  # about a minute on the loaded 2-core CI machine (2,500 calls)
def test_thousands_of_fuzzed_calls_over_http_give_clean_errors_and_leave_the_world_unchanged(
    http_server, world_db, fuzz_setup
):
    calls, base_view = fuzz_setup
    fingerprint = hashlib.sha256(world_db.read_bytes()).hexdigest()
    with _portal() as portal, contextlib.ExitStack() as stack:
        clients = [stack.enter_context(portal.wrap_async_context_manager(http_client(http_server, f"fuzz-{n}")))
                   for n in range(HTTP_EPISODES)]
        assert _fuzz(portal, clients, calls) >= CALLS * 0.9

    health = httpx2.get(f"{http_server.base}/health", headers={"Authorization": f"Bearer {TOKEN}"})
    assert health.status_code == 200 and http_server.proc.poll() is None

    async def fresh_view() -> list[Any]:
        async with http_client(http_server, "after-fuzz") as fresh:
            return await _probe(fresh)

    assert anyio.run(fresh_view) == base_view
    assert hashlib.sha256(world_db.read_bytes()).hexdigest() == fingerprint


@pytest.mark.slow  # about a minute on the loaded 2-core CI machine (2,500 calls)
def test_thousands_of_fuzzed_calls_over_stdio_give_clean_errors_and_leave_the_world_unchanged(world_db, fuzz_setup):
    calls, base_view = fuzz_setup
    fingerprint = hashlib.sha256(world_db.read_bytes()).hexdigest()
    with _portal() as portal, portal.wrap_async_context_manager(Client(stdio_params(world_db))) as client:
        assert _fuzz(portal, [client], calls) >= CALLS * 0.9
        # The same process still serves: a valid call after thousands of hostile ones.
        after = portal.call(client.call_tool, "getLoyaltyTier", {"tier_id": "gold"})
        assert not after.is_error and after.structured_content["tiers"][0]["tier_id"] == "gold"

    async def fresh_view() -> list[Any]:
        async with Client(stdio_params(world_db)) as fresh:  # a new process: a new episode on the base world
            return await _probe(fresh)

    assert anyio.run(fresh_view) == base_view
    assert hashlib.sha256(world_db.read_bytes()).hexdigest() == fingerprint
