"""The `corecraft` command line.

Each area owns its subcommands in its own ``corecraft/<area>/cli.py`` exposing
``register(subparsers) -> None``; this module discovers them, so adding a command never edits this file.
A handler returns an exit code; it raises ``CliError`` for a clear one-line error (exit 2, no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

import corecraft


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _area_cli_modules() -> list[str]:
    names = []
    for info in pkgutil.iter_modules(corecraft.__path__):
        if info.ispkg and importlib.util.find_spec(f"corecraft.{info.name}.cli") is not None:
            names.append(f"corecraft.{info.name}.cli")
    return sorted(names)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corecraft",
        description="CoreCraft: a simulated PC-components retailer's support organization for agent RL.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in _area_cli_modules():
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except CliError as exc:
        print(f"corecraft: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("corecraft: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Run as a script, this file is `__main__`, whose CliError is not the one area modules raise:
    # delegate to the imported module so `python -m corecraft.cli` behaves like the console script.
    from corecraft.cli import main as _main

    sys.exit(_main())
