"""The `corecraft` command line.

Each area owns its subcommands in its own ``corecraft/<area>/cli.py`` exposing
``register(subparsers) -> None``; this module discovers them, so adding a command never edits this file.
A handler returns an exit code; it raises ``CliError`` for a clear one-line error (exit 2, no traceback);
argument errors are one line too, with a pointer to the command's ``--help``. Output piped into a reader that
stops early (``| head``) ends the command quietly (exit 141, no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence
from typing import NoReturn

import corecraft


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _one_line(message: str) -> str:
    # Messages can carry text from elsewhere (SQLite, the OS) with newlines; the error stays one line.
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the command, with a pointer to its --help.

    argparse's default prints the whole usage block first; subparsers inherit this class (``add_subparsers``
    uses the parent's type), so every subcommand of every area reports errors the same way.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (try '{self.prog} --help')\n")


def _area_cli_modules() -> list[str]:
    names = []
    for info in pkgutil.iter_modules(corecraft.__path__):
        if info.ispkg and importlib.util.find_spec(f"corecraft.{info.name}.cli") is not None:
            names.append(f"corecraft.{info.name}.cli")
    return sorted(names)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="corecraft",
        description="CoreCraft: a simulated PC-components retailer's support organization for agent RL.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in _area_cli_modules():
        importlib.import_module(module_name).register(subparsers)
    return parser


def _chosen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)command parser the arguments selected, e.g. ``corecraft world build``'s."""
    current = parser
    while True:
        sub = next((a for a in current._actions if isinstance(a, argparse._SubParsersAction)), None)
        name = getattr(args, sub.dest, None) if sub is not None else None
        if sub is None or name not in sub.choices:
            return current
        current = sub.choices[name]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse would report these from the top-level parser; the subcommand's --help is the useful pointer.
        _chosen(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.handler(args) or 0)
    except BrokenPipeError:
        # The reader went away (`corecraft tasks list | head`): stop quietly, as Unix tools do. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by the broken pipe
    except CliError as exc:
        print(f"corecraft: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("corecraft: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Run as a script, this file is `__main__`, whose CliError is not the one area modules raise:
    # delegate to the imported module so `python -m corecraft.cli` behaves like the console script.
    from corecraft.cli import main as _main

    sys.exit(_main())
