"""``corecraft serve``: the MCP server over stdio or streamable HTTP."""

from __future__ import annotations

import argparse
import gc
import hmac
import ipaddress
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from corecraft.cli import CliError

if TYPE_CHECKING:
    from corecraft.episode.chat import ChatConfig
    from corecraft.server.grading import Grader
    from corecraft.tasks.store import TaskSet
    from corecraft.world import World

TOKEN_ENV = "CORECRAFT_SERVER_TOKEN"
TRAINER_TOKEN_ENV = "CORECRAFT_TRAINER_TOKEN"  # opens the trainer's grading route (corecraft.server.grading)


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
    source.add_argument("--seed", type=int, default=None,
                        help="build a base world from this seed (default 0); the shipped tasks' records are in the "
                        "task world: --db worlds/tasks/v<N>/world.db (or --trainer-token)")
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
    grading = parser.add_argument_group(
        "trainer grading (HTTP)",
        "With a trainer token, POST /episodes/<id>/grade grades a finished episode on its fork for an RL trainer: "
        'body {"task_id": ..., "trajectory": ...}, answer {"score", "reward", "passed"}. Only the trainer token '
        "opens it (never --token), it is no MCP tool, and the world defaults to the task set's.",
    )
    grading.add_argument("--trainer-token", default=None, metavar="TOKEN",
                         help=f"enable the grading route for this bearer token (or set {TRAINER_TOKEN_ENV}); "
                         "must differ from --token")
    grading.add_argument("--tasks", type=Path, default=None, metavar="DIR",
                         help="the task set to grade against (default: the shipped one); the world served is its "
                         "world unless --db is given")
    grading.add_argument("--judge-base-url", default=None, metavar="URL",
                         help="OpenAI-compatible endpoint of the LLM judge for tasks with LLM criteria (without "
                         "one such tasks are refused with 409, never graded on part of their rubric)")
    grading.add_argument("--judge-model", default=None, metavar="NAME", help="the judge's model name")
    grading.add_argument("--judge-api-key-env", default=None, metavar="VAR",
                         help="environment variable holding the judge's API key")
    parser.set_defaults(handler=serve)


def _world_named(args: argparse.Namespace, task_set: TaskSet | None, world: World) -> str:
    """Which world is served, in words a newcomer can act on: the shipped tasks' records exist only in the
    task world, not in a base world built from a seed."""
    if args.db:
        return f"the world saved in {args.db}, seed {world.seed}"
    if task_set is not None:
        return f"the task world of {task_set.root}, seed {world.seed}"
    return (f"a base world built from seed {world.seed}, not the task world: the shipped tasks' orders and "
            "tickets are not in it (serve that with --db worlds/tasks/v<N>/world.db, or --trainer-token)")


def _load_world(args: argparse.Namespace, task_set: TaskSet | None = None) -> World:
    """The world every episode forks: --db, else the task set's world when grading, else one built from a seed."""
    from corecraft.tasks.store import TaskStoreError
    from corecraft.world import World, WorldError

    try:
        if args.db is not None:
            world = World.open(args.db)
            if task_set is not None and world.digest != task_set.manifest.get("world_digest"):
                # --db wins, but grading against a world without the task set's plantings scores nonsense
                print(f"corecraft serve: warning: {args.db} is not the world of the task set {task_set.root} "
                      "(its digest differs); grades read the served world", file=sys.stderr, flush=True)
            return world
        if task_set is not None:
            return task_set.world()
        return World.build(seed=0 if args.seed is None else args.seed, scale=args.scale)
    except (WorldError, TaskStoreError) as exc:
        raise CliError(str(exc)) from exc


def _trainer_token(args: argparse.Namespace, token: str | None) -> str | None:
    """The trainer's token, after refusing every grading option that cannot work as given."""
    if args.transport != "http":
        if args.trainer_token:
            raise CliError("--trainer-token applies to --transport http (grading is an HTTP route)")
        trainer = None  # the variable may be set for the trainer's whole environment: a stdio server ignores it
    else:
        trainer = args.trainer_token or os.environ.get(TRAINER_TOKEN_ENV) or None
    grading_options = [flag for flag, value in (("--tasks", args.tasks), ("--judge-base-url", args.judge_base_url),
                                                ("--judge-model", args.judge_model),
                                                ("--judge-api-key-env", args.judge_api_key_env)) if value]
    if trainer is None:
        if grading_options:
            raise CliError(f"{grading_options[0]} applies to the trainer's grading route: set --trainer-token "
                           f"(or {TRAINER_TOKEN_ENV}) and --transport http")
        return None
    if token is not None and hmac.compare_digest(trainer.encode(), token.encode()):
        raise CliError("the trainer token equals the agent's token (--token): the agent could grade its own "
                       "episodes and read their rubrics; give the trainer a token of its own")
    if args.seed is not None or args.scale != 1.0:
        raise CliError("--seed/--scale build a world without the task set's plantings: when grading, the world is "
                       "the task set's (--tasks), or pass --db")
    if (args.judge_base_url is None) != (args.judge_model is None):
        raise CliError("the LLM judge needs both --judge-base-url and --judge-model")
    if args.judge_api_key_env and args.judge_base_url is None:
        raise CliError("--judge-api-key-env applies to a judge: give --judge-base-url and --judge-model too")
    return trainer


def _judge_config(args: argparse.Namespace) -> ChatConfig | None:
    from corecraft.episode.chat import ChatConfig, ChatError

    if args.judge_base_url is None:
        return None
    config = ChatConfig(base_url=args.judge_base_url, model=args.judge_model, api_key_env=args.judge_api_key_env)
    try:
        config.api_key()  # a missing key fails now, not at the first graded episode
    except ChatError as exc:
        raise CliError(str(exc)) from None
    return config


def _grader(args: argparse.Namespace) -> tuple[Grader, TaskSet]:
    from corecraft.server.grading import Grader
    from corecraft.tasks.store import TaskStoreError, load_task_set

    judge = _judge_config(args)
    try:
        task_set = load_task_set(args.tasks)
    except TaskStoreError as exc:
        raise CliError(str(exc)) from None
    return Grader(task_set.tasks, judge), task_set


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
    trainer_token = _trainer_token(args, token)
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
    grader, task_set = _grader(args) if trainer_token else (None, None)
    world = _load_world(args, task_set)
    sweep_interval_s = min(30.0, args.idle_timeout / 2)
    config = HttpConfig(host=args.host, port=args.port, token=token, trainer_token=trainer_token)

    def ready(port: int) -> None:
        workers = f", {args.workers} workers" if args.workers > 1 else ""
        grading = ""
        if grader is not None:
            judge = f", LLM judge {grader.judge_config.model}" if grader.judge_config else ", no LLM judge"
            grading = f"; trainer grading on POST /episodes/<id>/grade ({len(grader.tasks)} tasks{judge})"
        print(f"corecraft serve: listening on http://{args.host}:{port}{config.path} "
              f"({_world_named(args, task_set, world)}, today {world.today}{workers}){grading}", file=sys.stderr,
              flush=True)

    if args.transport == "http" and args.workers > 1:
        try:
            return serve_http_workers(
                lambda store: build_server(store, sweep_interval_s=sweep_interval_s, grader=grader),
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
    server = build_server(episodes, sweep_interval_s=sweep_interval_s, grader=grader)
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
