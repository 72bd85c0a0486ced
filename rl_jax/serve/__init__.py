"""An OpenAI-compatible chat server over a generation engine: ``python -m rl_jax.serve --model PATH``.

``protocol`` checks requests and shapes replies (OpenAI's wire format), ``choice_text`` turns sampled tokens
into text and tool calls, ``sessions`` recognises a conversation's next turn, ``service`` runs requests on a
``TokenEngine``, ``app`` is the aiohttp application, ``loading`` finds the model or checkpoint to serve.
"""

from rl_jax.serve.app import make_app, serving, start_server
from rl_jax.serve.protocol import ApiError, ChatRequest, parse_chat_request
from rl_jax.serve.service import ChatService, ServeConfig

__all__ = ["ApiError", "ChatRequest", "ChatService", "ServeConfig", "make_app", "parse_chat_request", "serving",
           "start_server"]
