"""A chat format: tokenizer + chat template + how tool calls are written, turning messages into token ids.

Ids equal transformers' `apply_chat_template(..., tokenize=True)` (with `sanitize_control_tokens=True` when
`sanitize` is on, the default). Sanitizing matters for agents: a tool result or a user message that contains
`<|im_end|>` is encoded as the text `<|im_end|>`, not as the control token, so environment output can never
close a turn or open a fake system message.

Tool calls use the template's own support when it has one (it reads `tools`; Qwen2.5 and Qwen3 do).
Otherwise (`native_tools=False`, e.g. SmolLM2) we fall back to the same Hermes convention written in plain
text: tool definitions go into the system prompt, an assistant's calls into its content as `<tool_call>`
blocks, and tool results into a user message as `<tool_response>` blocks, so any template can render them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

from rl_jax.chat.messages import Message, as_message
from rl_jax.chat.template import (
    ChatTemplateError,
    render_template,
    template_literal_text,
    template_supports_tools,
)
from rl_jax.chat.tokenizer import ChatTokenizer, load_tokenizer
from rl_jax.chat.tool_calls import format_assistant_text, format_tool_response, tools_system_prompt

ToolMode = Literal["auto", "native", "fallback"]
MessageLike = Message | Mapping[str, Any]

# Private-use characters that fence control tokens found in user strings between rendering and encoding.
MARK_START = "\U000f0000"
MARK_END = "\U000f0001"


def _mark(value: Any, pattern: re.Pattern[str]) -> Any:
    """Fence every control token inside the strings of `value` (dict keys are left alone)."""
    if isinstance(value, str):
        # Drop markers already in the text first, so input cannot forge a fenced token.
        cleaned = value.replace(MARK_START, "").replace(MARK_END, "")
        return pattern.sub(lambda m: f"{MARK_START}{m.group(0)}{MARK_END}", cleaned)
    if isinstance(value, Mapping):
        return {key: _mark(item, pattern) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_mark(item, pattern) for item in value]
    return value


@dataclass(frozen=True)
class ChatFormat:
    tokenizer: ChatTokenizer
    template: str
    native_tools: bool
    sanitize: bool = True

    @classmethod
    def create(
        cls,
        tokenizer: ChatTokenizer,
        *,
        template: str | None = None,
        tool_mode: ToolMode = "auto",
        sanitize: bool = True,
    ) -> ChatFormat:
        """The checkpoint's template (or `template`), with tool support detected unless `tool_mode` says."""
        source = template if template is not None else tokenizer.chat_template
        if source is None:
            raise ChatTemplateError(f"{tokenizer.source or 'tokenizer'} has no chat template; pass template=")
        if tool_mode not in ("auto", "native", "fallback"):
            raise ValueError(f"tool_mode must be 'auto', 'native' or 'fallback', got {tool_mode!r}")
        native = template_supports_tools(source) if tool_mode == "auto" else tool_mode == "native"
        return cls(tokenizer=tokenizer, template=source, native_tools=native, sanitize=sanitize)

    # ---- what the template sees -------------------------------------------------------------------------

    def template_inputs(
        self, messages: Sequence[MessageLike], tools: Sequence[Mapping[str, Any]] | None = None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        """Messages (as dicts) and tools as this format hands them to the template."""
        typed = [as_message(m) for m in messages]
        if self.native_tools:
            return [m.to_dict() for m in typed], [dict(t) for t in tools] if tools else None
        return [m.to_dict() for m in _fallback_messages(typed, tools or ())], None

    @cached_property
    def control_tokens(self) -> tuple[str, ...]:
        """Tokens that only the template may write: special tokens and added tokens the template writes."""
        literal = template_literal_text(self.template)
        return tuple(
            content
            for content, special in self.tokenizer.added_tokens().items()
            if special or (content in literal and not content.isspace())
        )

    @cached_property
    def _control_pattern(self) -> re.Pattern[str]:
        longest_first = sorted(self.control_tokens, key=len, reverse=True)
        return re.compile("|".join(map(re.escape, longest_first)) or "(?!)")

    @cached_property
    def _fenced_pattern(self) -> re.Pattern[str]:
        return re.compile(
            f"{MARK_START}({self._control_pattern.pattern}){MARK_END}|[{MARK_START}{MARK_END}]"
        )

    # ---- text and ids -----------------------------------------------------------------------------------

    def render_marked(
        self,
        messages: Sequence[MessageLike],
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        add_generation_prompt: bool = False,
    ) -> str:
        """Rendered text with control tokens from user strings fenced (when sanitizing); feed `encode_rendered`."""
        dicts, template_tools = self.template_inputs(messages, tools)
        if self.sanitize:
            dicts = _mark(dicts, self._control_pattern)
            template_tools = None if template_tools is None else _mark(template_tools, self._control_pattern)
        return render_template(
            self.template,
            dicts,
            tools=template_tools,
            add_generation_prompt=add_generation_prompt,
            special_tokens=self.tokenizer.special_tokens,
        )

    def render(
        self,
        messages: Sequence[MessageLike],
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        add_generation_prompt: bool = False,
    ) -> str:
        """The conversation as text, exactly as the template writes it."""
        marked = self.render_marked(messages, tools, add_generation_prompt=add_generation_prompt)
        return self.strip_marks(marked)

    def strip_marks(self, marked: str) -> str:
        return marked.replace(MARK_START, "").replace(MARK_END, "")

    def encode_rendered(self, marked: str) -> list[int]:
        """Ids of rendered text; fenced control tokens become plain text, the template's own stay tokens.

        Pieces after the first are encoded behind a newline that is then dropped, as transformers does, so
        SentencePiece vocabularies do not gain a prefix space at each fence.
        """
        tok = self.tokenizer
        if not self.sanitize:
            return tok.encode(marked)
        pieces = self._fenced_pattern.split(marked)
        ids = tok.encode(pieces[0])
        newline = tok.encode("\n")
        for index, piece in enumerate(pieces[1:], start=1):
            if not piece:
                continue
            as_text = index % 2 == 1  # re.split puts the fenced token at odd positions
            encode = tok.encode_plain if as_text else tok.encode
            piece_ids = encode("\n" + piece)
            piece_ids = piece_ids[len(newline) :] if piece_ids[: len(newline)] == newline else encode(piece)
            if as_text and tok.token_to_id(piece) in piece_ids:
                raise ChatTemplateError(f"cannot encode {piece!r} as plain text: the vocabulary produces it")
            ids += piece_ids
        return ids

    def encode(
        self,
        messages: Sequence[MessageLike],
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        add_generation_prompt: bool = False,
    ) -> list[int]:
        """Token ids of the rendered conversation (no BOS/EOS beyond what the template writes)."""
        return self.encode_rendered(
            self.render_marked(messages, tools, add_generation_prompt=add_generation_prompt)
        )


def _fallback_messages(messages: Sequence[Message], tools: Sequence[Mapping[str, Any]]) -> list[Message]:
    """Rewrite tool traffic as plain system/user/assistant text for templates without tool support."""
    out: list[Message] = []
    rest = list(messages)
    if tools:
        preamble = rest.pop(0).content if rest and rest[0].role == "system" else ""
        out.append(Message("system", tools_system_prompt(tools, preamble)))
    previous_role = None
    for message in rest:
        if message.role == "assistant" and message.tool_calls:
            out.append(Message("assistant", format_assistant_text(message.content, message.tool_calls)))
        elif message.role == "tool":
            response = format_tool_response(message.content)
            if previous_role == "tool":
                # Consecutive results share one user turn, as Qwen's template groups them.
                out[-1] = Message("user", f"{out[-1].content}\n{response}")
            else:
                out.append(Message("user", response))
        else:
            out.append(message)
        previous_role = message.role
    return out


def load_chat_format(
    path: str | None = None, *, template: str | None = None, tool_mode: ToolMode = "auto", sanitize: bool = True
) -> ChatFormat:
    """`ChatFormat` of a checkpoint directory or GGUF file; no path: the embedded SmolLM2-135M-Instruct."""
    return ChatFormat.create(load_tokenizer(path), template=template, tool_mode=tool_mode, sanitize=sanitize)
