"""Rebuild a Hugging Face `tokenizers.Tokenizer` from a GGUF file's tokenizer metadata.

A GGUF carries no tokenizer.json: it stores the vocabulary, merges, token types and special ids under
llama.cpp's `tokenizer.ggml.*` keys, and names the pre-tokenizer (how text is split before BPE) only by a
label, `tokenizer.ggml.pre`. We map that label to the split the vocabulary was trained with, following
llama.cpp's own table (llama-vocab.cpp), so ids match the original tokenizer.json of the checkpoint.
(transformers 5.x's GGUF loader knows no "smollm" label and splits SmolLM2 text with the plain GPT-2 regex;
its ids then differ from the checkpoint's wherever a whitespace run meets a digit, e.g. "\n\n0".)

Only byte-level BPE vocabularies (`tokenizer.ggml.model == "gpt2"`: SmolLM, Qwen, Llama 3, ...) are
supported; SentencePiece ones should be loaded from their Hugging Face directory instead.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gguf
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

# llama.cpp token types (gguf.TokenType): CONTROL tokens are special (never produced from plain text),
# USER_DEFINED tokens are added tokens matched whole in text but not special.
_CONTROL = int(gguf.TokenType.CONTROL)
_USER_DEFINED = int(gguf.TokenType.USER_DEFINED)

# Split patterns from the tokenizer.json files of the model families that use them.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# `tokenizer.ggml.pre` label -> the family of split it names (see llama.cpp's pre-type switch).
_PRE_TOKENIZER_FAMILY: dict[str, str] = {
    **dict.fromkeys(("default", "gpt-2", "gpt2", "mpt", "olmo", "jais"), "gpt2"),
    # GPT-2 regex after isolating every digit: SmolLM's tokenizer.json is Digits + ByteLevel.
    **dict.fromkeys(
        ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"), "gpt2-digits"
    ),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez"), "qwen2"),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "dbrx", "falcon3"), "llama3"),
}


def _pre_tokenizer(label: str) -> pre_tokenizers.PreTokenizer:
    family = _PRE_TOKENIZER_FAMILY.get(label)
    if family is None:
        raise ValueError(
            f"GGUF pre-tokenizer {label!r} is not supported (known: {sorted(_PRE_TOKENIZER_FAMILY)}); "
            "load the checkpoint's Hugging Face tokenizer.json instead."
        )
    byte_level_gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if family == "gpt2":
        return byte_level_gpt2
    if family == "gpt2-digits":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level_gpt2])
    split = _QWEN2_SPLIT if family == "qwen2" else _LLAMA3_SPLIT
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )


@dataclass(frozen=True)
class GGUFTokenizerData:
    """What a GGUF file says about its tokenizer, with llama.cpp's key names resolved."""

    model: str
    pre: str
    tokens: tuple[str, ...]
    token_types: tuple[int, ...]
    merges: tuple[str, ...]
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    chat_template: str | None


# GGUF metadata value types (gguf.GGUFValueType) -> struct format of one scalar.
_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class _MetadataCursor:
    """Reads GGUF's little-endian key/value section from a memory map, front to back."""

    def __init__(self, buffer: mmap.mmap, path: str) -> None:
        self.buffer, self.offset, self.path = buffer, 0, path

    def scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack_from("<" + fmt, self.buffer, self.offset)
        self.offset += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.scalar("Q")
        start, self.offset = self.offset, self.offset + length
        if self.offset > len(self.buffer):
            raise ValueError(f"{self.path}: truncated GGUF metadata")
        return bytes(self.buffer[start : self.offset]).decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind, count = self.scalar("I"), self.scalar("Q")
            if item_kind in _SCALAR_FORMATS:
                fmt = f"<{count}{_SCALAR_FORMATS[item_kind]}"
                items = list(struct.unpack_from(fmt, self.buffer, self.offset))
                self.offset += struct.calcsize(fmt)
                return items
            return [self.value(item_kind) for _ in range(count)]
        if kind not in _SCALAR_FORMATS:
            raise ValueError(f"{self.path}: unknown GGUF metadata type {kind}")
        return self.scalar(_SCALAR_FORMATS[kind])


