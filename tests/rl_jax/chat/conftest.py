"""Fixtures: our tokenizer and transformers' reference, both built from the embedded SmolLM2 GGUF."""

from __future__ import annotations

from pathlib import Path

import pytest

from rl_jax.chat import ChatFormat, ChatTokenizer, default_gguf_path, load_tokenizer

QWEN25_TEMPLATE_FILE = Path(__file__).with_name("qwen25_tools.jinja")


@pytest.fixture(scope="session")
def smol() -> ChatTokenizer:
    return load_tokenizer()


@pytest.fixture(scope="session")
def reference():
    """transformers' own GGUF conversion of the same file (test-only reference)."""
    transformers = pytest.importorskip("transformers")
    path = default_gguf_path()
    return transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.fixture(scope="session")
def qwen_template() -> str:
    """Qwen2.5-Instruct's chat template (tool support, Hermes <tool_call> format), as published."""
    return QWEN25_TEMPLATE_FILE.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def smol_format(smol: ChatTokenizer) -> ChatFormat:
    return ChatFormat.create(smol)


@pytest.fixture(scope="session")
def qwen_format(smol: ChatTokenizer, qwen_template: str) -> ChatFormat:
    return ChatFormat.create(smol, template=qwen_template)
