"""What an episode is, for every driver of an agent: its opening prompt, the tools as the agent sees them, its
limits (``definition``), and the environment a trainer drives episodes through (``environment``)."""

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
