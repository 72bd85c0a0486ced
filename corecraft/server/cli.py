"""``corecraft serve``: the MCP server over stdio or streamable HTTP."""

from __future__ import annotations

import argparse
import gc
import ipaddress
import os
import sys

import anyio

from corecraft.cli import CliError

TOKEN_ENV = "CORECRAFT_SERVER_TOKEN"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the 23 CoreCraft tools over MCP (stdio or streamable HTTP)",
        description="Serve the CoreCraft tools over MCP. Each episode gets its own fork of the world: a stdio "
        "process is one episode; over HTTP the client names its episode in the X-CoreCraft-Episode header "
        "(requests without it share one 'default' episode) and ends it with DELETE /episodes/<id> (idle "
        "episodes are freed after --idle-timeout).",
    )
    parser.add_argument("--transport", choices=("stdio", "http"), default="stdio")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--db", metavar="PATH", help="serve this saved world (from `corecraft world build`)")
    source.add_argument("--seed", type=int, default=None, help="build the world from this seed (default 0)")
    parser.add_argument("--scale", type=float, default=1.0, help="world scale when building from a seed")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default: loopback only)")
    parser.add_argument("--port", type=int, default=8765, help="HTTP port; 0 picks a free one (printed)")
    parser.add_argument(
        "--token", default=None, help=f"require this bearer token over HTTP (or set {TOKEN_ENV})"
    )
    parser.add_argument("--idle-timeout", type=float, default=900.0, metavar="S",
                        help="free an HTTP episode's fork after S idle seconds (default 900)")
    parser.add_argument("--max-episodes", type=int, default=1024,
                        help="most open episodes at once (each fork holds a copy of the world, ~2.5 MB at scale 1)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="HTTP server processes sharing the port (default 1). One process serves calls on "
                        "one core; with N > 1 episodes live as SQLite files in /dev/shm that every worker "
                        "serves, for many concurrent episodes on a multi-core machine")
    parser.set_defaults(handler=serve)


def _load_world(args: argparse.Namespace):
    from corecraft.world import World, WorldError

    try:
        if args.db is not None:
            return World.open(args.db)
        return World.build(seed=0 if args.seed is None else args.seed, scale=args.scale)
    except WorldError as exc:
        raise CliError(str(exc)) from exc


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _run(fn) -> None:
    """Run the server's event loop, on uvloop when installed (measurably less CPU per call)."""
    try:
        import uvloop  # noqa: F401

        options = {"use_uvloop": True}
    except ImportError:
        options = {}
    anyio.run(fn, backend_options=options)


def serve(args: argparse.Namespace) -> int:
    from corecraft.server.app import HttpConfig, build_server, serve_http
    from corecraft.server.episodes import EpisodeManager
    from corecraft.server.stdio import serve_stdio

    token = args.token or os.environ.get(TOKEN_ENV) or None
    if args.transport == "http":
        if not 0 <= args.port <= 65535:
            raise CliError(f"--port must be within 0-65535, got {args.port}")
        if not _is_loopback(args.host) and not token:
            raise CliError(f"refusing to serve on non-loopback address {args.host} without --token")
    if args.idle_timeout <= 0:
        raise CliError("--idle-timeout must be positive")
    if args.max_episodes < 1:
        raise CliError("--max-episodes must be at least 1")
    from corecraft.server.workers import MAX_WORKERS, serve_http_workers

    if not 1 <= args.workers <= MAX_WORKERS:
        raise CliError(f"--workers must be within 1-{MAX_WORKERS}, got {args.workers}")
    if args.workers > 1 and args.transport != "http":
        raise CliError("--workers applies to --transport http (a stdio server is one episode)")
    world = _load_world(args)
    sweep_interval_s = min(30.0, args.idle_timeout / 2)
    config = HttpConfig(host=args.host, port=args.port, token=token)

    def ready(port: int) -> None:
        workers = f", {args.workers} workers" if args.workers > 1 else ""
        print(f"corecraft serve: listening on http://{args.host}:{port}{config.path} "
              f"(world seed {world.seed}, today {world.today}{workers})", file=sys.stderr, flush=True)

    if args.transport == "http" and args.workers > 1:
        try:
            return serve_http_workers(
                lambda store: build_server(store, sweep_interval_s=sweep_interval_s),
                config,
                args.workers,
                world.serialize(),
                idle_timeout_s=args.idle_timeout,
                max_episodes=args.max_episodes,
                run=_run,
                ready=ready,
            )
        except OSError as exc:
            raise CliError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc})") from exc
    episodes = EpisodeManager(world.fork, idle_timeout_s=args.idle_timeout, max_episodes=args.max_episodes)
    server = build_server(episodes, sweep_interval_s=sweep_interval_s)
    # Everything built so far (SDK models, schemas, the world's bytes) lives as long as the process: keep it out
    # of the cyclic collector's scans, which otherwise stall calls for milliseconds.
    gc.collect()
    gc.freeze()
    if args.transport == "stdio":
        _run(lambda: serve_stdio(server))
        return 0
    try:
        _run(lambda: serve_http(server, config, ready=ready))
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc})") from exc
    return 0
