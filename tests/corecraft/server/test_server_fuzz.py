"""Hostile calls over streamable HTTP: every one a clean tool error or result, the server stays up, and the
base world is unchanged (the file served, and what a fresh episode sees)."""

from __future__ import annotations

import hashlib

import anyio
import httpx2
from corecraft_fuzz import arguments, id_pool
from corecraft_serving import TOKEN, http_client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corecraft.tools import TOOL_NAMES, TOOLS, call_tool
from corecraft.tools.examples import example_calls

CALLS = 300
PROBES = (("searchCustomers", {}), ("searchOrders", {}), ("searchKnowledgebase", {"kind": "policy"}))


def test_fuzzed_calls_over_http_give_clean_errors_and_leave_the_world_unchanged(http_server, world, world_db):
    fingerprint = hashlib.sha256(world_db.read_bytes()).hexdigest()
    with world.fork() as fork:
        ids, valid = id_pool(fork.conn), example_calls(fork.conn)
        base_view = [call_tool(fork.conn, name, args).data for name, args in PROBES]
    per_tool = {n: arguments(TOOLS[n].input_schema, ids, valid[n]).filter(lambda a: isinstance(a, dict))
                for n in TOOL_NAMES}
    calls = st.sampled_from(TOOL_NAMES).flatmap(lambda n: st.tuples(st.just(n), per_tool[n]))

    with anyio.from_thread.start_blocking_portal() as portal, \
            portal.wrap_async_context_manager(http_client(http_server, "fuzz")) as client:

        @settings(max_examples=CALLS, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(calls)
        def run(call):
            name, args = call
            result = portal.call(client.call_tool, name, args)
            if result.is_error:
                text = result.content[0].text
                assert text != f"Error executing tool {name}", f"{name} crashed on {args!r:.300}"
                assert text.startswith(f"Error executing tool {name}: "), text
            else:
                assert isinstance(result.structured_content, dict)

        run()

    health = httpx2.get(f"{http_server.base}/health", headers={"Authorization": f"Bearer {TOKEN}"})
    assert health.status_code == 200 and http_server.proc.poll() is None

    async def fresh_view():
        async with http_client(http_server, "after-fuzz") as fresh:
            return [(await fresh.call_tool(name, args)).structured_content for name, args in PROBES]

    assert anyio.run(fresh_view) == base_view
    assert hashlib.sha256(world_db.read_bytes()).hexdigest() == fingerprint
