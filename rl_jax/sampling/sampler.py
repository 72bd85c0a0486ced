"""Batched autoregressive sampling with a KV cache: one compiled prefill and one compiled decode per bucket.

A call packs prompts of any lengths left-padded into a bucketed [B, P] block, runs the prefill program (the
whole prompt through the model, filling the cache) and then the decode program: a single ``lax.while_loop``
that feeds one token per step, samples the next (``functions.sample_next``), records it with its log-prob and
exits as soon as every row has stopped. Nothing crosses to the host between tokens; the results come back
once, at the end. Prompts that begin with the same tokens (the main job's tool schemas, a GRPO group's
repeated prompt) prefill that prefix once, at one row, and keep its keys and values once, as the cache's
shared prefix that every row's queries attend to (``PrefillPlan``, ``KVCache.with_shared_prefix``): the main
job's 4 prompts with a shared 6,550-token prefix prefill 4.2x and decode 1.16x faster (BUILD.md).

Compiled programs are cached per bucket (ahead-of-time ``lower().compile()``), so compile counts and
times are explicit (``compiled_programs``, ``compile_seconds``); parameters are a run-time input, so new
weights from the trainer (``load_state``) reuse every program.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from rl_jax.models import KVCache, ModelConfig, Transformer
from rl_jax.runtime import platform_of, sampler_compiler_options
from rl_jax.sampling.buckets import Buckets, PackedPrompts, pack_prompts
from rl_jax.sampling.config import SamplingConfig
from rl_jax.sampling.functions import sample_next
from rl_jax.sharding import axis_rules, batch_sharding, batch_shards, current_rules


class StopReason(enum.IntEnum):
    """Why a row stopped: it emitted a stop token, or it reached ``max_new_tokens``."""

    STOP_TOKEN = 1
    MAX_NEW_TOKENS = 2


@dataclasses.dataclass(frozen=True)
class SampleResult:
    """Sampled continuations, one row per prompt, as host numpy arrays.

    ``tokens[i, :lengths[i]]`` are row i's new tokens (the stop token included); positions past the length
    hold the pad id in ``tokens`` and 0 in ``logprobs``. ``logprobs`` are log-probs of the sampled tokens
    under ``softmax(logits / temperature)`` before top-k/top-p (see ``SamplingConfig``).
    """

    tokens: np.ndarray  # [B, max_new_tokens] int32
    logprobs: np.ndarray  # [B, max_new_tokens] float32
    lengths: np.ndarray  # [B] int32
    stop_reasons: np.ndarray  # [B] int8, StopReason values

    def sequences(self) -> list[list[int]]:
        return [row[:n].tolist() for row, n in zip(self.tokens, self.lengths, strict=True)]

    def stop_reason_names(self) -> list[str]:
        return [StopReason(int(r)).name.lower() for r in self.stop_reasons]


@dataclasses.dataclass(frozen=True)
class CompileRecord:
    """One compiled program: what it is for and how long lowering plus compiling took."""

    kind: str  # "prefill" or "decode"
    key: tuple[Hashable, ...]
    seconds: float


@dataclasses.dataclass(frozen=True)
class PrefillPlan:
    """How one call's prompts fill the cache: bucketed shapes, and the prefix every prompt shares.

    Without sharing (``shared == 0``) the prompts are left-padded into ``batch x length``. With it, the first
    ``shared`` tokens (the same in every prompt) are prefilled once, left-padded into ``prefix_slots``, and
    kept once as the cache's shared prefix; each prompt's rest follows in the rows' own slots, left-padded
    into ``length - prefix_slots``.
    ``length`` is the prompt's share of the cache either way; ``new`` slots follow for the sampled tokens.
    """

    batch: int
    length: int
    new: int
    shared: int = 0
    prefix_slots: int = 0

    def describe(self, prompts: int) -> str:
        if not self.shared:
            return f"{prompts} prompts as {self.batch} x {self.length} tokens"
        return (f"{prompts} prompts sharing their first {self.shared} tokens: the prefix once in "
                f"{self.prefix_slots} slots, then {self.batch} x {self.length - self.prefix_slots} tokens")


# Prompts that share at least this many leading tokens prefill them once (the main job's 23 tool schemas are
# ~6,400 tokens in every prompt; a GRPO group repeats one prompt). Shorter common prefixes are not worth a
# program of their own.
DEFAULT_MIN_SHARED_PREFIX = 256

_STOP_SLOTS = 4  # stop-id vectors are padded to a multiple of this, so a new stop list rarely recompiles


class Sampler:
    """Generate continuations of token-id prompts from a Flax NNX ``Transformer``.

    >>> sampler = Sampler(model)
    >>> out = sampler.generate([[1, 2, 3], [4, 5]], SamplingConfig(temperature=0.7, max_new_tokens=64),
    ...                        jax.random.key(0))

    ``pad_id`` only fills padding (masked out everywhere); ``cache_dtype`` defaults to the model's compute
    dtype. With a ``mesh`` (the model's parameters already placed on it, e.g. by ``shard_module``), prompts
    and the KV cache are split over its batch axes (data, fsdp) and the programs are compiled under it and
    under the logical-axis rules in force when the sampler is made, so activation constraints apply. On a
    mesh spanning several processes (``jax.distributed``) ``generate`` is a collective: every process calls it with the same prompts and keys, each computes its own data rows, and
    every process gets the whole ``SampleResult`` back (all-gathered), what one process would return. Row
    ``i`` draws from ``fold_in(key, i)`` unless ``row_keys`` gives its key directly, so a row's continuation
    never depends on which other prompts share its batch.

    ``compiler_options`` go to XLA with every program this sampler compiles; by default each program gets the
    options measured fastest for its batch bucket on the parameters' platform
    (``rl_jax.runtime.sampler_compiler_options``); ``{}`` means XLA's own defaults throughout.

    Prompts that all begin with the same ``min_shared_prefix`` or more tokens (a system prompt with tool
    schemas, a GRPO group's repeated prompt) prefill that prefix once and hold its keys and values once for
    all rows (``PrefillPlan``); the results equal separate prefills up to float rounding. ``None`` turns this
    off.
    """

    def __init__(
        self,
        model: Transformer,
        *,
        pad_id: int = 0,
        cache_dtype: jnp.dtype | None = None,
        buckets: Buckets | None = None,
        mesh: Mesh | None = None,
        compiler_options: Mapping[str, Any] | None = None,
        min_shared_prefix: int | None = DEFAULT_MIN_SHARED_PREFIX,
    ) -> None:
        if min_shared_prefix is not None and min_shared_prefix < 1:
            raise ValueError(f"min_shared_prefix must be >= 1 (or None to turn sharing off); got {min_shared_prefix}")
        self._min_shared_prefix = min_shared_prefix
        self._graphdef, self._state = nnx.split(model)
        self._platform = mesh.devices.flat[0].platform if mesh is not None else platform_of(self._state)
        self._compiler_options = None if compiler_options is None else dict(compiler_options)
        self._cfg: ModelConfig = model.config
        self._pad_id = int(pad_id)
        self._mesh = mesh
        # the logical-axis rules in force now: programs are traced later, each under these
        self._rules = current_rules()
        # on a mesh the batch is split over the batch axes (data, fsdp): round it up to a multiple of them
        shards = batch_shards(mesh) if mesh is not None else 1
        self._buckets = buckets or Buckets(min_batch=shards)
        if self._buckets.batch(1) % shards:
            raise ValueError(f"batch buckets must be multiples of the mesh's batch axes (data x fsdp = {shards})")
        self._cache_dtype = jnp.dtype(cache_dtype if cache_dtype is not None else model.dtype)
        self._programs: dict[tuple[Hashable, ...], Any] = {}
        self._compile_log: list[CompileRecord] = []
        # seconds spent in each stage of ``generate`` (compiles included) since the caller last cleared it
        self.stage_seconds: dict[str, float] = {}

    # ------------------------------------------------------------------ public

    @property
    def compiled_programs(self) -> int:
        return len(self._programs)

    def compiler_options(self, batch: int) -> dict[str, Any]:
        """The options XLA compiles this sampler's programs for a ``batch``-row bucket with."""
        if self._compiler_options is not None:
            return dict(self._compiler_options)
        return sampler_compiler_options(self._platform, batch)

    @property
    def compile_log(self) -> tuple[CompileRecord, ...]:
        return tuple(self._compile_log)

    def load_state(self, model_or_state: nnx.Module | nnx.State) -> None:
        """Swap in new weights (same shapes, dtypes and shardings): compiled programs are reused."""
        if isinstance(model_or_state, nnx.Module):
            _, state = nnx.split(model_or_state)
        else:
            state = model_or_state
        if jax.tree.structure(state) != jax.tree.structure(self._state):
            raise ValueError("new state does not have the structure of the sampler's model")
        self._state = state

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        config: SamplingConfig,
        key: jax.Array | None = None,
        *,
        row_keys: jax.Array | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> SampleResult:
        """Sample up to ``config.max_new_tokens`` tokens after each prompt.

        Give ``key`` (one PRNG key for the call) or ``row_keys`` (one per prompt); greedy decoding needs
        neither. The same keys, prompts, config and weights give the same result. ``progress`` receives a line
        as each stage ends (prefill, decode), with its time and how much of it was compiling: a long prompt's
        prefill alone can take minutes on a CPU.
        """
        start, compiled = time.perf_counter(), len(self._compile_log)
        cache, last_logits, packed, shape = self.prefill(prompts, config)
        jax.block_until_ready(last_logits)  # generate waits for the result anyway; this only splits the time
        self.stage_seconds["prefill"] = self.stage_seconds.get("prefill", 0.0) + time.perf_counter() - start
        if progress is not None:
            progress(f"prefill: {self.plan(prompts, config).describe(len(prompts))} "
                     f"{self._stage_time(start, compiled)}")
        start, compiled = time.perf_counter(), len(self._compile_log)
        tokens, logprobs, lengths, reasons = self.decode(cache, last_logits, packed, shape, config, key, row_keys)
        out = _to_host((tokens, logprobs, lengths, reasons))
        self.stage_seconds["decode"] = self.stage_seconds.get("decode", 0.0) + time.perf_counter() - start
        if progress is not None:
            progress(f"decode: {int(np.asarray(out[2]).max(initial=0))} steps (up to {config.max_new_tokens}) "
                     f"{self._stage_time(start, compiled)}")
        n, width = len(prompts), config.max_new_tokens
        return SampleResult(
            tokens=np.asarray(out[0][:n, :width]),
            logprobs=np.asarray(out[1][:n, :width]),
            lengths=np.asarray(out[2][:n]),
            stop_reasons=np.asarray(out[3][:n]).astype(np.int8),
        )

    def _stage_time(self, start: float, compiled_before: int) -> str:
        compiling = sum(r.seconds for r in self._compile_log[compiled_before:])
        return f"in {time.perf_counter() - start:.1f} s" + (f" ({compiling:.1f} s compiling)" if compiling else "")

    # The two stages are public so a benchmark can time them apart; generate() is the usual entry point.

    def plan(self, prompts: Sequence[Sequence[int]], config: SamplingConfig) -> PrefillPlan:
        """The bucketed shapes ``prefill`` will use for these prompts, and the prefix they share (if any)."""
        longest = max((len(p) for p in prompts), default=0)
        batch = self._buckets.batch(len(prompts))
        new = self._buckets.length(config.max_new_tokens)
        shared = self._shared_prefix(prompts)
        if not shared:
            return PrefillPlan(batch, self._buckets.length(max(longest, 1)), new)
        prefix_slots = self._buckets.length(shared)
        suffix_slots = self._buckets.length(longest - shared)
        return PrefillPlan(batch, prefix_slots + suffix_slots, new, shared, prefix_slots)

    def _shared_prefix(self, prompts: Sequence[Sequence[int]]) -> int:
        """Leading tokens common to every prompt, worth prefilling once; 0 when sharing does not apply.

        Every prompt keeps at least its last token out of the prefix: the logits that start decoding come
        from each row's own last position.
        """
        if self._min_shared_prefix is None or len(prompts) < 2 or min(len(p) for p in prompts) <= 1:
            return 0
        first = np.asarray(prompts[0], dtype=np.int64).reshape(-1)
        common = min(len(p) for p in prompts) - 1
        for prompt in prompts[1:]:
            other = np.asarray(prompt, dtype=np.int64).reshape(-1)[:common]
            differ = np.flatnonzero(other != first[:common])
            common = int(differ[0]) if differ.size else common
        return common if common >= self._min_shared_prefix else 0

    def prefill(
        self, prompts: Sequence[Sequence[int]], config: SamplingConfig
    ) -> tuple[Any, jax.Array, PackedPrompts, tuple[int, int, int]]:
        """Run the prompts through the model into a fresh cache; returns the last position's logits.

        The returned ``PackedPrompts`` lay out the cache's prompt slots (for a shared prefix: the prefix
        block, then the rest of each prompt); its ``lengths`` are the whole prompts' lengths.
        """
        longest = max((len(p) for p in prompts), default=0)
        limit = self._cfg.max_position_embeddings
        if longest + config.max_new_tokens > limit:
            raise ValueError(
                f"prompt ({longest} tokens) + max_new_tokens ({config.max_new_tokens}) exceeds the model's "
                f"max_position_embeddings ({limit})"
            )
        plan = self.plan(prompts, config)
        batch, length, new = plan.batch, plan.length, plan.new
        if plan.shared:
            return self._prefill_shared(prompts, plan)
        packed = pack_prompts(prompts, batch, length, self._pad_id, self._cfg.vocab_size)
        args = (self._state, *self._place(packed.tokens, packed.positions, packed.mask))
        program = self._program(("prefill", batch, length, new), lambda: self._prefill_fn(length + new), args)
        cache, last_logits = program(*args)
        return cache, last_logits, packed, (batch, length, new)

    def _prefill_shared(
        self, prompts: Sequence[Sequence[int]], plan: PrefillPlan
    ) -> tuple[Any, jax.Array, PackedPrompts, tuple[int, int, int]]:
        """The shared prefix through the model once (as many rows as the smallest batch bucket: one, or one per
        data shard on a mesh), then every prompt's rest into the rows' own slots after it."""
        shared, vocab = plan.shared, self._cfg.vocab_size
        prefix_rows = self._buckets.batch(1)
        suffix_slots = plan.length - plan.prefix_slots
        head = pack_prompts([prompts[0][:shared]] * prefix_rows, prefix_rows, plan.prefix_slots, self._pad_id, vocab)
        tail = pack_prompts([p[shared:] for p in prompts], plan.batch, suffix_slots, self._pad_id, vocab)
        tail_positions = tail.positions + np.int32(shared)  # the rest continues where the prefix ends
        args = (
            self._state,
            *self._place(head.tokens, head.positions, head.mask, tail.tokens, tail_positions, tail.mask),
        )
        key = ("prefill_shared", plan.batch, plan.prefix_slots, suffix_slots, plan.new)
        program = self._program(key, lambda: self._prefill_shared_fn(plan.batch, suffix_slots + plan.new), args)
        cache, last_logits = program(*args)

        def joined(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.concatenate([np.broadcast_to(a[:1], (plan.batch, a.shape[1])), b], axis=1)

        packed = PackedPrompts(
            tokens=joined(head.tokens, tail.tokens),
            positions=joined(head.positions, tail_positions),
            mask=joined(head.mask, tail.mask),
            lengths=tail.lengths + np.int32(shared),
            live=tail.live,
        )
        return cache, last_logits, packed, (plan.batch, plan.length, plan.new)

    def decode(
        self,
        cache: Any,
        last_logits: jax.Array,
        packed: PackedPrompts,
        shape: tuple[int, int, int],
        config: SamplingConfig,
        key: jax.Array | None,
        row_keys: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """Sample token by token inside one compiled loop; returns device arrays (tokens, logprobs,
        lengths, stop reasons), each with the bucketed batch and new-token sizes. Consumes ``cache``."""
        batch, length, new = shape
        key_data, per_row, impl = _row_key_data(key, row_keys, int(packed.live.sum()), batch, config.greedy)
        n_stops = _STOP_SLOTS * max(1, -(-len(config.stop_token_ids) // _STOP_SLOTS))
        stops = np.full((n_stops,), -1, np.int32)
        stops[: len(config.stop_token_ids)] = config.stop_token_ids
        args = (
            self._state,
            cache,
            last_logits,
            *self._place(packed.lengths, packed.live, key_data),
            np.bool_(per_row),
            np.float32(config.temperature),
            np.float32(config.top_p),
            stops,
            np.int32(config.max_new_tokens),
        )
        prefix = 0 if cache.prefix_valid is None else cache.prefix_valid.shape[1]  # the cache's structure
        program_key = ("decode", batch, length, new, prefix, n_stops, impl, *config.program_key)
        greedy, top_k, use_top_p = config.program_key
        program = self._program(
            program_key, lambda: self._decode_fn(new, impl, greedy, top_k, use_top_p), args, donate=(1,)
        )
        tokens, logprobs, lengths, reasons, _ = program(*args)
        return tokens, logprobs, lengths, reasons

    # ------------------------------------------------------------------ compiled programs

    def _place(self, *arrays: np.ndarray) -> tuple[Any, ...]:
        """Batch-major host arrays onto the mesh's batch axes (left to the program when there is no mesh)."""
        if self._mesh is None:
            return arrays
        return tuple(jax.device_put(a, batch_sharding(self._mesh, a.ndim)) for a in arrays)

    def _program(
        self,
        key: tuple[Hashable, ...],
        build: Callable[[], Callable[..., Any]],
        args: tuple[Any, ...],
        donate: tuple[int, ...] = (),
    ) -> Any:
        program = self._programs.get(key)
        if program is None:
            start = time.perf_counter()
            under_mesh = jax.set_mesh(self._mesh) if self._mesh is not None else contextlib.nullcontext()
            with under_mesh, axis_rules(self._rules):
                options = self.compiler_options(int(key[1]))  # every program key holds its batch bucket second
                program = jax.jit(build(), donate_argnums=donate).lower(*args).compile(options)
            self._compile_log.append(CompileRecord(str(key[0]), key, time.perf_counter() - start))
            self._programs[key] = program
        return program

    def _prefill_fn(self, cache_len: int) -> Callable[..., Any]:
        graphdef, cfg, cache_dtype, mesh = self._graphdef, self._cfg, self._cache_dtype, self._mesh

        def prefill(state, tokens, positions, mask):
            model = nnx.merge(graphdef, state)
            cache = KVCache.init(cfg, tokens.shape[0], cache_len, cache_dtype, mesh=mesh)
            hidden, cache = model.forward_hidden(tokens, positions, attention_mask=mask, cache=cache, fresh_cache=True)
            # left padding puts every row's last prompt token in the last column: only it needs logits
            return cache, model.logits(hidden[:, -1])

        return prefill

    def _prefill_shared_fn(self, batch: int, cache_len: int) -> Callable[..., Any]:
        graphdef, cfg, cache_dtype, mesh = self._graphdef, self._cfg, self._cache_dtype, self._mesh

        def prefill_shared(state, head_tokens, head_positions, head_mask, tail_tokens, tail_positions, tail_mask):
            model = nnx.merge(graphdef, state)
            head = KVCache.init(cfg, head_tokens.shape[0], head_tokens.shape[1], cache_dtype, mesh=mesh)
            _, head = model.forward_hidden(head_tokens, head_positions, head_mask, head, fresh_cache=True)
            # the rows' own slots (the rest of each prompt, then the sampled tokens) after the prefix, held once
            cache = KVCache.init(cfg, batch, cache_len, cache_dtype, mesh=mesh).with_shared_prefix(head)
            hidden, cache = model.forward_hidden(tail_tokens, tail_positions, tail_mask, cache)
            return cache, model.logits(hidden[:, -1])

        return prefill_shared

    def _decode_fn(
        self, new: int, impl: str | None, greedy: bool, top_k: int, use_top_p: bool
    ) -> Callable[..., Any]:
        graphdef, pad_id = self._graphdef, self._pad_id
        pick = functools.partial(sample_next, greedy=greedy, top_k=top_k, use_top_p=use_top_p)

        def decode(state, cache, logits, prompt_lens, live, key_data, per_row, temperature, top_p, stops, max_new):
            model = nnx.merge(graphdef, state)
            batch = logits.shape[0]
            if impl is None:
                keys = None
            else:
                given = jax.random.wrap_key_data(key_data, impl=impl)
                folded = jax.vmap(jax.random.fold_in)(given, jnp.arange(batch, dtype=jnp.uint32))
                data = jnp.where(per_row, key_data, jax.random.key_data(folded))
                keys = jax.random.wrap_key_data(data, impl=impl)

            def draw(t, logits):
                step_keys = None if keys is None else jax.vmap(jax.random.fold_in, (0, None))(keys, t)
                return pick(step_keys, logits, temperature, top_p)

            def record(carry, t, tok, logp):
                out_tokens, out_logps, lengths, reasons, done = carry
                active = ~done
                out_tokens = out_tokens.at[:, t].set(jnp.where(active, tok, pad_id))
                out_logps = out_logps.at[:, t].set(jnp.where(active, logp, 0.0))
                lengths = lengths + active.astype(jnp.int32)
                hit_stop = active & jnp.any(tok[:, None] == stops[None, :], axis=-1)
                hit_limit = active & ~hit_stop & (t + 1 >= max_new)
                reasons = jnp.where(hit_stop, int(StopReason.STOP_TOKEN), reasons)
                reasons = jnp.where(hit_limit, int(StopReason.MAX_NEW_TOKENS), reasons)
                return out_tokens, out_logps, lengths, reasons, done | hit_stop | hit_limit

            outputs = (
                jnp.full((batch, new), pad_id, jnp.int32),
                jnp.zeros((batch, new), jnp.float32),
                jnp.zeros((batch,), jnp.int32),
                jnp.zeros((batch,), jnp.int32),
                ~live,
            )
            tok, logp = draw(0, logits)
            outputs = record(outputs, 0, tok, logp)
            all_true = jnp.ones((batch, 1), bool)

            def cond(loop):
                t, _, _, outputs = loop
                return (t < max_new) & ~jnp.all(outputs[-1])

            def body(loop):
                t, tok, cache, outputs = loop
                positions = (prompt_lens + t - 1)[:, None]
                hidden, cache = model.forward_hidden(tok[:, None], positions, attention_mask=all_true, cache=cache)
                tok, logp = draw(t, model.logits(hidden[:, 0]))
                return t + 1, tok, cache, record(outputs, t, tok, logp)

            _, _, cache, outputs = jax.lax.while_loop(cond, body, (jnp.int32(1), tok, cache, outputs))
            out_tokens, out_logps, lengths, reasons, _ = outputs
            # the cache goes back out so its donated input buffers are updated in place, not copied
            return out_tokens, out_logps, lengths, reasons, cache

        return decode


def _to_host(arrays: tuple[jax.Array, ...]) -> tuple[np.ndarray, ...]:
    """Results as host numpy arrays holding every row.

    On one process a plain ``device_get``. On a mesh spanning processes the rows are sharded over them and no
    process can read the others' shards (``device_get`` raises): all-gather them so every process returns
    the whole batch. The outputs are small (token ids and log-probs), so the gather costs next to nothing
    beside decoding.
    """
    if all(a.is_fully_addressable for a in arrays):
        return tuple(np.asarray(a) for a in jax.device_get(arrays))
    return tuple(np.asarray(a) for a in multihost_utils.process_allgather(arrays, tiled=True))


def _row_key_data(
    key: jax.Array | None, row_keys: jax.Array | None, n_rows: int, batch: int, greedy: bool
) -> tuple[np.ndarray, bool, str | None]:
    """Host-side key material [batch, ...] uint32, whether it is already per row, and the key impl name."""
    if key is not None and row_keys is not None:
        raise ValueError("give either key or row_keys, not both")
    if greedy:  # greedy decoding draws nothing: one program whatever keys were given
        return np.zeros((batch, 1), np.uint32), False, None
    if key is None and row_keys is None:
        raise ValueError("sampling with temperature > 0 needs a PRNG key (key=... or row_keys=...)")
    given = key if key is not None else row_keys
    assert given is not None
    if not jax.dtypes.issubdtype(given.dtype, jax.dtypes.prng_key):
        given = jax.random.wrap_key_data(given)  # legacy uint32 keys (jax.random.PRNGKey)
    impl = str(jax.random.key_impl(given))
    data = np.asarray(jax.random.key_data(given))
    if key is not None:
        if given.shape != ():
            raise ValueError(f"key must be a single PRNG key; got shape {given.shape} (use row_keys)")
        return np.broadcast_to(data, (batch, *data.shape)).copy(), False, impl
    if given.shape != (n_rows,):
        raise ValueError(f"row_keys must hold one key per prompt ({n_rows}); got shape {given.shape}")
    padded = np.zeros((batch, *data.shape[1:]), data.dtype)
    padded[:n_rows] = data
    return padded, True, impl
