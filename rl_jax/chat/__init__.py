"""Tokenizers, chat templates, tool-call format and token-exact transcripts for chat policies.

    fmt = load_chat_format()                     # embedded SmolLM2-135M-Instruct GGUF; or an HF dir / .gguf
    fmt.tokenizer.stop_token_ids                 # what the sampler stops on
    t = start_transcript(fmt, [user("Where is order 17?")], tools=[function_tool(...)])
    t, parsed = append_sampled(fmt, t, sampled_ids)   # parsed.calls: tool calls to run
    t = append_messages(fmt, t, [tool_result("...")])  # ids to append are rendered, never re-tokenized
"""

from rl_jax.chat.chat_format import ChatFormat, ToolMode, load_chat_format
from rl_jax.chat.messages import (
    Message,
    ToolCall,
    as_message,
    assistant,
    function_tool,
    system,
    tool_result,
    user,
)
from rl_jax.chat.template import ChatTemplateError, render_template, template_supports_tools
from rl_jax.chat.tokenizer import (
    ChatTokenizer,
    default_gguf_path,
    load_gguf_tokenizer,
    load_hf_tokenizer,
    load_tokenizer,
    save_hf_tokenizer,
)
from rl_jax.chat.tool_calls import (
    ParsedToolCalls,
    ToolCallError,
    format_assistant_text,
    parse_tool_calls,
    tools_system_prompt,
)
from rl_jax.chat.transcript import (
    TokenTranscript,
    append_messages,
    append_sampled,
    rendered_delta,
    sampled_message,
    start_transcript,
)

__all__ = [
    "ChatFormat",
    "ChatTemplateError",
    "ChatTokenizer",
    "Message",
    "ParsedToolCalls",
    "TokenTranscript",
    "ToolCall",
    "ToolCallError",
    "ToolMode",
    "append_messages",
    "append_sampled",
    "as_message",
    "assistant",
    "default_gguf_path",
    "format_assistant_text",
    "function_tool",
    "load_chat_format",
    "load_gguf_tokenizer",
    "load_hf_tokenizer",
    "load_tokenizer",
    "parse_tool_calls",
    "render_template",
    "rendered_delta",
    "sampled_message",
    "save_hf_tokenizer",
    "start_transcript",
    "system",
    "template_supports_tools",
    "tool_result",
    "tools_system_prompt",
    "user",
]
