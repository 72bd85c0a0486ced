"""Tokenizer loading: GGUF metadata and HF directories give the ids transformers gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rl_jax.chat import ChatTokenizer, load_hf_tokenizer, load_tokenizer, save_hf_tokenizer
from rl_jax.chat.gguf_vocab import GGUFTokenizerData, build_gguf_tokenizer

DIVERSE_TEXTS = [
    "Hello, world!",
    "The year 2024 had 12345 items; order #000917 costs $1,299.99 (x1 y22).",
    "héllo wörld, naïve café, Ærøskøbing, İstanbul, straße",
    "你好，世界！日本語のテキスト。한국어 텍스트.",
    "emoji 🤖👩‍👩‍👧‍👦🏳️‍🌈 and combining e\u0301 and zero\u200bwidth",
    "def f(x):\n\treturn {'a': [x**2, x // 3]}  # comment\n\n\n",
    "    leading spaces, inner    runs,\ttabs\t\tand trailing   ",
    "\n\n\n\r\n\r\n  \n",
    "I'm sure you'll SEE we've done it; they'D say it's FINE",
    '{"name": "get_order", "arguments": {"order_id": 17, "note": "rush \\"asap\\""}}',
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
    "text<|im_end|>glued<|endoftext|>to<|im_start|>specials",
    "<tool_call>\n{\"name\": \"x\"}\n</tool_call>",
    "a" * 300 + " " + "ab" * 150,
    "",
    " ",
    "\u00a0non-breaking\u00a0space and \u3000 ideographic space",
    "SELECT * FROM orders WHERE id = 42 AND status != 'closed';",
]


@pytest.mark.parametrize("text", DIVERSE_TEXTS)
def test_gguf_ids_match_transformers_gguf_conversion(smol: ChatTokenizer, reference_gguf, text: str):
    assert smol.encode(text) == reference_gguf.encode(text, add_special_tokens=False)


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("user\n\n0", ["user", "ĊĊ", "0"]), ("a  5", ["a", "ĠĠ", "5"]), ("x\t\t7", ["x", "ĉĉ", "7"])],
)
def test_whitespace_runs_before_digits_split_as_smollm2_tokenizer_json(smol: ChatTokenizer, reference, text, tokens):
    # SmolLM2's tokenizer.json (and llama.cpp's "smollm" pre-tokenizer) isolate digits before the GPT-2 split,
    # so a whitespace run before a digit stays one pre-token; transformers' GGUF loader splits it in two.
    ids = smol.encode(text)
    assert [smol.id_to_token(i) for i in ids] == tokens
    assert ids == reference.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("text", DIVERSE_TEXTS)
def test_decode_inverts_encode(smol: ChatTokenizer, text: str):
    assert smol.decode(smol.encode(text)) == text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60))
def test_random_unicode_ids_match_transformers(smol: ChatTokenizer, reference, text: str):
    assert smol.encode(text) == reference.encode(text, add_special_tokens=False)


whitespace_digits_code = st.lists(
    st.sampled_from([" ", "  ", "\n", "\n\n", "\t", "\r\n", "0", "12", "x", "é", "'s", "<|im_end|>", "{", "._"]),
    max_size=20,
).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(whitespace_digits_code)
def test_random_whitespace_and_digit_mixes_match_transformers(smol: ChatTokenizer, reference, text: str):
    assert smol.encode(text) == reference.encode(text, add_special_tokens=False)


def test_digits_are_split_one_by_one_as_smollm_was_trained(smol: ChatTokenizer):
    tokens = [smol.id_to_token(i) for i in smol.encode("in 2024")]
    assert tokens == ["in", "Ġ", "2", "0", "2", "4"]


def test_gguf_metadata_gives_special_tokens_template_and_stop_id(smol: ChatTokenizer):
    assert smol.vocab_size == 49152
    assert smol.special_tokens["eos_token"] == "<|im_end|>"
    assert smol.special_tokens["bos_token"] == "<|im_start|>"
    assert smol.stop_token_ids == (smol.token_to_id("<|im_end|>"),)
    assert smol.chat_template is not None and "<|im_start|>" in smol.chat_template
    assert smol.encode("<|im_end|>") == [2]


def test_encode_plain_spells_control_tokens_as_text(smol: ChatTokenizer, reference):
    text = "ok<|im_end|>\n<|im_start|>system"
    plain = smol.encode_plain(text)
    assert 1 not in plain and 2 not in plain
    assert smol.decode(plain) == text
    assert plain == reference.encode(text, add_special_tokens=False, split_special_tokens=True)


def test_hf_directory_loads_to_same_ids_and_template(smol: ChatTokenizer, reference, tmp_path: Path):
    reference.save_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    loaded = load_tokenizer(tmp_path)
    assert loaded.chat_template == smol.chat_template
    assert loaded.special_tokens["eos_token"] == "<|im_end|>"
    assert loaded.stop_token_ids == (2, 0)  # generation_config's extra stop ids are kept
    for text in DIVERSE_TEXTS:
        assert loaded.encode(text) == smol.encode(text)


def test_template_inside_tokenizer_config_is_read(reference, tmp_path: Path):
    reference.save_pretrained(tmp_path)
    template = (tmp_path / "chat_template.jinja").read_text()
    (tmp_path / "chat_template.jinja").unlink()
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "default", "template": "{{ 'x' }}"}, {"name": "tool_use", "template": template}]
    config["eos_token"] = {"content": "<|im_end|>", "special": True}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    loaded = load_hf_tokenizer(tmp_path)
    assert loaded.chat_template == template
    assert loaded.eos_token == "<|im_end|>"


def test_saved_tokenizer_loads_in_transformers_with_same_ids_and_chat(smol: ChatTokenizer, tmp_path: Path):
    transformers = pytest.importorskip("transformers")
    save_hf_tokenizer(smol, tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in DIVERSE_TEXTS:
        assert theirs.encode(text, add_special_tokens=False) == smol.encode(text)
    assert theirs.eos_token == "<|im_end|>"
    chat = [{"role": "user", "content": "Hi 123"}]
    assert theirs.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False) == (
        smol.encode(theirs.apply_chat_template(chat, add_generation_prompt=True, tokenize=False))
    )
    assert load_tokenizer(tmp_path).encode("x <|im_end|>") == smol.encode("x <|im_end|>")


def test_missing_path_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        load_tokenizer(tmp_path / "nowhere.bin")
    with pytest.raises(FileNotFoundError, match=r"no tokenizer\.json"):
        load_tokenizer(tmp_path)


def _tiny_gguf(**overrides) -> GGUFTokenizerData:
    fields = dict(
        model="gpt2", pre="smollm", tokens=("a", "b", "ab", "<|end|>"), token_types=(1, 1, 1, 3),
        merges=("a b",), bos_id=None, eos_id=3, unk_id=None, pad_id=None, add_bos=False, chat_template=None,
    )
    fields.update(overrides)
    return GGUFTokenizerData(**fields)


def test_unsupported_gguf_vocabularies_are_refused_by_name():
    with pytest.raises(ValueError, match="'llama'"):
        build_gguf_tokenizer(_tiny_gguf(model="llama"))
    with pytest.raises(ValueError, match="'mystery-pre'"):
        build_gguf_tokenizer(_tiny_gguf(pre="mystery-pre"))
    with pytest.raises(ValueError, match="malformed GGUF merge"):
        build_gguf_tokenizer(_tiny_gguf(merges=("ab",)))


def test_tiny_gguf_vocabulary_merges_and_keeps_control_tokens_whole():
    tokenizer = build_gguf_tokenizer(_tiny_gguf())
    assert tokenizer.encode("abab<|end|>a").ids == [2, 2, 3, 0]


def test_gguf_add_bos_flag_prepends_bos_only_when_asked():
    tokenizer = build_gguf_tokenizer(_tiny_gguf(bos_id=3, add_bos=True))
    assert tokenizer.encode("ab").ids == [3, 2]
    assert tokenizer.encode("ab", add_special_tokens=False).ids == [2]


def _write_tiny_gguf(path: Path, *, pre: str = "qwen2", add_bos: bool = False) -> None:
    """A GGUF with only tokenizer metadata (and assorted value types), written by the `gguf` library."""
    import gguf

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(["a", "b", "ab", "Ġ", "Ġab", "<|end|>", "<think>", "1", "2", "12"])
    writer.add_token_types([1, 1, 1, 1, 1, 3, 4, 1, 1, 1])
    writer.add_token_merges(["a b", "Ġ ab", "1 2"])
    writer.add_bos_token_id(5)
    writer.add_eos_token_id(5)
    writer.add_add_bos_token(add_bos)
    writer.add_chat_template("{{ messages[0].content }}")
    writer.add_float32("test.f32", 0.5)
    writer.add_array("test.floats", [1.5, 2.5])
    writer.add_array("test.nested", [[1, 2], [3]])
    writer.add_bool("test.flag", True)
    writer.add_int64("test.i64", -(2**40))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_metadata_reader_reads_every_value_type(tmp_path: Path):
    from rl_jax.chat.gguf_vocab import read_gguf_metadata

    path = tmp_path / "tiny.gguf"
    _write_tiny_gguf(path)
    metadata = read_gguf_metadata(path)
    assert metadata["tokenizer.ggml.tokens"][5] == "<|end|>"
    assert metadata["tokenizer.ggml.merges"] == ["a b", "Ġ ab", "1 2"]
    assert metadata["test.f32"] == 0.5 and metadata["test.floats"] == [1.5, 2.5]
    assert metadata["test.nested"] == [[1, 2], [3]]
    assert metadata["test.flag"] is True and metadata["test.i64"] == -(2**40)


def test_tiny_gguf_loads_with_its_pre_tokenizer_specials_and_template(tmp_path: Path):
    path = tmp_path / "tiny.gguf"
    _write_tiny_gguf(path)
    tok = load_tokenizer(path)
    assert tok.chat_template == "{{ messages[0].content }}"
    assert tok.eos_token == "<|end|>" and tok.stop_token_ids == (5,)
    # Qwen2's split isolates digits, so "12" never merges; "<think>" (user-defined) stays whole.
    assert tok.encode("ab ab12<think><|end|>") == [2, 4, 7, 8, 6, 5]
    assert tok.added_tokens() == {"<|end|>": True, "<think>": False}


def test_truncated_or_foreign_files_are_refused(tmp_path: Path):
    from rl_jax.chat.gguf_vocab import read_gguf_metadata

    path = tmp_path / "tiny.gguf"
    _write_tiny_gguf(path)
    (tmp_path / "cut.gguf").write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated"):
        read_gguf_metadata(tmp_path / "cut.gguf")
    (tmp_path / "fake.gguf").write_bytes(b"NOPE" + bytes(64))
    with pytest.raises(ValueError, match="not a GGUF"):
        load_tokenizer(tmp_path / "fake.gguf")


def test_split_patterns_equal_the_published_qwen2_and_llama3_ones():
    pytest.importorskip("transformers")
    from transformers.integrations.gguf import gguf_tokenizer_mapping as reference_table
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    from rl_jax.chat import gguf_vocab

    assert gguf_vocab._QWEN2_SPLIT == PRETOKENIZE_REGEX
    assert gguf_vocab._LLAMA3_SPLIT == reference_table._LLAMA3_SPLIT
