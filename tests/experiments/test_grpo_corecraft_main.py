"""The main entry point, end to end on a tiny random policy: world, tasks, sampler, tools and judge wired."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest
from flax import nnx

from experiments.config import EnvConfig, ExperimentConfig, PolicyConfig, RolloutConfig
from experiments.grpo_corecraft import parse_args
from experiments.smoke import run_smoke
from rl_jax.chat import load_tokenizer, save_hf_tokenizer
from rl_jax.models import ModelConfig, Transformer, save_pretrained

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer and chat template, as an HF checkpoint on disk."""
    tok = load_tokenizer()
    cfg = ModelConfig.from_hf({
        "model_type": "llama", "vocab_size": tok.tokenizer.get_vocab_size(), "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 8192, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
    })
    out = tmp_path_factory.mktemp("tiny_policy")
    save_pretrained(Transformer(cfg, rngs=nnx.Rngs(0), dtype=jnp.float32), out)
    save_hf_tokenizer(tok, out)
    return out


def test_main_job_runs_episodes_through_tools_and_judge(tiny_checkpoint):
    cfg = ExperimentConfig(
        env=EnvConfig(num_tasks=2), policy=PolicyConfig(checkpoint=str(tiny_checkpoint)),
        rollout=RolloutConfig(max_new_tokens=8),
    )
    summary = run_smoke(cfg)
    assert summary["episodes"] == 2
    assert summary["world_entities"] >= 2500 and summary["entity_types"] >= 14
    assert summary["tasks_total"] >= 1150
    assert 2 <= summary["new_tokens"] <= 16
    assert 0.0 <= summary["mean_reward"] <= 1.0
    # A random policy writes no valid tool call: the judge must not pay it for the task.
    assert summary["mean_reward"] < 1.0


def test_mesh_flag_is_parsed_into_the_config():
    assert parse_args(["--mesh", "8x4", "--num-tasks", "3"]).mesh == "8x4"
    assert parse_args(["--num-tasks", "3"]).env.num_tasks == 3


@pytest.mark.parametrize("argv", [["--mesh", "eight"], ["--mesh", "0x4"], ["--num-tasks", "0"]])
def test_bad_arguments_fail_with_one_line_and_no_traceback(argv):
    proc = subprocess.run([sys.executable, "experiments/grpo_corecraft.py", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "error" in proc.stderr


def test_summary_is_one_json_line(tiny_checkpoint, capsys, monkeypatch):
    from experiments.grpo_corecraft import main

    # main, an entry point, sets XLA_FLAGS for the process; restored after this test so later tests' child
    # processes start JAX as this one did (a resume test compares them bit for bit)
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))

    assert main(["--checkpoint", str(tiny_checkpoint), "--num-tasks", "1", "--max-new-tokens", "4"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last)["episodes"] == 1
