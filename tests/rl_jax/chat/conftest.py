"""Fixtures: our tokenizer and transformers' reference, both built from the embedded SmolLM2 GGUF."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from tokenizers import pre_tokenizers

from rl_jax.chat import ChatFormat, ChatTokenizer, default_gguf_path, load_tokenizer

QWEN25_TEMPLATE_FILE = Path(__file__).with_name("qwen25_tools.jinja")


@pytest.fixture(scope="session")
def smol() -> ChatTokenizer:
    return load_tokenizer()


@pytest.fixture(scope="session")
def reference_gguf():
    """transformers' own GGUF conversion of the same file, as it comes (test-only reference)."""
    transformers = pytest.importorskip("transformers")
    path = default_gguf_path()
    return transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.fixture(scope="session")
def reference(reference_gguf):
    """transformers' tokenizer with the pre-tokenizer SmolLM2's own tokenizer.json ships.

    transformers' GGUF loader has no entry for the file's `tokenizer.ggml.pre = "smollm"` and falls back to
    the plain GPT-2 split, which differs from the checkpoint (and llama.cpp) where a whitespace run meets a
    digit ("\n\n0"). SmolLM2's tokenizer.json isolates digits first: Digits(individual) then ByteLevel.
    """
    fixed = copy.deepcopy(reference_gguf)
    fixed.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    return fixed


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
