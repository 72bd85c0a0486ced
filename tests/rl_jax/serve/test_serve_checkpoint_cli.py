"""Serving a training checkpoint: the step's trained parameters replace the base model's weights (the base found
in the checkpoint's record), and ``python -m rl_jax.serve --checkpoint RUN`` answers over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import chex
import jax
import pytest
from flax import nnx
from serve_helpers import tiny_config, tiny_model

from rl_jax.chat import load_chat_format
from rl_jax.chat.tokenizer import save_hf_tokenizer
from rl_jax.models.export import save_pretrained
from rl_jax.serve.loading import load_checkpoint, load_model
from rl_jax.train import Checkpointer, OptimizerConfig, make_optimizer
from rl_jax.train.state import init_train_state, split_model

CONTEXT = 256
STEP = 3


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, nnx.State]:
    """A run folder as the learner writes it: checkpoints/<step>/, and config.json naming an HF base model."""
    root = tmp_path_factory.mktemp("run")
    fmt = load_chat_format()
    config = tiny_config(vocab_size=fmt.tokenizer.vocab_size, context=CONTEXT)
    base = root / "base"
    save_pretrained(tiny_model(config, seed=0), base)
    save_hf_tokenizer(fmt.tokenizer, base)
    trained = tiny_model(config, seed=1)  # other weights: what training changed
    _, params, frozen = split_model(trained)
    state = init_train_state(params, frozen, make_optimizer(OptimizerConfig()))
    # as the learner writes them: the resolved config in the run folder, none in the checkpoint's record
    with Checkpointer(root / "run" / "checkpoints", async_save=False) as checkpointer:
        checkpointer.save(state, step=STEP, force=True)
    (root / "run" / "config.json").write_text(json.dumps({"policy": {"checkpoint": str(base), "dtype": "float32"}}))
    return root / "run", params


def test_the_checkpoints_parameters_replace_the_base_weights(run) -> None:
    folder, trained = run
    served = load_checkpoint(str(folder))
    _, params, _ = nnx.split(served.model, nnx.Param, ...)
    chex.assert_trees_all_close(nnx.to_pure_dict(params), nnx.to_pure_dict(trained))
    assert served.name == f"run-step{STEP}"
    same = load_checkpoint(str(folder / "checkpoints" / str(STEP)))  # one step's folder names the same
    assert same.name == served.name
    _, base_params, _ = nnx.split(load_model(str(folder.parent / "base")).model, nnx.Param, ...)
    # every weight matrix differs from the base's (norm scales are ones in both): the test could fail
    differs = jax.tree.map(lambda a, b: a.ndim < 2 or bool((a != b).any()), nnx.to_pure_dict(base_params),
                           nnx.to_pure_dict(trained))
    assert all(jax.tree.leaves(differs))


def test_a_folder_without_checkpoints_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint step found"):
        load_checkpoint(str(tmp_path))


@pytest.mark.timeout(300)
def test_the_command_line_serves_a_checkpoint(run) -> None:
    folder, _ = run
    command = [sys.executable, "-m", "rl_jax.serve", "--checkpoint", str(folder), "--port", "0", "--engine", "plain",
               "--api-key", "k", "--default-max-tokens", "4"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "JAX_PLATFORMS": "cpu"})
    try:
        deadline = time.monotonic() + 240
        line = ""
        while "serving" not in line:
            assert time.monotonic() < deadline and process.poll() is None, f"no start-up line; last: {line!r}"
            line = process.stdout.readline()
        url = re.search(r"at (http://\S+/v1)", line).group(1)
        assert f"run-step{STEP}" in line and "API key required" in line

        async def ask() -> tuple[dict, dict]:
            headers = {"Authorization": "Bearer k"}
            async with aiohttp.ClientSession(headers=headers) as session:
                async with session.get(url + "/models") as models:
                    listed = await models.json()
                async with session.post(url + "/chat/completions", json={
                        "model": f"run-step{STEP}", "messages": [{"role": "user", "content": "hi"}],
                        "temperature": 0}) as reply:
                    return listed, await reply.json()

        listed, reply = asyncio.run(ask())
        assert [m["id"] for m in listed["data"]] == [f"run-step{STEP}"]
        assert reply["object"] == "chat.completion" and 1 <= reply["usage"]["completion_tokens"] <= 4
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert process.returncode == 0
