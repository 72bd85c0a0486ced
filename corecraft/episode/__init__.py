"""What an episode is, for every driver of an agent and for the judge: its opening prompt, the tools as the agent
sees them and its limits (``definition``), the trajectory it records (``types``), and the client of the
OpenAI-compatible endpoints the eval agent and the LLM judge call (``chat``). Imports nothing of the judge, the
eval harness or the trainer's environment, which all build on it."""

from corecraft.episode.definition import (
    PROMPT_FORMS,
    SYSTEM_PROMPT,
    EpisodeSpec,
    PromptForm,
    agent_tools,
    clip_result,
    corecraft_tool_listing,
    opening_messages,
    system_prompt,
)

__all__ = [
    "PROMPT_FORMS",
    "SYSTEM_PROMPT",
    "EpisodeSpec",
    "PromptForm",
    "agent_tools",
    "clip_result",
    "corecraft_tool_listing",
    "opening_messages",
    "system_prompt",
]
