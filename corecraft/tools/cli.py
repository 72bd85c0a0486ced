"""``corecraft tools``: list the 23 tools with their schemas, or call one on a fresh fork of a world.

    corecraft tools list [--json]
    corecraft tools call getOrderDetails '{"order_id": "ORD-201607"}' [--tasks DIR | --db PATH | --seed N]

A call runs in process exactly as over MCP (same validation, same text); its result is printed as JSON and a
tool error exits with status 1. Each invocation is its own episode: nothing is written back to the world. The
world is, by default, the task world of the shipped task set (base world + every task's planted records), so
the orders, customers and tickets that tasks name are there; ``--seed`` builds a bare base world instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from corecraft.cli import CliError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tools", help="list the CoreCraft tools, or call one on a fresh fork")
    commands = parser.add_subparsers(dest="tools_command", metavar="ACTION", required=True)

    listing = commands.add_parser("list", help="the 23 tools with their arguments")
    listing.add_argument("--json", action="store_true", help="print the MCP tool listing as one JSON array")
    listing.set_defaults(handler=_list)

    call = commands.add_parser("call", help="call one tool on a fresh fork of a world and print the result",
                               description="Calls one tool on a fresh fork of a world (default: the shipped task "
                                           "set's task world, where the records tasks name exist) and prints "
                                           "its result as JSON; a tool error exits 1.")
    call.add_argument("name", help="tool name, e.g. getOrderDetails")
    call.add_argument("arguments", nargs="?", default="{}", help="the arguments as a JSON object (default {})")
    source = call.add_mutually_exclusive_group()
    source.add_argument("--tasks", type=Path, default=None, metavar="DIR",
                        help="the task world of this task set (default: the shipped set's)")
    source.add_argument("--db", metavar="PATH", help="a saved world (from `corecraft world build`)")
    source.add_argument("--seed", type=int, default=None,
                        help="build the base world from this seed (no task records in it)")
    call.set_defaults(handler=_call)


def _list(args: argparse.Namespace) -> int:
    from corecraft.tools import TOOLS, tool_schemas

    if args.json:
        print(json.dumps(tool_schemas(), indent=1))
        return 0
    for spec in TOOLS.values():
        schema = spec.input_schema
        required = set(schema.get("required", []))
        names = [p if p in required else f"{p}?" for p in schema.get("properties", {})]
        paragraph = " ".join(spec.description.split("\n\n")[0].split())
        summary = paragraph.split(". ")[0].rstrip(".") + "."
        print(f"{spec.name}({', '.join(names)}){'  [writes]' if spec.writes else ''}\n    {summary}")
    return 0


def _call(args: argparse.Namespace) -> int:
    from corecraft.tools import TOOLS, call_tool
    from corecraft.world import World, WorldError

    if args.name not in TOOLS:
        raise CliError(f"unknown tool {args.name!r}; `corecraft tools list` shows the 23 tools")
    try:
        arguments = json.loads(args.arguments)
    except json.JSONDecodeError as exc:
        raise CliError(f"arguments are not valid JSON ({exc.msg} at column {exc.colno})") from exc
    try:
        if args.db:
            world = World.open(args.db)
        elif args.seed is not None:
            world = World.build(seed=args.seed)
        else:
            world = _task_world(args.tasks)
    except WorldError as exc:
        raise CliError(str(exc)) from exc
    with world.fork() as fork:
        result = call_tool(fork.conn, args.name, arguments)
    if result.is_error:
        print(result.text, file=sys.stderr)
        return 1
    print(json.dumps(result.data, indent=1, ensure_ascii=False))
    return 0


def _task_world(tasks: Path | None):  # -> World
    from corecraft.tasks.store import TaskStoreError, load_task_set

    try:
        return load_task_set(tasks).world()
    except TaskStoreError as exc:
        raise CliError(f"{exc} (or call on a base world: --seed N, or a saved one: --db PATH)") from None
