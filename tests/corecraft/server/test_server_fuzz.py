"""Hostile calls over streamable HTTP: every one a clean tool error or result, the server stays up, the base
world (the file it serves) is unchanged."""

from __future__ import annotations

import hashlib

import anyio
import httpx2
from corecraft_fuzz import arguments, id_pool
from corecraft_serving import TOKEN, http_client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corecraft.tools import TOOL_NAMES, TOOLS
from corecraft.tools.examples import example_calls

CALLS = 300


def test_fuzzed_calls_over_http_give_clean_errors_and_leave_the_world_unchanged(http_server, world, world_db):
    fingerprint = hashlib.sha256(world_db.read_bytes()).hexdigest()
    with world.fork() as fork:
        ids, valid = id_pool(fork.conn), example_calls(fork.conn)
    with anyio.from_thread.start_blocking_portal() as portal:
        client_cm = http_client(http_server, "fuzz")
        client = portal.call(client_cm.__aenter__)
        try:

            strategies = {n: arguments(TOOLS[n].input_schema, ids, valid[n]).filter(lambda a: isinstance(a, dict))
                          for n in TOOL_NAMES}

            @settings(max_examples=CALLS, deadline=None, derandomize=True, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
            @given(st.sampled_from(TOOL_NAMES).flatmap(lambda n: st.tuples(st.just(n), strategies[n])))
            def run(call):
                name, args = call
                result = portal.call(client.call_tool, name, args)
                if result.is_error:
                    text = result.content[0].text
                    assert text.startswith(f"Error executing tool {name}: "), text
                else:
                    assert isinstance(result.structured_content, dict)

            run()
        finally:
            portal.call(client_cm.__aexit__, None, None, None)
    health = httpx2.get(f"{http_server.base}/health", headers={"Authorization": f"Bearer {TOKEN}"})
    assert health.status_code == 200 and http_server.proc.poll() is None
    assert hashlib.sha256(world_db.read_bytes()).hexdigest() == fingerprint
