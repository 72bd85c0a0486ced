"""One episode definition for every driver: what the agent is told, which tools it sees, and its limits.

The OpenAI-API agent (``corecraft eval``) and the token-level RL agent (``experiments/grpo_corecraft.py``)
both open an episode with ``opening_messages`` and ``agent_tools`` of the same ``EpisodeSpec``, so a policy is
trained on exactly the prompt it is evaluated on. The spec is recorded with every eval and training run.

Prompt forms trade what is in context for room (SmolLM2's context is 8,192 tokens; the company policy is
~2.9k of them and the 23 tools' MCP schemas ~12k):
- ``full``: the tools exactly as the MCP server lists them and the active company policy in the system prompt
  (the paper's harness; for models with long contexts).
- ``compact``: each tool's first sentence and its parameters' names, types and enums (no per-parameter
  prose); the policy is not in context but one search away (``searchKnowledgebase(kind='policy')``). ~4.1k.
- ``signatures``: each tool as a one-line signature in its description and no JSON parameter schema, the
  policy one search away. ~2.4k: what a small model on a CPU can afford to train on.
The agent's tool calls are validated by the tools themselves whatever the form, and their errors name the
argument, so a form that shows less never changes what a call does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any, Literal

from corecraft.episode.compact import compact_description, compact_schema

PromptForm = Literal["full", "compact", "signatures"]
PROMPT_FORMS: tuple[PromptForm, ...] = ("full", "compact", "signatures")

SYSTEM_PROMPT = """You are a customer-support agent at CoreCraft, a retailer of PC components and computer hardware.
You act through the tools of the company's systems; they are the only source of truth. Never invent an order,
date, amount or policy: look it up. Searches return at most 10 results a page, so read further pages when
you need them. Follow the company policy; when a request conflicts with it, do what the policy allows and
explain why. When you are done, reply to the request with your final answer (no further tool calls)."""

POLICY_IN_CONTEXT = "\n\n# Company policy\n{policy}"
POLICY_BY_TOOL = ("\n\nThe company policies are in the knowledge base: searchKnowledgebase with kind='policy', "
                  "then getKnowledgebaseArticle.")


@dataclass(frozen=True)
class EpisodeSpec:
    """How an episode is presented to the agent and bounded; the same value for evaluation and training."""

    prompt_form: PromptForm = "full"
    max_turns: int = 200              # model turns; each may call several tools
    tool_result_chars: int = 20_000   # longer results are cut (with a note) before the model reads them

    def __post_init__(self) -> None:
        if self.prompt_form not in PROMPT_FORMS:
            raise ValueError(f"prompt_form must be one of {PROMPT_FORMS}; got {self.prompt_form!r}")
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1; got {self.max_turns}")
        if self.tool_result_chars < 64:
            raise ValueError(f"tool_result_chars must be >= 64; got {self.tool_result_chars}")

    @property
    def policy_in_context(self) -> bool:
        return self.prompt_form == "full"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def system_prompt(spec: EpisodeSpec, policy: str = "") -> str:
    """The system message: the role, and the policy itself (``full``) or where to find it."""
    if spec.policy_in_context:
        return SYSTEM_PROMPT + (POLICY_IN_CONTEXT.format(policy=policy) if policy else "")
    return SYSTEM_PROMPT + POLICY_BY_TOOL


def opening_messages(spec: EpisodeSpec, request: str, policy: str = "") -> list[dict[str, str]]:
    """The episode's first messages (OpenAI form): the system prompt and the customer's request."""
    return [{"role": "system", "content": system_prompt(spec, policy)}, {"role": "user", "content": request}]


def clip_result(text: str, limit: int) -> str:
    """A tool result as the model reads it: cut past ``limit`` characters, with a note saying so."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[result cut: {len(text) - limit} more characters; narrow the query or paginate]"


def agent_tools(spec: EpisodeSpec, listed: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The tools as the agent sees them, from MCP ``list_tools`` entries (``name``, ``description``,
    ``inputSchema``), as OpenAI ``tools`` entries in the spec's prompt form."""
    return [_agent_tool(spec.prompt_form, t) for t in listed]


def _agent_tool(form: PromptForm, tool: Mapping[str, Any]) -> dict[str, Any]:
    name, description = str(tool["name"]), str(tool.get("description") or "")
    schema = _canonical(tool.get("inputSchema") or {"type": "object", "properties": {}})
    if form == "full":
        fn = {"name": name, "description": description, "parameters": dict(schema)}
    elif form == "compact":
        fn = {"name": name, "description": _first_sentence(description),
              "parameters": _without_descriptions(compact_schema(schema, keep_bounds=False))}
    else:
        fn = {"name": name, "description": f"({_signature(schema)}) {_first_sentence(description)}",
              "parameters": {"type": "object"}}
    return {"type": "function", "function": fn}


def _canonical(schema: Any, *, keep_order: bool = False) -> Any:
    """A schema with its keywords in sorted order, so the rendered prompt does not depend on how a transport
    ordered them (the MCP SDK lists ``type`` first); property names keep their author's order."""
    if isinstance(schema, Mapping):
        items = schema.items() if keep_order else sorted(schema.items())
        return {k: _canonical(v, keep_order=(k == "properties")) for k, v in items}
    if isinstance(schema, list):
        return [_canonical(v) for v in schema]
    return schema


def _first_sentence(description: str) -> str:
    return compact_description(description, 100).split(". ")[0].rstrip(".")


def _without_descriptions(schema: Any) -> Any:
    if isinstance(schema, Mapping):
        return {k: _without_descriptions(v) for k, v in schema.items() if k != "description"}
    if isinstance(schema, list):
        return [_without_descriptions(v) for v in schema]
    return schema


def _signature(schema: Mapping[str, Any]) -> str:
    """``a, b?: int, c?: x|y``: parameters in order, ``?`` when optional, the type unless it is a string."""
    required = set(schema.get("required") or ())
    parts = []
    for name, prop in (schema.get("properties") or {}).items():
        small = compact_schema(prop, keep_bounds=False)
        kind = small.get("type", "")
        if "enum" in small:
            kind = "|".join(str(v) for v in small["enum"])
        elif small.get("format") == "date":
            kind = "date"
        elif kind == "string":
            kind = ""
        parts.append(name + ("" if name in required else "?") + (f": {kind}" if kind else ""))
    return ", ".join(parts)


def company_policy(conn: Any) -> str:
    """The active company policies, as the agent gets them in context (the paper's harness does the same)."""
    rows = conn.execute("SELECT title, body FROM company_policies WHERE status = 'active' "
                        "ORDER BY policy_area, version").fetchall()
    # Bodies are Markdown that already open with their title; add one where a body does not.
    return "\n\n".join(r[1] if r[1].lstrip().startswith("#") else f"# {r[0]}\n{r[1]}" for r in rows)


@cache
def corecraft_tool_listing() -> tuple[dict[str, Any], ...]:
    """The 23 tools as MCP lists them (what ``agent_tools`` takes), without starting a server."""
    from corecraft.tools import tool_schemas

    return tuple({"name": s["name"], "description": s["description"], "inputSchema": s["inputSchema"]}
                 for s in tool_schemas())
