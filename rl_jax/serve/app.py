"""The HTTP side: an aiohttp application with OpenAI's routes over one ``ChatService``.

    POST /v1/chat/completions    stream or not (server-sent events ending in ``data: [DONE]``)
    GET  /v1/models, /v1/models/{id}
    GET  /health                 no auth: for load balancers and start-up scripts

With an API key every ``/v1`` route wants ``Authorization: Bearer KEY`` (401 otherwise). Errors are JSON in
OpenAI's shape. A client that goes away cancels its handler (``handler_cancellation``), which cancels its
engine requests and frees their slots. ``X-Session-Id`` pins a conversation's engine session explicitly
(otherwise the server recognises a conversation's next turn by itself: ``sessions.SessionBook``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from rl_jax.serve.protocol import ApiError, parse_chat_request
from rl_jax.serve.service import ChatService

logger = logging.getLogger(__name__)
SERVICE = web.AppKey("service", ChatService)
MAX_BODY_BYTES = 16 * 2**20
SESSION_HEADER = "X-Session-Id"


def _error(exc: ApiError) -> web.Response:
    return web.json_response(exc.body(), status=exc.status)


def _auth_middleware(api_key: str | None) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if api_key is not None and request.path.startswith("/v1"):
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return _error(ApiError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'",
                                       kind="authentication_error", code="invalid_api_key"))
        try:
            return await handler(request)
        except ApiError as exc:
            return _error(exc)
        except web.HTTPException as exc:  # aiohttp's own (404 route, 405 method, 413 body): OpenAI's shape
            if exc.status < 400:
                raise
            return _error(ApiError(exc.status, exc.reason, kind="invalid_request_error"))
        except (ConnectionResetError, asyncio.CancelledError):  # the client is gone: nobody to answer
            raise
        except Exception as exc:
            logger.exception("failed to answer %s %s", request.method, request.path)
            return _error(ApiError(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error"))

    return middleware


async def health(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    return web.json_response({"status": "ok", "model": service.model_name,
                              "context_limit": service.engine.context_limit})


def _model_card(service: ChatService) -> dict[str, object]:
    return {"id": service.model_name, "object": "model", "created": int(time.time()), "owned_by": "rl_jax",
            "context_length": service.engine.context_limit}


async def list_models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [_model_card(request.app[SERVICE])]})


async def get_model(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    if request.match_info["model"] != service.model_name:
        raise ApiError(404, f"The model '{request.match_info['model']}' does not exist", param="model",
                       code="model_not_found")
    return web.json_response(_model_card(service))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    try:
        body = await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    chat = parse_chat_request(body)
    session = request.headers.get(SESSION_HEADER) or None
    if not chat.stream:
        return web.json_response(await service.complete(chat, session=session))
    chunks = service.stream(chat, session=session)
    try:
        first = await anext(chunks)  # an unservable request fails here, as a plain JSON error
    except StopAsyncIteration:
        first = None
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    try:
        if first is not None:
            await _send(response, first)
        async for chunk in chunks:
            await _send(response, chunk)
    except ApiError as exc:  # after the headers: the error goes in the stream, as OpenAI does
        await _send(response, exc.body())
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception as exc:
        logger.exception("failed while streaming %s", request.path)
        await _send(response, ApiError(500, f"internal error: {type(exc).__name__}: {exc}",
                                       kind="server_error").body())
    finally:
        await chunks.aclose()
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def _send(response: web.StreamResponse, body: dict[str, object]) -> None:
    await response.write(f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode())


def make_app(service: ChatService, *, api_key: str | None = None) -> web.Application:
    app = web.Application(middlewares=[_auth_middleware(api_key)], client_max_size=MAX_BODY_BYTES)
    app[SERVICE] = service
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", get_model)
    app.router.add_post("/v1/chat/completions", chat_completions)
    return app


@dataclass
class RunningServer:
    runner: web.AppRunner
    url: str  # the OpenAI base URL: http://host:port/v1

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_server(service: ChatService, *, host: str = "127.0.0.1", port: int = 0,
                       api_key: str | None = None) -> RunningServer:
    """Serve on ``host:port`` (0: a free port) in the running event loop; ``stop()`` when done."""
    runner = web.AppRunner(make_app(service, api_key=api_key), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    shown = f"[{host}]" if ":" in host else host
    return RunningServer(runner, f"http://{shown}:{bound}/v1")


@contextlib.asynccontextmanager
async def serving(service: ChatService, **options: object) -> AsyncIterator[RunningServer]:
    server = await start_server(service, **options)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        await server.stop()
