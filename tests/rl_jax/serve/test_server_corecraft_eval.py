"""``corecraft eval`` end to end against the server: the real harness, the shipped tasks and MCP tools, our
server as both the agent's model and the LLM judge. The model is a tiny random one, so the task fails; what is
tested is that every request the harness makes (23 tools, tool_choice, max_tokens, judge prompts) is served."""

from __future__ import annotations

import argparse
import json

import pytest
from serve_helpers import ServerThread, tiny_config, tiny_model

from corecraft.eval.cli import register
from rl_jax.chat import load_chat_format
from rl_jax.engine.config import EngineConfig
from rl_jax.engine.engine import SlotEngine
from rl_jax.serve import ChatService, ServeConfig

CONTEXT = 8192
NAME = "tiny-smol"


def _corecraft(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="corecraft")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


@pytest.mark.timeout(900)
def test_corecraft_eval_runs_against_the_server(tmp_path) -> None:
    fmt = load_chat_format()
    model = tiny_model(tiny_config(vocab_size=fmt.tokenizer.vocab_size, context=CONTEXT))
    engine = SlotEngine(model, EngineConfig(slots=4, max_len=CONTEXT, chunk=512, prefill_rows=(1, 4),
                                            decode_steps=8))
    service = ChatService(engine, fmt, ServeConfig(model_name=NAME, default_max_tokens=16))
    out = tmp_path / "eval"
    with ServerThread(service) as server:
        code = _corecraft(["eval", "--base-url", server.url, "--model", NAME, "--judge-base-url", server.url,
                           "--judge-model", NAME, "--split", "eval", "--difficulty", "easy", "--limit", "1",
                           "--k", "1", "--max-steps", "2", "--max-tokens", "16", "--prompt-form", "compact",
                           "--timeout", "600", "--retries", "0", "--out", str(out), "--no-progress"])
    assert code == 0
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert len(runs) == 1 and summary["overall"]["runs"] == 1
    assert runs[0]["turns"] >= 1 and "error" not in (runs[0].get("status") or "")
