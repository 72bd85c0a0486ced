"""The CoreCraft MCP server: the 23 registered tools over the official SDK, one fork per episode.

Transports: stdio (the process is one episode) and streamable HTTP (episodes keyed by the
``X-CoreCraft-Episode`` request header, loopback by default, a bearer token enforced when set).
HTTP routes beside ``/mcp``: ``DELETE /episodes/{id}`` ends an episode and frees its fork; ``GET /health``;
with a trainer token, the trainer's ``POST /episodes/{id}/grade`` (``corecraft.server.grading``), which sits in
front of the agent's bearer check and answers to the trainer's token only.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import socket
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anyio
from mcp.server import MCPServer
from mcp.server._otel import OpenTelemetryMiddleware
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError as McpToolError
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase, FuncMetadata
from mcp.shared.inbound import X_MCP_HEADER_KEY
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import ConfigDict
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from corecraft.server.episodes import (
    EPISODE_HEADER,
    EPISODE_META_KEY,
    EpisodeError,
    EpisodeManager,
    Episodes,
    episode_from_headers,
    validate_episode_id,
)
from corecraft.tools import TOOLS, ToolSpec
from corecraft.tools.errors import ToolError
from corecraft.tools.registry import execute, render

if TYPE_CHECKING:
    from corecraft.server.grading import Grader

logger = logging.getLogger(__name__)

INSTRUCTIONS = (
    "Tools of CoreCraft's customer-support systems (a PC-components retailer). Searches return at most 10 "
    "results a page: pass `page` to read further. The company policies (searchKnowledgebase with "
    "kind='policy', then getKnowledgebaseArticle) govern refunds, returns and exceptions. Over HTTP, name your "
    "episode in the X-CoreCraft-Episode header; each episode has its own copy of the company's data."
)


@dataclass(frozen=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    # the trainer's token for the grading route (which exists only when this is set); never the agent's token
    trainer_token: str | None = None
    path: str = "/mcp"
    # JSON responses skip SSE framing: measurably faster for request/response tool calls.
    json_response: bool = True


class _RawArguments(ArgModelBase):
    """Hands the SDK's call path the arguments untouched, so the tool validates them itself with exactly the
    in-process code and wording (the listed schema is still the tool's own, see ``parameters`` below)."""

    model_config = ConfigDict(extra="allow")

    def model_dump_one_level(self) -> dict[str, Any]:
        return dict(self.__pydantic_extra__ or {})


_RAW = FuncMetadata(arg_model=_RawArguments)


def _episode_from_meta(ctx: Context) -> str:
    """The episode a call of the shared in-process server names in its request ``_meta`` (its client sets it)."""
    value = (ctx.request_context.meta or {}).get(EPISODE_META_KEY)
    if not isinstance(value, str):
        raise EpisodeError(f"the call names no episode (request _meta {EPISODE_META_KEY!r})")
    return value


def _mcp_tool(spec: ToolSpec, episodes: Episodes, episode_key: str) -> Tool:
    by_meta = episode_key == "meta"

    async def run(ctx: Context, **arguments: Any) -> CallToolResult:
        try:
            episode_id = _episode_from_meta(ctx) if by_meta else episode_from_headers(ctx.headers)
            kwargs = spec.validate(arguments)
            # Inline on the event loop: a tool call is a few SQLite statements on the episode's private
            # database, cheaper than a hop to a worker thread.
            with episodes.session(episode_id, writes=spec.writes) as conn:
                data = execute(spec, conn, kwargs)
        except EpisodeError as exc:
            raise McpToolError(f"{EPISODE_META_KEY if by_meta else EPISODE_HEADER}: {exc}") from exc
        except ToolError as exc:
            raise McpToolError(str(exc)) from exc
        return CallToolResult(content=[TextContent(type="text", text=render(data))], structured_content=data)

    return Tool(
        fn=run,
        name=spec.name,
        description=spec.description,
        parameters=spec.input_schema,
        fn_metadata=_RAW,
        is_async=True,
        context_kwarg="ctx",
        annotations=ToolAnnotations(read_only_hint=not spec.writes, destructive_hint=False, open_world_hint=False),
    )


class CoreCraftMCPServer(MCPServer):
    """The SDK's server, told which tools can carry ``Mcp-Param-*`` headers.

    Before every HTTP ``tools/call`` the SDK checks such headers against the called tool's input schema,
    walking the whole schema twice for ``x-mcp-header`` annotations: 8% of the server's instructions per call
    (2.63 M to 2.42 M, callgrind, BUILD.md). A schema without any annotation can reject nothing, so for those
    tools (all 23 today) the schema is not handed to the check; a tool whose schema declares one is checked in
    full.

    ``tracing`` False drops the SDK's OpenTelemetry middleware from the request chain.
    """

    def __init__(self, *args: Any, episodes: Episodes, grader: Grader | None = None, tracing: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not tracing:  # the SDK's built-in span per request (nothing here exports spans)
            low = self._lowlevel_server
            low.middleware = [m for m in low.middleware if not isinstance(m, OpenTelemetryMiddleware)]
        # what the trainer's grading route (outside the MCP app, see http_app) needs
        self.episodes = episodes
        self.grader = grader
        self._annotated: dict[str, tuple[dict[str, Any], bool]] = {}  # name -> (its schema, has an annotation)

    def _tool_input_schema(self, name: str) -> dict[str, Any] | None:
        schema = super()._tool_input_schema(name)
        if schema is None:
            return None
        known = self._annotated.get(name)
        if known is None or known[0] is not schema:  # first call, or the tool was replaced
            known = self._annotated[name] = (schema, X_MCP_HEADER_KEY in json.dumps(schema))
        return schema if known[1] else None


def build_server(episodes: Episodes, *, sweep_interval_s: float = 30.0, grader: Grader | None = None,
                 episode_key: Literal["header", "meta"] = "header", owns_episodes: bool = True,
                 tracing: bool = True) -> MCPServer:
    """An MCP server exposing every registered tool on the episodes' forks. ``grader``: what the trainer's
    grading route grades with (served over HTTP when ``HttpConfig.trainer_token`` is set); never an MCP tool.

    ``episode_key``: where a call names its episode, the ``X-CoreCraft-Episode`` header (HTTP; stdio has one
    episode) or the request ``_meta`` (``EPISODE_META_KEY``: the in-process server a trainer's episodes share).
    ``owns_episodes`` False: the episodes belong to someone else (``corecraft.env``), who ends them; the server
    neither sweeps idle ones nor frees them when it (a client's connection to it, in process) stops.
    ``tracing`` False drops the SDK's OpenTelemetry middleware (a span per request; nothing here exports
    them)."""
    if episode_key not in ("header", "meta"):
        raise ValueError(f"episode_key must be 'header' or 'meta'; got {episode_key!r}")

    @contextlib.asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[dict[str, Any]]:
        if not owns_episodes:
            yield {}
            return

        async def sweep_forever() -> None:
            while True:
                await anyio.sleep(sweep_interval_s)
                freed = episodes.sweep()
                if freed:
                    logger.info("freed %d idle episodes", len(freed))

        try:
            if grader is not None:  # here, not earlier: with --workers N each worker starts its own thread
                grader.start()
            async with anyio.create_task_group() as tg:
                tg.start_soon(sweep_forever)
                yield {}
                tg.cancel_scope.cancel()
        finally:
            if grader is not None:
                grader.close()
            episodes.close_all()

    server: MCPServer = CoreCraftMCPServer(
        "corecraft",
        instructions=INSTRUCTIONS,
        tools=[_mcp_tool(spec, episodes, episode_key) for spec in TOOLS.values()],
        lifespan=lifespan,
        log_level="WARNING",
        episodes=episodes,
        grader=grader,
        tracing=tracing,
    )

    @server.custom_route("/episodes/{episode_id}", methods=["PUT"])
    async def open_episode(request: Request) -> Response:
        """Open an episode before its first tool call (a trainer's episode may end without one and still be
        graded on its own, untouched, fork); idempotent."""
        try:
            episode_id = validate_episode_id(request.path_params["episode_id"])
            with episodes.session(episode_id, writes=False):
                pass
        except EpisodeError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return Response(status_code=204)

    @server.custom_route("/episodes/{episode_id}", methods=["DELETE"])
    async def end_episode(request: Request) -> Response:
        try:
            episode_id = validate_episode_id(request.path_params["episode_id"])
        except EpisodeError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if not episodes.end(episode_id):
            return JSONResponse({"error": f"no open episode {episode_id!r}"}, status_code=404)
        return Response(status_code=204)

    @server.custom_route("/health", methods=["GET"])
    async def health(_: Request) -> Response:
        # worker_pid: which server process answered (with --workers N, the kernel spreads connections)
        return JSONResponse(
            {"status": "ok", "tools": len(TOOLS), "episodes": len(episodes), "worker_pid": os.getpid()}
        )

    return server


ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class BearerAuth:
    """Refuses every HTTP request without ``Authorization: Bearer <token>`` (constant-time comparison)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        if not token:
            raise ValueError("the token must not be empty")
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                body = json.dumps({"error": "missing or wrong bearer token"}).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"www-authenticate", b'Bearer realm="corecraft"'),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def http_app(server: MCPServer, config: HttpConfig) -> ASGIApp:
    """The streamable-HTTP ASGI app, behind the bearer check when a token is set; with a trainer token, the
    grading route in front of both (so only the trainer's token, never the agent's, reaches it)."""
    app: ASGIApp = server.streamable_http_app(
        streamable_http_path=config.path,
        json_response=config.json_response,
        stateless_http=True,
        host=config.host,
    )
    if config.token:
        app = BearerAuth(app, config.token)
    if config.trainer_token:
        from corecraft.server.grading import TrainerRoutes

        if not isinstance(server, CoreCraftMCPServer) or server.grader is None:
            raise ValueError("a trainer token needs a server built with a grader (build_server(..., grader=...))")
        app = TrainerRoutes(app, token=config.trainer_token, grader=server.grader, episodes=server.episodes,
                            agent_token=config.token)
    return app


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so a taken port is a clean ``OSError`` (uvicorn would exit the process)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


async def serve_http(
    server: MCPServer,
    config: HttpConfig,
    *,
    ready: Callable[[int], None] | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Serve until cancelled (or SIGINT/SIGTERM). ``ready`` receives the bound port (useful with ``port=0``)
    once connections are accepted. ``sock``: a socket already bound (by ``serve_http_workers``' parent)."""
    import uvicorn

    own = sock is None
    if sock is None:
        sock = bind(config.host, config.port)
    port = sock.getsockname()[1]
    uv_config = uvicorn.Config(http_app(server, config), log_level="warning", access_log=False, lifespan="on")
    uv_server = uvicorn.Server(uv_config)
    with sock if own else contextlib.nullcontext(sock):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: uv_server.serve(sockets=[sock]))
            while not (uv_server.started or uv_server.should_exit):
                await anyio.sleep(0.01)
            if ready is not None and uv_server.started:
                ready(port)


class Borrowed:
    """Lends a connection to an MCP server without letting the server close it (the grader still needs it)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def close(self) -> None:
        """The owner of the fork closes it, after grading."""


def in_process_server(conn: sqlite3.Connection) -> MCPServer:
    """A CoreCraft MCP server whose every tool call runs on ``conn`` (one episode's fork)."""
    return build_server(EpisodeManager(lambda: Borrowed(conn)))


def shared_in_process_server(episodes: EpisodeManager) -> MCPServer:
    """The one in-process MCP server of many episodes: each call names its episode in its request ``_meta``
    (``EPISODE_META_KEY``), and only the episodes added to ``episodes`` (by their owner, who ends them) exist;
    a call naming any other is refused. No sweeping and no tracing span per call (see ``build_server``)."""
    return build_server(episodes, episode_key="meta", owns_episodes=False, tracing=False)
