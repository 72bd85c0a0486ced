"""The tool registry: names, typed argument models, descriptions, and the one way a tool is run.

A tool is a plain function ``fn(conn, *, arg: Annotated[T, Field(...)] = default, ...) -> dict`` over an
episode's SQLite connection. ``@tool`` turns its signature into a pydantic argument model (unknown
arguments refused) and its docstring into the description the model reads. The MCP server and the
in-process ``call_tool`` both validate with ``ToolSpec.validate`` (the model, through the MCP SDK's
``FuncMetadata`` so the SDK's JSON-string pre-parsing applies) and both run ``execute``: the schemas a client
lists over MCP are the in-process ones, and a call reads the same on every path, errors included. Argument
errors are rewritten from pydantic's multi-line report into one line per argument that a model can act on.
"""

from __future__ import annotations

import inspect
import json
import logging
import sqlite3
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pydantic_core
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase, FuncMetadata
from pydantic import ConfigDict, ValidationError, create_model

from corecraft.tools.errors import ToolError
from corecraft.world.connection import forget

logger = logging.getLogger(__name__)

ToolFn = Callable[..., dict[str, Any]]


class ToolArguments(ArgModelBase):
    """Base of every argument model: a misspelled argument is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


@dataclass(frozen=True)
class ToolSpec:
    """One registered tool."""

    name: str
    fn: ToolFn
    description: str
    writes: bool
    metadata: FuncMetadata
    schema_json: str  # generated once at registration; every reader gets its own copy
    # argument names (and aliases) whose type is not plain str: only there can the SDK's pre-parsing of
    # JSON-in-a-string (``FuncMetadata.pre_parse_json``) change a value
    parsed_keys: frozenset[str] = frozenset()
    aliased: bool = False  # some argument has an alias: keyword arguments must be renamed after validation

    @property
    def input_schema(self) -> dict[str, Any]:
        return json.loads(self.schema_json)

    def validate(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Validated keyword arguments; raises ``ToolError`` naming each bad argument and its problem."""
        model = self.metadata.arg_model
        if type(arguments) is not dict:
            arguments = dict(arguments)  # pydantic validates a dict; any other mapping is copied into one
        try:
            for key, value in arguments.items():
                if key in self.parsed_keys and _may_pre_parse(value):
                    return self.metadata.validate_arguments(dict(arguments))  # the SDK may rewrite its argument
            # What validate_arguments does once pre-parsing would change nothing, minus its per-call scan and
            # the per-field getattr loop of model_dump_one_level: with no field aliased (checked at
            # registration), a validated model's __dict__ is exactly the keyword arguments.
            if self.aliased:
                return model.model_validate(arguments).model_dump_one_level()
            return dict(model.__pydantic_validator__.validate_python(arguments).__dict__)
        except ValidationError as exc:
            raise ToolError(describe_invalid(exc, model.model_fields)) from None


def _may_pre_parse(value: Any) -> bool:
    """Whether the SDK's pre-parsing would replace ``value``: it does so only for a string holding a JSON
    array, object or null (numbers, strings and booleans stay as sent), each of which starts with [ { or n."""
    return isinstance(value, str) and value.lstrip(" \t\n\r")[:1] in ("[", "{", "n")


_SHOWN_INPUT = 60


def describe_invalid(exc: ValidationError, fields: Mapping[str, Any]) -> str:
    """One line per problem: ``argument: what is wrong (got <value>)``."""
    problems = []
    for err in exc.errors(include_url=False, include_context=False):
        where = ".".join(str(part) for part in err["loc"]) or "arguments"
        if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
            problems.append(f"{where}: unknown argument (expected: {', '.join(fields)})")
            continue
        problem = err["msg"]
        if err["type"] != "missing":
            shown = repr(err.get("input"))
            problem += f" (got {shown if len(shown) <= _SHOWN_INPUT else shown[:_SHOWN_INPUT - 3] + '...'})"
        problems.append(f"{where}: {problem}")
    return "invalid arguments: " + "; ".join(problems)


@dataclass(frozen=True)
class ToolResult:
    """What a call returns on any path: ``text`` is exactly what the model reads."""

    is_error: bool
    text: str
    data: dict[str, Any] | None = None


