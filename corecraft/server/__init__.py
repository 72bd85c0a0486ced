"""The CoreCraft MCP server: the 23 tools over stdio or streamable HTTP, one isolated fork per episode."""

from corecraft.server.app import HttpConfig, build_server, http_app, serve_http
from corecraft.server.episodes import EPISODE_HEADER, EpisodeError, EpisodeManager
from corecraft.server.stdio import serve_stdio

__all__ = [
    "EPISODE_HEADER",
    "EpisodeError",
    "EpisodeManager",
    "HttpConfig",
    "build_server",
    "http_app",
    "serve_http",
    "serve_stdio",
]
