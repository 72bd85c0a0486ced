"""bench_engine's necessary-work bound: the FLOP counts it divides, checked against a position-by-position count.

(The benchmark itself runs SmolLM2 for tens of minutes; its engines are tested in tests/rl_jax/engine and serve.)
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments" / "benchmarks"))

import bench_engine  # noqa: E402

CFG = SimpleNamespace(hidden_size=8, head_dim=2, num_heads=4, num_kv_heads=2, intermediate_size=12, num_layers=3)


def _position_by_position(first: int, end: int) -> float:
    weights = 8 * 2 * (2 * 4 + 2 * 2) + 3 * 8 * 12
    return sum(3 * (2.0 * weights + 4.0 * 4 * 2 * (p + 1)) for p in range(first, end))


@pytest.mark.parametrize(("first", "end"), [(0, 1), (0, 37), (5, 6), (100, 260)])
def test_segment_flops_count_every_position_against_its_keys(first, end):
    assert bench_engine._segment_flops(CFG, first, end) == pytest.approx(_position_by_position(first, end))


def test_the_engine_prefills_each_token_once_and_the_baseline_every_history():
    prompts = [[1] * 50 + [2, 3], [1] * 50 + [4, 5, 6]]  # 50 shared tokens
    one = bench_engine.necessary_prefill_flops(CFG, prompts, turns=1, new_tokens=4, tool_tokens=10)
    assert one["engine"] == pytest.approx(one["baseline"])  # one turn: nothing seen before
    three = bench_engine.necessary_prefill_flops(CFG, prompts, turns=3, new_tokens=4, tool_tokens=10)
    # the engine: the head once, each prompt's tail, then each turn's 10 tool tokens after its history
    engine = _position_by_position(0, 50) + sum(
        _position_by_position(50, len(p)) + sum(_position_by_position(h - 10, h) for h in (len(p) + 14, len(p) + 28))
        for p in prompts)
    baseline = 3 * _position_by_position(0, 50) + sum(
        _position_by_position(50, len(p) + t * 14) for p in prompts for t in range(3))
    assert three["engine"] == pytest.approx(engine) and three["baseline"] == pytest.approx(baseline)
