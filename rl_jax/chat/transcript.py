"""Token-exact multi-turn conversations for RL rollouts.

A policy's sampled tokens are the ground truth GRPO trains on: decoding them and re-tokenizing the text can
give different ids (BPE has many spellings of one string), which would make the trainer's log-probs disagree
with the sampler's. So a rollout never re-tokenizes what the policy wrote. It keeps one growing id sequence:

    prompt ids (template)  | sampled ids (policy) | delta ids (template + tool results) | sampled ids | ...
    loss_mask: 0 ... 0     | 1 ... 1              | 0 ... 0                             | 1 ... 1     | ...

The delta after a sampled turn is found by rendering the conversation before and after the new messages and
taking the difference of the two texts, starting just after the stop token that ended the sampled turn (the
`<|im_end|>` the policy itself produced). Only that difference is tokenized.

Guarantees and limits:
- decode(ids) equals the template's rendering of the whole conversation whenever the policy wrote its turns
  as the template would (true for plain text; for tool calls, when it used the canonical layout), and ids
  equal `ChatFormat.encode` of it too when its sampled ids are the canonical tokenization of its text.
- Templates must render history stably: rendering more messages must only append text. Templates that
  rewrite earlier turns break this (Qwen3 drops the `<think>` blocks of assistant turns before the latest
  user query, so a new user message re-renders them; tool results alone do not). `append_messages` detects
  it and raises `ChatTemplateError` rather than produce ids that match no rendering.
- Between a sampled turn and the delta there must be a control token (ChatML's `<|im_end|>`, Llama 3's
  `<|eot_id|>`), so BPE cannot merge across the seam; every template we target has one.
- A turn cut off before its stop token (length limit) is closed with the eos token the template writes,
  counted as non-sampled (mask 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rl_jax.chat.chat_format import ChatFormat, MessageLike
from rl_jax.chat.messages import Message, as_message
from rl_jax.chat.template import ChatTemplateError
from rl_jax.chat.tool_calls import ParsedToolCalls, format_assistant_text, parse_tool_calls


@dataclass(frozen=True)
class TokenTranscript:
    """A conversation as the exact ids the policy saw and wrote, and the messages they stand for."""

    ids: tuple[int, ...]
    loss_mask: tuple[int, ...]  # 1 where the policy sampled the id (train on it), 0 elsewhere
    messages: tuple[Message, ...]
    tools: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.loss_mask):
            raise ValueError(f"ids ({len(self.ids)}) and loss_mask ({len(self.loss_mask)}) differ in length")

    @property
    def num_sampled(self) -> int:
        return sum(self.loss_mask)

    @property
    def awaiting_policy(self) -> bool:
        """True when the ids end in a generation prompt, i.e. the policy speaks next."""
        return not self.messages or self.messages[-1].role != "assistant"


def start_transcript(
    fmt: ChatFormat, messages: Sequence[MessageLike], tools: Sequence[Mapping[str, Any]] = ()
) -> TokenTranscript:
    """The prompt: the opening messages rendered with the generation prompt, nothing sampled yet."""
    typed = tuple(as_message(m) for m in messages)
    if not typed:
        raise ValueError("a transcript starts from at least one message")
    if typed[-1].role == "assistant":
        raise ValueError("the opening messages must end with a non-assistant message: the policy speaks next")
    ids = tuple(fmt.encode(typed, list(tools) or None, add_generation_prompt=True))
    return TokenTranscript(ids=ids, loss_mask=(0,) * len(ids), messages=typed, tools=tuple(tools))


def sampled_message(fmt: ChatFormat, sampled_ids: Sequence[int]) -> tuple[Message, ParsedToolCalls]:
    """The assistant message sampled ids stand for, and the tool calls parsed from them.

    A trailing stop token is not content. The message carries structured tool calls only when the policy
    wrote them exactly in the canonical layout (so rendering the message gives back its text); otherwise it
    keeps the text verbatim, so the record (and any later rendering) shows what the policy actually wrote.
    The calls to execute are always in the returned `ParsedToolCalls`.
    """
    ids = list(sampled_ids)
    if ids and ids[-1] in fmt.tokenizer.stop_token_ids:
        ids = ids[:-1]
    text = fmt.tokenizer.decode(ids)
    parsed = parse_tool_calls(text)
    if parsed.calls and not parsed.errors and format_assistant_text(parsed.content, parsed.calls) == text:
        return Message("assistant", parsed.content, parsed.calls), parsed
    return Message("assistant", text), parsed


def append_sampled(
    fmt: ChatFormat, transcript: TokenTranscript, sampled_ids: Sequence[int]
) -> tuple[TokenTranscript, ParsedToolCalls]:
    """Add the policy's turn: its ids verbatim (mask 1) and the message they decode to.

    Pass the ids including the stop token the sampler stopped on (`<|im_end|>`), so the policy is trained
    to stop; ids without one are treated as a cut-off turn, which the template closes (mask 0).
    """
    if not transcript.awaiting_policy:
        raise ValueError("the transcript ends with an assistant turn; append_messages must come first")
    message, parsed = sampled_message(fmt, sampled_ids)
    ids = tuple(int(i) for i in sampled_ids)
    updated = TokenTranscript(
        ids=transcript.ids + ids,
        loss_mask=transcript.loss_mask + (1,) * len(ids),
        messages=(*transcript.messages, message),
        tools=transcript.tools,
    )
    return updated, parsed


def _turn_end(fmt: ChatFormat, sampled_ids: Sequence[int]) -> tuple[str, bool]:
    """The text that closes an assistant turn, and whether the policy already wrote it."""
    tok = fmt.tokenizer
    if sampled_ids and sampled_ids[-1] in tok.stop_token_ids:
        stop_text = tok.id_to_token(sampled_ids[-1])
        if stop_text is not None:
            return stop_text, True
    if tok.eos_token is None:
        raise ChatTemplateError("the tokenizer names no eos_token, so a cut-off turn cannot be closed")
    return tok.eos_token, False


def rendered_delta(
    fmt: ChatFormat,
    history: Sequence[MessageLike],
    new_messages: Sequence[MessageLike],
    *,
    tools: Sequence[Mapping[str, Any]] = (),
    last_sampled_ids: Sequence[int] = (),
) -> list[int]:
    """Ids to append after a sampled assistant turn (the last of `history`) for `new_messages`, ending in
    the generation prompt. `last_sampled_ids` tells whether that turn ended with its stop token."""
    tool_list = list(tools) or None
    before = fmt.render_marked(history, tool_list, add_generation_prompt=False)
    after = fmt.render_marked([*history, *new_messages], tool_list, add_generation_prompt=True)
    if not after.startswith(before):
        raise ChatTemplateError(
            "the chat template re-renders earlier turns when messages are added, so the sampled ids cannot be "
            "kept verbatim; use a template whose rendering of a conversation prefix is stable"
        )
    end_text, policy_wrote_it = _turn_end(fmt, last_sampled_ids)
    at = before.rfind(end_text)
    if at < 0:
        raise ChatTemplateError(f"the template does not end assistant turns with {end_text!r}")
    start = at + len(end_text) if policy_wrote_it else at
    return fmt.encode_rendered(after[start:])


def append_messages(
    fmt: ChatFormat, transcript: TokenTranscript, new_messages: Sequence[MessageLike]
) -> TokenTranscript:
    """Add environment/user messages (tool results, a user reply) after a sampled turn (mask 0)."""
    if transcript.awaiting_policy:
        raise ValueError("the policy has not answered yet; append_sampled must come first")
    typed = tuple(as_message(m) for m in new_messages)
    if not typed:
        raise ValueError("append_messages needs at least one message")
    if any(m.role == "assistant" for m in typed):
        raise ValueError("assistant turns come from the policy: use append_sampled")
    last_sampled = _last_sampled_ids(transcript)
    delta = rendered_delta(
        fmt, transcript.messages, typed, tools=transcript.tools, last_sampled_ids=last_sampled
    )
    return TokenTranscript(
        ids=transcript.ids + tuple(delta),
        loss_mask=transcript.loss_mask + (0,) * len(delta),
        messages=transcript.messages + typed,
        tools=transcript.tools,
    )


def _last_sampled_ids(transcript: TokenTranscript) -> tuple[int, ...]:
    end = len(transcript.loss_mask)
    start = end
    while start > 0 and transcript.loss_mask[start - 1] == 1:
        start -= 1
    return transcript.ids[start:end]
