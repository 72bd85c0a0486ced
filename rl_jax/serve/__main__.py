"""``python -m rl_jax.serve``: an OpenAI-compatible chat server for a model or a training checkpoint.

    python -m rl_jax.serve --model embedded                       # SmolLM2-135M-Instruct, on 127.0.0.1:8000
    python -m rl_jax.serve --checkpoint runs/<run> --port 8001 --api-key "$KEY"
    corecraft eval --base-url http://127.0.0.1:8000/v1 --model SmolLM2-135M-Instruct --out runs/eval ...

``--engine continuous`` (the default) keeps each conversation's keys and values between turns and batches
requests into decode slots as they come (``rl_jax.engine.SlotEngine``); ``plain`` re-prefills every prompt
with the plain sampler (``SamplerEngine``: the baseline). Loopback unless ``--host`` says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence

from rl_jax.serve.loading import ServedModel


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m rl_jax.serve", description=__doc__.split("\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a .gguf file, a Hugging Face checkpoint directory, or 'embedded'")
    source.add_argument("--checkpoint", metavar="DIR", help="a training run folder, its checkpoints/, or one step")
    p.add_argument("--base-model", default=None, help="with --checkpoint: the base model, if not the recorded one")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: $RL_JAX_SERVE_API_KEY if set, else none)")
    p.add_argument("--served-model-name", default=None, help="the name clients send as 'model'")
    p.add_argument("--engine", choices=["continuous", "plain"], default="continuous")
    p.add_argument("--dtype", default=None, help="compute dtype (default float32, or the run's)")
    p.add_argument("--context", type=int, default=None, help="context per conversation (default: the model's, "
                   "at most 8192)")
    p.add_argument("--slots", type=int, default=16, help="continuous engine: decode slots (concurrent turns)")
    p.add_argument("--own-capacity", type=int, default=None,
                   help="continuous engine: tokens a slot holds after the shared prefix (default: the context)")
    p.add_argument("--prefix-capacity", type=int, default=0,
                   help="continuous engine: tokens of the shared prefix cache (0: none)")
    p.add_argument("--max-batch", type=int, default=64, help="plain engine: rows per sampler call")
    p.add_argument("--default-max-tokens", type=int, default=1024,
                   help="new tokens for a request that sets no max_tokens (within the context)")
    return p.parse_args(argv)


def load(args: argparse.Namespace) -> ServedModel:
    from rl_jax.serve.loading import load_checkpoint, load_model

    if args.checkpoint:
        return load_checkpoint(args.checkpoint, base=args.base_model, dtype=args.dtype)
    return load_model(args.model, **({"dtype": args.dtype} if args.dtype else {}))


def build_engine(args: argparse.Namespace, served: ServedModel):  # -> TokenEngine
    context = min(args.context or served.model.config.max_position_embeddings,
                  served.model.config.max_position_embeddings)
    if args.context is None:
        context = min(context, 8192)
    pad_id = served.fmt.tokenizer.pad_token_id or 0
    if args.engine == "plain":
        from rl_jax.engine.sampler_engine import SamplerEngine
        from rl_jax.sampling import Sampler

        return SamplerEngine(Sampler(served.model, pad_id=pad_id), context_limit=context, max_batch=args.max_batch)
    import jax.numpy as jnp

    from rl_jax.engine.config import EngineConfig
    from rl_jax.engine.engine import SlotEngine

    config = EngineConfig(slots=args.slots, max_len=context, own_capacity=args.own_capacity,
                          prefix_capacity=args.prefix_capacity)
    cfg = served.model.config
    per_token = cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * jnp.dtype(served.model.dtype).itemsize
    tokens = config.slots * (config.own_slots + config.pad) + config.prefix_capacity
    # the caches are allocated up front: say how much, since slots x context grows fast (SmolLM2 at 8192: 3 GB
    # for 8 slots)
    print(f"continuous engine: {config.slots} slots of {config.own_slots} tokens, prefix cache "
          f"{config.prefix_capacity} tokens: {tokens * per_token / 2**30:.2f} GiB of keys and values", flush=True)
    return SlotEngine(served.model, config)


async def serve(args: argparse.Namespace) -> None:
    from rl_jax.serve.app import start_server
    from rl_jax.serve.service import ChatService, ServeConfig

    served = load(args)
    engine = build_engine(args, served)
    name = args.served_model_name or served.name
    service = ChatService(engine, served.fmt, ServeConfig(model_name=name,
                                                          default_max_tokens=args.default_max_tokens))
    api_key = args.api_key or os.environ.get("RL_JAX_SERVE_API_KEY") or None
    server = await start_server(service, host=args.host, port=args.port, api_key=api_key)
    print(f"serving {name} ({served.source}, {args.engine} engine, context {engine.context_limit}) at "
          f"{server.url}{' (API key required)' if api_key else ''}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()
        close = getattr(engine, "aclose", None)
        if close is not None:
            await close()


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        asyncio.run(serve(args))
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f"python -m rl_jax.serve: error: {exc}")


if __name__ == "__main__":
    main()
