"""Property-based fuzzing, in process, of all 23 tools: thousands of hostile calls, every one a clean result.

A clean error names its problem (never the bare crash text); a failing write changes nothing; the base world
never changes.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from corecraft_fuzz import arguments, id_pool
from hypothesis import HealthCheck, given, settings

from corecraft.tools import TOOL_NAMES, TOOLS, call_tool
from corecraft.tools.examples import example_calls

EXAMPLES_PER_TOOL = 110  # x 23 tools: about 2,500 calls


@pytest.fixture(scope="module")
def shared(world):
    """One long-lived fork the whole fuzz run writes into, plus the base world's fingerprint."""
    fingerprint = hashlib.sha256(world.serialize()).hexdigest()
    fork = world.fork()
    yield fork, id_pool(fork.conn), example_calls(fork.conn)
    fork.close()
    assert hashlib.sha256(world.serialize()).hexdigest() == fingerprint, "the base world changed"


@pytest.mark.parametrize("name", TOOL_NAMES)
def test_fuzzed_calls_give_clean_results(shared, name):
    fork, ids, valid = shared
    spec = TOOLS[name]

    @settings(max_examples=EXAMPLES_PER_TOOL, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(arguments(spec.input_schema, ids, valid[name]))
    def run(args):
        before = fork.conn.serialize() if spec.writes else None
        result = call_tool(fork.conn, name, args)
        if result.is_error:
            assert result.text != f"Error executing tool {name}", f"{name} crashed on {args!r:.300}"
            assert result.text.startswith(f"Error executing tool {name}: "), result.text
            assert result.data is None
            if before is not None:
                assert fork.conn.serialize() == before, f"failed {name} call changed the database"
        else:
            assert json.loads(result.text) == result.data

    run()
