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
import json
import os
import re
import stat
from collections.abc import AsyncIterator

from mcp.server import MCPServer
from mcp.server.stdio import stdio_server

_LINE_LIMIT = 64 * 1024 * 1024  # one JSON-RPC message per line; the HTTP transport's body limit is far below


class _Pending:
    """Requests read minus responses written: at end of input the server first answers what it was asked
    (the SDK's loop would otherwise cancel requests still in flight when stdin closes right after them)."""

    def __init__(self) -> None:
        self.count = 0
        self.changed = asyncio.Event()

    def add(self, delta: int) -> None:
        self.count += delta
        self.changed.set()

    async def drained(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self.count > 0:
                    self.changed.clear()
                    await self.changed.wait()


# How the SDK serializes a response ('jsonrpc', 'id', then 'result' or 'error'): recognized without parsing.
_RESPONSE = re.compile(r'\{"jsonrpc":"2\.0","id":(?:"(?:[^"\\]|\\.)*"|-?\d+),"(?:result|error)":')


def _kind(line: str | bytes) -> str:
    """'request', 'response' or 'other' for one JSON-RPC line (anything unparsable is 'other')."""
    if isinstance(line, str) and _RESPONSE.match(line):
        return "response"
    try:
        message = json.loads(line)
    except ValueError:
        return "other"
    if not isinstance(message, dict) or "id" not in message:
        return "other"
    return "request" if "method" in message else "response"


class _Lines:
    """Async iterator of the UTF-8 lines arriving on a pipe."""

    def __init__(self, reader: asyncio.StreamReader, pending: _Pending) -> None:
        self._reader = reader
        self._pending = pending

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> str:
        line = await self._reader.readline()
        if not line:
            await self._pending.drained(timeout_s=30.0)
            raise StopAsyncIteration
        if _kind(line) == "request":
            self._pending.add(1)
        return line.decode("utf-8", errors="replace")


class _Writer:
    def __init__(self, writer: asyncio.StreamWriter, pending: _Pending) -> None:
        self._writer = writer
        self._pending = pending

    async def write(self, text: str) -> None:
        self._writer.write(text.encode("utf-8"))
        if self._pending.count and _kind(text) == "response":
            self._pending.add(-1)

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
        pending = _Pending()
        yield _Lines(reader, pending), _Writer(writer, pending)
    finally:
        # drain() only waits below the high-water mark: wait until every byte has left before closing, or a
        # response still buffered when the client closes stdin would be lost.
        with contextlib.suppress(Exception):
            while write_transport.get_write_buffer_size() and not write_transport.is_closing():
                await asyncio.sleep(0.001)
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
