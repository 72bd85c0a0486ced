"""How a round of prefill pieces becomes program calls: each piece once, at the chunk bucket it needs, rows
within the call's bucket, spare rows carrying smaller pieces."""

from __future__ import annotations

import numpy as np
import pytest

from rl_jax.engine import EngineConfig
from rl_jax.engine.prefill_plan import plan_prefill_calls

CONFIG = EngineConfig(slots=32, chunk=256)  # chunk buckets 64, 128, 256; row buckets 1, 4, 16, 32


def _positions(calls) -> int:
    return sum(c.rows * c.chunk for c in calls)


def test_defaults_are_quarter_half_and_whole_chunks_and_rows_up_to_the_slots():
    assert CONFIG.chunk_buckets == (64, 128, 256)
    assert CONFIG.prefill_rows == (1, 4, 16, 32)
    assert EngineConfig(slots=8, chunk=8, chunk_buckets=(2, 5, 99)).chunk_buckets == (2, 5, 8)
    assert EngineConfig(slots=8).prefill_rows == (1, 4, 8)


def test_a_burst_of_short_prompts_is_one_call_at_the_small_chunk():
    calls = plan_prefill_calls([61] * 32, CONFIG)
    assert [(c.chunk, c.rows, len(c.members)) for c in calls] == [(64, 32, 32)]


def test_a_long_piece_does_not_make_short_ones_pay_its_chunk():
    calls = plan_prefill_calls([1000] + [50] * 31, CONFIG)
    assert [(c.chunk, c.rows) for c in calls] == [(256, 1), (64, 32)]
    assert calls[0].members == (0,)


def test_spare_rows_of_a_call_carry_the_next_largest_pieces():
    pieces = [200] * 13 + [100, 60, 30, 20]
    calls = plan_prefill_calls(pieces, CONFIG)
    assert [(c.chunk, c.rows) for c in calls] == [(256, 16), (64, 1)]
    assert set(calls[0].members) == set(range(16))  # the 13 long ones, then 100, 60, 30
    assert calls[1].members == (16,)


@pytest.mark.parametrize("seed", range(5))
def test_every_piece_is_planned_once_within_its_calls_buckets(seed):
    rng = np.random.default_rng(seed)
    pieces = rng.integers(1, 700, int(rng.integers(1, 60))).tolist()
    calls = plan_prefill_calls(pieces, CONFIG, row_multiple=2)
    members = [i for c in calls for i in c.members]
    assert sorted(members) == list(range(len(pieces)))
    for call in calls:
        assert call.chunk in CONFIG.chunk_buckets and call.rows % 2 == 0
        assert len(call.members) <= call.rows
        assert all(min(pieces[i], CONFIG.chunk) <= call.chunk for i in call.members)
    # never more positions than one call per piece at its own bucket would compute
    assert _positions(calls) <= sum(2 * CONFIG.chunk_for(min(p, CONFIG.chunk)) for p in pieces)


def test_an_empty_piece_is_refused():
    with pytest.raises(ValueError, match="hold a token"):
        plan_prefill_calls([3, 0], CONFIG)
