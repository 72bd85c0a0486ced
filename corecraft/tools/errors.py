"""The one error a tool raises on purpose.

A tool refuses bad input or a hard business limit by raising ``ToolError``; the message is written for the
model that called it (it names the argument and the problem), and both the in-process path and the MCP
server deliver it verbatim. Any other exception is a bug: its text never reaches the model.
"""

from __future__ import annotations


class ToolError(Exception):
    """A refusal the calling agent should read: bad argument, unknown id, or a hard business limit."""

    def __init__(self, message: str, *, argument: str | None = None) -> None:
        self.argument = argument
        super().__init__(f"{argument}: {message}" if argument else message)


def not_found(argument: str, kind: str, value: object) -> ToolError:
    """The standard refusal for an id that names nothing."""
    return ToolError(f"no {kind} with id {value!r}", argument=argument)
