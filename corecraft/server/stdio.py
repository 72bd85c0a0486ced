"""A stdio transport on non-blocking pipes.

The SDK's stdio transport reads and writes through worker threads (several thread hand-offs per tool call);
on a loaded machine each hand-off costs a scheduler round trip. Here stdin and stdout are asyncio pipe
transports on duplicates of fd 0 and fd 1, driven by the event loop itself; the SDK's message framing and
server loop are unchanged (``mcp.server.stdio.stdio_server`` accepts the two streams). As the SDK does, fd 1
is pointed at stderr while serving so stray prints cannot corrupt the wire. Where stdin is not a pipe, socket
or character device (say a regular file), it falls back to the SDK's transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import AsyncIterator

from mcp.server import MCPServer
from mcp.server.stdio import stdio_server

_LINE_LIMIT = 64 * 1024 * 1024  # one JSON-RPC message per line; the HTTP transport's body limit is far below


class _Lines:
    """Async iterator of the UTF-8 lines arriving on a pipe."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> str:
        line = await self._reader.readline()
        if not line:
            raise StopAsyncIteration
        return line.decode("utf-8", errors="replace")


class _Writer:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def write(self, text: str) -> None:
        self._writer.write(text.encode("utf-8"))

    async def flush(self) -> None:
        await self._writer.drain()


def _pipe_like(fd: int) -> bool:
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


@contextlib.asynccontextmanager
async def _pipe_streams() -> AsyncIterator[tuple[_Lines, _Writer]]:
    loop = asyncio.get_running_loop()
    wire_in, wire_out = os.dup(0), os.dup(1)
    saved_in, saved_out = os.dup(0), os.dup(1)
    reader = asyncio.StreamReader(limit=_LINE_LIMIT)
    read_transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(wire_in, "rb", buffering=0)
    )
    write_transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(wire_out, "wb", buffering=0)
    )
    writer = asyncio.StreamWriter(write_transport, protocol, None, loop)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    try:
        yield _Lines(reader), _Writer(writer)
    finally:
        with contextlib.suppress(Exception):
            await writer.drain()
        write_transport.close()
        read_transport.close()
        os.dup2(saved_in, 0)
        os.dup2(saved_out, 1)
        os.close(saved_in)
        os.close(saved_out)


async def serve_stdio(server: MCPServer) -> None:
    """Serve ``server`` over this process's stdin/stdout until the client closes stdin."""
    if not (_pipe_like(0) and _pipe_like(1)):
        await server.run_stdio_async()
        return
    lowlevel = server._lowlevel_server  # the SDK's own run_stdio_async drives this same object
    async with _pipe_streams() as (lines, out), stdio_server(lines, out) as (read_stream, write_stream):  # type: ignore[arg-type]
        await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())