def read_gguf_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """All key/value metadata of a GGUF file; tensor data is never touched.

    `gguf.GGUFReader` gives the same values but builds a numpy view per array element and indexes every
    tensor first: about 4 s for SmolLM2's 100k-entry vocabulary, against ~0.1 s here.
    """
    name = os.fspath(path)
    with open(name, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
        cursor = _MetadataCursor(buffer, name)
        if bytes(buffer[:4]) != b"GGUF":
            raise ValueError(f"{name} is not a GGUF file (bad magic)")
        cursor.offset = 4
        version = cursor.scalar("I")
        if version not in (2, 3):
            raise ValueError(f"{name}: unsupported GGUF version {version} (big-endian or too new?)")
        cursor.scalar("Q")  # tensor count
        count = cursor.scalar("Q")
        metadata: dict[str, Any] = {}
        try:
            for _ in range(count):
                key = cursor.string()
                metadata[key] = cursor.value(cursor.scalar("I"))
        except struct.error as error:
            raise ValueError(f"{name}: truncated GGUF metadata") from error
        return metadata


def read_gguf_tokenizer_data(path: str | os.PathLike[str]) -> GGUFTokenizerData:
    """The `tokenizer.*` metadata of a GGUF file."""
    metadata = read_gguf_metadata(path)
    model = metadata.get("tokenizer.ggml.model")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if model is None or tokens is None:
        raise ValueError(f"{os.fspath(path)} has no tokenizer metadata (tokenizer.ggml.model/tokens)")
    token_types = metadata.get("tokenizer.ggml.token_type") or [int(gguf.TokenType.NORMAL)] * len(tokens)
    return GGUFTokenizerData(
        model=model,
        pre=metadata.get("tokenizer.ggml.pre", "default"),
        tokens=tuple(tokens),
        token_types=tuple(int(t) for t in token_types),
        merges=tuple(metadata.get("tokenizer.ggml.merges") or ()),
        bos_id=metadata.get("tokenizer.ggml.bos_token_id"),
        eos_id=metadata.get("tokenizer.ggml.eos_token_id"),
        unk_id=metadata.get("tokenizer.ggml.unknown_token_id"),
        pad_id=metadata.get("tokenizer.ggml.padding_token_id"),
        add_bos=bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
        chat_template=metadata.get("tokenizer.chat_template"),
    )


def _byte_level_spelling(tokens: Sequence[str], token_types: Sequence[int]) -> dict[str, int]:
    """Vocabulary keyed the way byte-level BPE looks tokens up.

    Ordinary tokens are already written in GPT-2's 256-character byte alphabet. A few converters write one
    in plain UTF-8 instead; respell those byte by byte so BPE can reach them. Control and user-defined tokens
    keep their text: they are matched whole as added tokens, never built by merges.
    """
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    to_bytes = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    vocab: dict[str, int] = {}
    for index, (token, kind) in enumerate(zip(tokens, token_types, strict=True)):
        if kind not in (_CONTROL, _USER_DEFINED) and not set(token) <= alphabet:
            token = "".join(piece for piece, _ in to_bytes.pre_tokenize_str(token))
        vocab.setdefault(token, index)
    return vocab


def build_gguf_tokenizer(data: GGUFTokenizerData) -> Tokenizer:
    """An HF `tokenizers.Tokenizer` equivalent to the one the GGUF describes."""
    if data.model != "gpt2":
        raise ValueError(
            f"GGUF tokenizer model {data.model!r} is not supported; only byte-level BPE ('gpt2') is. "
            "Load the checkpoint's Hugging Face tokenizer.json instead."
        )
    if not data.merges:
        raise ValueError("GGUF byte-level BPE vocabulary has no tokenizer.ggml.merges")
    vocab = _byte_level_spelling(data.tokens, data.token_types)
    merges = []
    for line in data.merges:
        left, sep, right = line.partition(" ")
        if not sep:
            raise ValueError(f"malformed GGUF merge {line!r}: expected two tokens separated by a space")
        merges.append((left, right))
    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False, ignore_merges=False)
    )
    tokenizer.pre_tokenizer = _pre_tokenizer(data.pre)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [
            AddedToken(tok, normalized=False, special=True)
            for tok, kind in zip(data.tokens, data.token_types, strict=True)
            if kind == _CONTROL
        ]
    )
    tokenizer.add_tokens(
        [
            AddedToken(tok, normalized=False, special=False)
            for tok, kind in zip(data.tokens, data.token_types, strict=True)
            if kind == _USER_DEFINED
        ]
    )
    if data.add_bos and data.bos_id is not None:
        bos = data.tokens[data.bos_id]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, data.bos_id)]
        )
    return tokenizer


def token_text(data: GGUFTokenizerData, token_id: int | None) -> str | None:
    """The text of a token id named in the metadata, or None when the file names none."""
    if token_id is None or not 0 <= token_id < len(data.tokens):
        return None
    return data.tokens[token_id]


def special_token_texts(data: GGUFTokenizerData) -> Mapping[str, str | None]:
    return {
        "bos_token": token_text(data, data.bos_id),
        "eos_token": token_text(data, data.eos_id),
        "unk_token": token_text(data, data.unk_id),
        "pad_token": token_text(data, data.pad_id),
    }
