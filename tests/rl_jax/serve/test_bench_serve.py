"""bench_serve's measurement on a tiny model: both paths produce the same tokens, and a ratio comes out."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from serve_helpers import tiny_config, tiny_model

from rl_jax.chat import load_chat_format
from rl_jax.engine.sampler_engine import SamplerEngine
from rl_jax.sampling import Sampler

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "experiments" / "benchmarks"))

import bench_serve


def test_server_over_engine_measures_both_paths_on_the_same_tokens() -> None:
    fmt = load_chat_format()
    model = tiny_model(tiny_config(vocab_size=fmt.tokenizer.vocab_size, context=512))
    engine = SamplerEngine(Sampler(model, pad_id=fmt.tokenizer.pad_token_id or 0), context_limit=512)
    lines: list[str] = []

    async def run() -> dict:
        try:
            return await bench_serve.server_over_engine(engine, fmt, clients=4, max_tokens=4, rounds=1,
                                                        progress=lines.append)
        finally:
            await engine.aclose()

    result = asyncio.run(run())
    assert result["server_over_engine"] > 0 and result["clients"] == 4
    engine_line, server_line = lines[-2:]
    # greedy, same prompts and stops: the two paths produced the same number of tokens
    assert engine_line.split(": ")[1].split(" tokens")[0] == server_line.split(": ")[1].split(" tokens")[0]
