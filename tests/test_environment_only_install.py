"""`pip install .` (no extras) in a fresh virtualenv: the environment, server, tasks, judge and eval harness, and
none of the trainer's stack. The server is then driven over stdio by the real MCP SDK client, and `corecraft
eval --help` runs, from that venv alone, outside any checkout (the world data and the shipped task set come with
the install).

Needs the package index that `make test` installs from (about 20 s of installing on the CI machine)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

REPO = Path(__file__).resolve().parents[1]
TRAINER_STACK = ("jax", "flax", "optax", "orbax", "chex", "tokenizers", "gguf", "numpy", "torch")


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("core_install")
    # The package as `pip install .` sees it, copied so the build writes nothing into the working tree.
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for package in ("corecraft", "rl_jax"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "worlds", src / "worlds", ignore=shutil.ignore_patterns("world.db"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # -v: the build backend's warnings are shown (pip hides them otherwise)
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-v", str(src)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # setuptools' deprecation warning about a `project.license` table is gone (the SPDX `license` string)
    assert "project.license" not in done.stdout + done.stderr
    return venv


@pytest.mark.slow
def test_the_core_install_has_no_trainer_stack(core_venv):
    probe = f"import importlib.util as u; print(' '.join(m for m in {TRAINER_STACK!r} if u.find_spec(m)))"
    found = subprocess.run([str(core_venv / "bin" / "python"), "-c", probe], capture_output=True, text=True,
                           timeout=60, check=True).stdout.split()
    assert found == []
    for module in ("corecraft.server.app", "corecraft.eval.runner", "corecraft.judge.grader", "corecraft.tasks.store"):
        subprocess.run([str(core_venv / "bin" / "python"), "-c", f"import {module}"], check=True, timeout=120)


@pytest.mark.slow
def test_corecraft_eval_help_runs_from_the_core_install(core_venv):
    done = subprocess.run([str(core_venv / "bin" / "corecraft"), "eval", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--tool-choice" in done.stdout and "--max-tokens" in done.stdout and "--prompt-form" in done.stdout


@pytest.mark.slow
def test_corecraft_serve_from_the_core_install_answers_mcp(core_venv, tmp_path):
    params = StdioServerParameters(command=str(core_venv / "bin" / "corecraft"),
                                   args=["serve", "--seed", "0", "--scale", "0.1"], cwd=str(tmp_path))

    async def session() -> tuple[list[str], bool]:
        async with Client(params) as client:
            tools = [t.name for t in (await client.list_tools()).tools]
            result = await client.call_tool("getLoyaltyTier", {"tier_id": "gold"})
            return tools, bool(result.is_error)

    tools, is_error = asyncio.run(asyncio.wait_for(session(), 300))
    assert len(tools) == 23 and "getOrderDetails" in tools and not is_error


@pytest.mark.slow
def test_the_shipped_task_set_comes_with_the_core_install(core_venv, tmp_path):
    done = subprocess.run([str(core_venv / "bin" / "corecraft"), "tasks", "stats", "--json"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tasks"] == json.loads((REPO / "worlds/tasks/v1/manifest.json").read_text())["tasks"]