_REGISTRY: dict[str, ToolSpec] = {}


def _argument_model(name: str, fn: ToolFn) -> type[ToolArguments]:
    signature = inspect.signature(fn)
    hints = typing.get_type_hints(fn, include_extras=True)
    params = list(signature.parameters.values())
    if not params or params[0].name != "conn":
        raise TypeError(f"tool {name}: the first parameter must be `conn`")
    fields: dict[str, Any] = {}
    for param in params[1:]:
        if param.kind is not inspect.Parameter.KEYWORD_ONLY:
            raise TypeError(f"tool {name}: argument {param.name!r} must be keyword-only")
        if param.name not in hints:
            raise TypeError(f"tool {name}: argument {param.name!r} needs a type annotation")
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (hints[param.name], default)
    return create_model(f"{name}Arguments", __base__=ToolArguments, **fields)


def tool(name: str, *, writes: bool = False) -> Callable[[ToolFn], ToolFn]:
    """Register ``fn`` as the tool ``name``; ``writes`` runs it inside one transaction."""

    def register(fn: ToolFn) -> ToolFn:
        if name in _REGISTRY:
            raise ValueError(f"tool {name} registered twice")
        description = inspect.cleandoc(fn.__doc__ or "")
        if not description:
            raise TypeError(f"tool {name}: the docstring is the model's description and must not be empty")
        metadata = FuncMetadata(arg_model=_argument_model(name, fn))
        schema = json.dumps(metadata.arg_model.model_json_schema(by_alias=True))
        parsed_keys = frozenset(
            key
            for field_name, info in metadata.arg_model.model_fields.items()
            if info.annotation is not str
            for key in (field_name, info.alias)
            if key
        )
        aliased = any(info.alias for info in metadata.arg_model.model_fields.values())
        _REGISTRY[name] = ToolSpec(name, fn, description, writes, metadata, schema, parsed_keys, aliased)
        return fn

    return register


def registered() -> dict[str, ToolSpec]:
    return dict(_REGISTRY)


def execute(spec: ToolSpec, conn: sqlite3.Connection, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Run a tool on validated arguments. A writing tool runs in one savepoint: it commits whole or not at all."""
    if not spec.writes:
        return spec.fn(conn, **kwargs)
    conn.execute("SAVEPOINT corecraft_tool")
    try:
        result = spec.fn(conn, **kwargs)
    except BaseException:
        conn.execute("ROLLBACK TO corecraft_tool")
        conn.execute("RELEASE corecraft_tool")
        forget(conn)  # reads memoized during the call may have seen what was just undone
        raise
    conn.execute("RELEASE corecraft_tool")
    return result


def render(data: dict[str, Any]) -> str:
    """The text the model reads for a result: compact JSON, unicode kept (pydantic-core's encoder: fast)."""
    return pydantic_core.to_json(data).decode()


def error_text(name: str, exc: BaseException | None = None) -> str:
    """The error text, worded as the MCP SDK words it, so both paths read the same."""
    return f"Error executing tool {name}: {exc}" if exc is not None else f"Error executing tool {name}"


def call(specs: Mapping[str, ToolSpec], conn: sqlite3.Connection, name: str, arguments: Any) -> ToolResult:
    """The in-process path: validate, run, render. Never raises for anything the caller sends."""
    spec = specs.get(name)
    if spec is None:
        return ToolResult(True, f"Unknown tool: {name}")
    if arguments is None:
        arguments = {}
    if isinstance(arguments, str | bytes):
        # A model's raw tool-call text: malformed JSON is the model's mistake to read, like any bad argument.
        try:
            arguments = json.loads(arguments or "{}")
        except ValueError as exc:
            return ToolResult(True, error_text(name, ToolError(f"arguments are not valid JSON ({exc})")))
    if not isinstance(arguments, Mapping):
        return ToolResult(True, error_text(name, ToolError("arguments must be a JSON object")))
    try:
        data = execute(spec, conn, spec.validate(arguments))
    except ToolError as exc:
        return ToolResult(True, error_text(name, exc))
    except Exception:
        logger.exception("tool %s crashed", name)
        return ToolResult(True, error_text(name))
    return ToolResult(False, render(data), data)
