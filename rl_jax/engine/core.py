"""The engine's host side: which request holds which slot, what each slot's cache holds, and one step at a time.

``EngineCore`` is synchronous and single-threaded: ``step()`` admits waiting requests into slots, prefills their
new tokens (chunks of every admitted request batched together), then runs one decode call over every live slot,
and returns what each request produced. Requests, cancellations, ended sessions and new weights arrive through
a thread-safe inbox (``submit`` etc. never wait for a step), so ``SlotEngine`` can run steps in a worker thread
while its event loop keeps taking requests.

Slot choice and reuse. A request naming a ``session`` that holds a slot gets that slot back; otherwise a free
slot (one whose conversation ended or had no session), preferring the one whose cached tokens share the
longest prefix with the prompt (so sessionless multi-turn callers, such as the rollout pool, still find their
history), else the least recently used idle session's slot. The cached tokens the prompt begins with are kept
and only the rest is prefilled; a prompt beginning with the shared prefix region's tokens reads them from
there instead (whichever reuses more). The prefix region is filled from the first prompt of at least
``min_shared_prefix`` tokens that arrives while nothing references it (the system prompt and tools; a GRPO
group's whole prompt), once per weight version.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from rl_jax.engine.api import Finish, GenerationRequest, TokenChunk
from rl_jax.engine.config import EngineConfig
from rl_jax.engine.prefill_plan import plan_prefill_calls
from rl_jax.engine.slots import SlotCache, decode_fn, fill_prefix_fn, prefill_fn
from rl_jax.models import Transformer
from rl_jax.runtime import platform_of, sampler_compiler_options
from rl_jax.sharding import axis_rules, batch_sharding, batch_shards, current_rules

_STOP_SLOTS = 4  # stop-id vectors are padded to a multiple of this, so a new stop list rarely recompiles

Event = tuple[int, TokenChunk | BaseException]


@dataclasses.dataclass(frozen=True)
class CompileRecord:
    key: tuple[Hashable, ...]
    seconds: float


@dataclasses.dataclass
class EngineStats:
    """Counters since the last ``reset_stats``."""

    turns: int = 0
    prompt_tokens: int = 0  # tokens of the prompts as given
    prefilled_tokens: int = 0  # of those, the ones computed (the rest came from a slot's or the prefix's cache)
    prefix_tokens: int = 0  # tokens computed into the shared prefix region
    prefill_positions: int = 0  # positions the prefill calls computed: their rows x chunk, padding included
    new_tokens: int = 0
    prefill_calls: int = 0
    decode_calls: int = 0
    seconds: float = 0.0  # in steps, compiles included
    prefill_seconds: float = 0.0  # admission, prefix fills and prefill calls until ready, compiles included
    decode_seconds: float = 0.0  # in decode calls, compiles included


@dataclasses.dataclass
class _Turn:
    id: int
    request: GenerationRequest
    key_data: np.ndarray | None
    impl: str | None
    slot: int = -1
    pending: list[int] = dataclasses.field(default_factory=list)  # prompt tokens still to prefill
    budget: int = 0
    emitted: int = 0
    computed: int = 0


@dataclasses.dataclass
class _Slot:
    tokens: list[int] = dataclasses.field(default_factory=list)  # what the cache holds: prefix part + own part
    prefix_len: int = 0
    session: str | None = None
    turn: _Turn | None = None
    last_used: float = 0.0
    stale: bool = False  # computed with replaced weights: forgotten when its turn ends

    @property
    def own_len(self) -> int:
        return len(self.tokens) - self.prefix_len


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x, y = np.asarray(a[:n], np.int64), np.asarray(b[:n], np.int64)
    differ = np.flatnonzero(x != y)
    return int(differ[0]) if differ.size else n


def _key_material(key: Any) -> tuple[np.ndarray | None, str | None]:
    if key is None:
        return None, None
    if not jax.dtypes.issubdtype(getattr(key, "dtype", np.uint32), jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32))  # a legacy uint32 key
    if key.shape != ():
        raise ValueError(f"a request's key must be a single PRNG key; got shape {key.shape}")
    return np.asarray(jax.random.key_data(key)), str(jax.random.key_impl(key))


class EngineCore:
    """Slots, their caches and the compiled programs over them (module docstring). ``model``'s weights are
    copied in as a state (``load_state`` swaps them in place). On a ``mesh`` (the model already placed on it)
    slots split over the data axis and kv heads over the model axis; ``slots`` must divide by the data axis.

    ``compiler_options`` go to XLA with every program; by default the prefill programs get the options the
    sampler's programs of their batch get on this platform (``rl_jax.runtime.sampler_compiler_options``: on
    CPU, no YNNPACK fusions from 8 rows up) and decode keeps XLA's defaults: on the 2-core CPU, SmolLM2-135M,
    three alternating rounds, 16 rows x 128 positions prefilled 1.3-2.2x faster with the options (16 x 64:
    0.96-2.7x) and 32 slots decoded 1.2-1.7x faster without them (BUILD.md); ``{}`` means XLA's own defaults
    throughout."""

    def __init__(self, model: Transformer, config: EngineConfig | None = None, *, mesh: Mesh | None = None,
                 cache_dtype: Any = None, compiler_options: Mapping[str, Any] | None = None) -> None:
        cfg = model.config
        config = config if config is not None else EngineConfig()
        if config.max_len > cfg.max_position_embeddings:
            raise ValueError(f"max_len {config.max_len} exceeds the model's positions ({cfg.max_position_embeddings})")
        # on a mesh every program's rows split over the batch axes: row counts are multiples of their size
        self._row_multiple = batch_shards(mesh) if mesh is not None else 1
        if config.slots % self._row_multiple:
            raise ValueError(f"slots ({config.slots}) must be a multiple of the mesh's batch shards "
                             f"({self._row_multiple})")
        self.config = config
        self.model_config = cfg
        self._graphdef, self._state = nnx.split(model)
        self._mesh = mesh
        self._platform = mesh.devices.flat[0].platform if mesh is not None else platform_of(self._state)
        self._compiler_options = None if compiler_options is None else dict(compiler_options)
        self._rules = current_rules()  # programs are traced later, each under the rules in force now
        dtype = jnp.dtype(cache_dtype if cache_dtype is not None else model.dtype)
        prefix_slots = config.prefix_capacity + config.pad if config.prefix_capacity else 0
        self._cache = SlotCache.init(cfg, config.slots, config.own_slots + config.pad, prefix_slots, dtype, mesh)
        self._slots = [_Slot() for _ in range(config.slots)]
        self._sessions: dict[str, int] = {}
        self._prefix: tuple[int, ...] = ()  # the tokens the prefix region holds for the current weights
        self._queue: list[_Turn] = []
        self._turns: dict[int, _Turn] = {}
        self._inbox: list[tuple[str, Any]] = []
        self._inbox_lock = threading.Lock()
        self._next_id = 0
        self._programs: dict[tuple[Hashable, ...], Any] = {}
        self.compile_log: list[CompileRecord] = []
        self.stats = EngineStats()

    # ------------------------------------------------------------------ the inbox (any thread)

    @property
    def context_limit(self) -> int:
        return self.config.max_len

    @property
    def compiled_programs(self) -> int:
        return len(self._programs)

    def submit(self, request: GenerationRequest) -> int:
        """Queue a turn; its id names its events. Raises ValueError for a prompt that cannot fit."""
        if len(request.prompt) >= self.config.max_len:
            raise ValueError(f"prompt of {len(request.prompt)} tokens leaves no room in the context "
                             f"({self.config.max_len} tokens)")
        vocab = self.model_config.vocab_size
        if min(request.prompt) < 0 or max(request.prompt) >= vocab:
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        greedy = request.temperature == 0.0
        key_data, impl = (None, None) if greedy else _key_material(request.key)
        with self._inbox_lock:
            turn = _Turn(self._next_id, request, key_data, impl)
            self._next_id += 1
            self._inbox.append(("submit", turn))
        return turn.id

    def cancel(self, turn_id: int) -> None:
        self._post("cancel", turn_id)

    def end_session(self, session: str) -> None:
        self._post("end_session", session)

    def load_state(self, model_or_state: nnx.Module | nnx.State) -> None:
        """New weights (same structure) from the next step on; every cache computed with the old ones is
        forgotten (a turn in flight finishes on its cache, then its slot forgets it). No program recompiles."""
        state = nnx.split(model_or_state)[1] if isinstance(model_or_state, nnx.Module) else model_or_state
        if jax.tree.structure(state) != jax.tree.structure(self._state):
            raise ValueError("new state does not have the structure of the engine's model")
        self._post("load_state", state)

    def _post(self, kind: str, value: Any) -> None:
        with self._inbox_lock:
            self._inbox.append((kind, value))

    def waiting_turns(self) -> int:
        """Turns submitted and not yet given a slot."""
        with self._inbox_lock:
            submitted = sum(kind == "submit" for kind, _ in self._inbox)
        return submitted + len(self._queue)

    def has_work(self) -> bool:
        with self._inbox_lock:
            if self._inbox:
                return True
        return bool(self._queue) or any(s.turn is not None for s in self._slots)

    # ------------------------------------------------------------------ one step (the engine's thread)

    def step(self) -> list[Event]:
        start = time.perf_counter()
        events: list[Event] = []
        self._drain(events)
        prefill_start = time.perf_counter()
        self._admit(events)  # fills the prefix region when a prompt starts it
        self._prefill()
        jax.block_until_ready(self._cache.logits)  # the decode waits for it anyway; this splits the time
        decode_start = time.perf_counter()
        self.stats.prefill_seconds += decode_start - prefill_start
        self._decode(events)
        self.stats.decode_seconds += time.perf_counter() - decode_start
        self.stats.seconds += time.perf_counter() - start
        return events

    def run_until_idle(self) -> list[Event]:
        """Steps until nothing is waiting or running (tests, benchmarks without an event loop)."""
        events: list[Event] = []
        while self.has_work():
            events.extend(self.step())
        return events

    def _drain(self, events: list[Event]) -> None:
        with self._inbox_lock:
            inbox, self._inbox = self._inbox, []
        for kind, value in inbox:
            if kind == "submit":
                self._queue.append(value)
                self._turns[value.id] = value
            elif kind == "cancel":
                self._drop(value)
            elif kind == "end_session":
                index = self._sessions.pop(value, None)
                if index is not None:
                    self._slots[index].session = None
            elif kind == "load_state":
                self._state = value
                self._prefix = ()
                for slot in self._slots:
                    if slot.turn is None:
                        slot.tokens, slot.prefix_len = [], 0
                    else:
                        slot.stale = True

    def abort(self) -> list[int]:
        """Forget every turn, waiting or running (after a failed step): their ids. Caches are forgotten too."""
        ids = [t.id for t in self._queue] + [s.turn.id for s in self._slots if s.turn is not None]
        self._queue, self._turns, self._sessions, self._prefix = [], {}, {}, ()
        self._slots = [_Slot() for _ in self._slots]
        return ids

    def _drop(self, turn_id: int) -> None:
        turn = self._turns.pop(turn_id, None)
        if turn is None:
            return
        if turn.slot < 0:
            self._queue = [t for t in self._queue if t.id != turn_id]
        else:
            self._release(turn.slot)

    def _release(self, index: int) -> None:
        slot = self._slots[index]
        if slot.turn is not None:
            self._turns.pop(slot.turn.id, None)
        slot.turn = None
        slot.last_used = time.monotonic()
        if slot.stale:
            slot.tokens, slot.prefix_len, slot.stale = [], 0, False

    # ------------------------------------------------------------------ admission

    def _admit(self, events: list[Event]) -> None:
        waiting: list[_Turn] = []
        for turn in self._queue:
            index = self._choose_slot(turn.request)
            if index is None:
                waiting.append(turn)
                continue
            try:
                self._place(turn, index, events)
            except ValueError as exc:
                self._turns.pop(turn.id, None)
                events.append((turn.id, exc))
        self._queue = waiting

    def _choose_slot(self, request: GenerationRequest) -> int | None:
        if request.session is not None and request.session in self._sessions:
            index = self._sessions[request.session]
            return index if self._slots[index].turn is None else None
        free = [i for i, s in enumerate(self._slots) if s.turn is None and s.session is None]
        if free:
            return max(free, key=lambda i: (_common_prefix(self._slots[i].tokens, request.prompt[:-1]), -i))
        idle = [i for i, s in enumerate(self._slots) if s.turn is None]
        if not idle:
            return None
        index = min(idle, key=lambda i: self._slots[i].last_used)
        self._sessions.pop(self._slots[index].session, None)  # type: ignore[arg-type]
        self._slots[index].session = None
        return index

    def _place(self, turn: _Turn, index: int, events: list[Event]) -> None:
        cfg, slot, prompt = self.config, self._slots[index], turn.request.prompt
        kept = _common_prefix(slot.tokens, prompt[:-1])  # at least the last prompt token is computed
        if kept < slot.prefix_len:
            kept = -1  # the slot's history leaves the prefix it was built on: start over
        from_prefix = self._prefix_match(prompt, index)
        if from_prefix > kept:
            slot.tokens, slot.prefix_len = list(prompt[:from_prefix]), from_prefix
        elif kept >= 0:
            del slot.tokens[kept:]
        else:
            slot.tokens, slot.prefix_len = [], 0
        own_total = len(prompt) - slot.prefix_len
        if own_total > cfg.own_slots:
            slot.tokens, slot.prefix_len = [], 0
            raise ValueError(f"prompt of {len(prompt)} tokens: its {own_total} tokens after the shared prefix "
                             f"exceed a slot's own capacity ({cfg.own_slots})")
        request = turn.request
        if request.session is not None:
            self._sessions[request.session] = index
        slot.session = request.session
        slot.turn, turn.slot = turn, index
        turn.pending = list(prompt[len(slot.tokens):])
        turn.computed = len(turn.pending)
        turn.budget = min(request.max_new_tokens, cfg.max_len - len(prompt), cfg.own_slots - own_total)
        self.stats.turns += 1
        self.stats.prompt_tokens += len(prompt)
        if turn.budget < 1:
            events.append((turn.id, TokenChunk((), (), "context", 0)))
            self._release(index)

    def _prefix_match(self, prompt: Sequence[int], index: int) -> int:
        """Prompt tokens the prefix region can give (filling it first if it is free and the prompt is long)."""
        cfg = self.config
        if not cfg.prefix_capacity:
            return 0
        shared = _common_prefix(self._prefix, prompt[:-1])
        if shared >= cfg.min_shared_prefix:
            return shared
        referenced = any(s.prefix_len and i != index for i, s in enumerate(self._slots))
        wanted = min(len(prompt) - 1, cfg.prefix_capacity)
        if referenced or wanted < cfg.min_shared_prefix:
            return 0
        self._fill_prefix(tuple(prompt[:wanted]))
        return wanted

    # ------------------------------------------------------------------ programs

    def _program(self, key: tuple[Hashable, ...], build: Callable[[], Callable[..., Any]], args: tuple[Any, ...],
                 rows: int):
        """The compiled program for ``key`` (compiled on first use); ``rows``: the batch its options are for."""
        program = self._programs.get(key)
        if program is None:
            start = time.perf_counter()
            if self._compiler_options is not None:
                options = self._compiler_options
            else:
                options = {} if key[0] == "decode" else sampler_compiler_options(self._platform, rows)
            under_mesh = jax.set_mesh(self._mesh) if self._mesh is not None else contextlib.nullcontext()
            with under_mesh, axis_rules(self._rules):
                program = jax.jit(build(), donate_argnums=(1,)).lower(*args).compile(options)
            self.compile_log.append(CompileRecord(key, time.perf_counter() - start))
            self._programs[key] = program
        return program

    def _rows(self, *arrays: np.ndarray) -> tuple[Any, ...]:
        """Slot- or row-major host arrays onto the mesh's data axis (left to the program without a mesh)."""
        if self._mesh is None:
            return arrays
        return tuple(jax.device_put(a, batch_sharding(self._mesh, a.ndim)) for a in arrays)

    def _fill_prefix(self, tokens: tuple[int, ...]) -> None:
        c = self.config.chunk
        for start in range(0, len(tokens), c):
            part = np.zeros((self._row_multiple, c), np.int32)
            piece = tokens[start : start + c]
            part[:, : len(piece)] = piece
            args = (self._state, self._cache, *self._rows(part), np.int32(start))
            self._cache = self._program(("fill_prefix", c), lambda: fill_prefix_fn(self._graphdef), args,
                                       self._row_multiple)(*args)
        self._prefix = tokens
        self.stats.prefix_tokens += len(tokens)

    def _prefill(self) -> None:
        """Every admitted turn's pending tokens into its slot, a piece per turn per round."""
        cfg = self.config
        while True:
            turns = [s.turn for s in self._slots if s.turn is not None and s.turn.pending]
            if not turns:
                return
            for call in plan_prefill_calls([len(t.pending) for t in turns], cfg, self._row_multiple):
                self._prefill_call([turns[i] for i in call.members], call.rows, call.chunk)

    def _prefill_call(self, turns: list[_Turn], rows: int, chunk: int) -> None:
        """One prefill program call: each turn's next piece (at most ``chunk`` tokens) into its slot."""
        slot_ids = np.zeros((rows,), np.int32)
        tokens = np.zeros((rows, chunk), np.int32)
        starts, prefix_len, n_new = (np.zeros((rows,), np.int32) for _ in range(3))
        for r, turn in enumerate(turns):
            slot = self._slots[turn.slot]
            piece = turn.pending[:chunk]
            slot_ids[r], starts[r], prefix_len[r], n_new[r] = turn.slot, slot.own_len, slot.prefix_len, len(piece)
            tokens[r, : len(piece)] = piece
        for array in (slot_ids, tokens, starts, prefix_len, n_new):  # unused rows repeat row 0
            array[len(turns):] = array[0]
        view = self.config.view_for(int((starts + n_new).max()))
        args = (self._state, self._cache, *self._rows(slot_ids, tokens, starts, prefix_len, n_new))
        program = self._program(("prefill", rows, chunk, view), functools.partial(prefill_fn, self._graphdef, view),
                                args, rows)
        self._cache = program(*args)
        self.stats.prefill_calls += 1
        self.stats.prefill_positions += rows * chunk
        for r, turn in enumerate(turns):
            slot = self._slots[turn.slot]
            slot.tokens.extend(turn.pending[: n_new[r]])
            del turn.pending[: n_new[r]]
            self.stats.prefilled_tokens += int(n_new[r])

    def _decode(self, events: list[Event]) -> None:
        cfg = self.config
        ready = sorted((s.turn for s in self._slots if s.turn is not None and not s.turn.pending), key=lambda t: t.id)
        if not ready:
            return
        # greedy rows ride along with any call; sampled rows share a call when their top-k and key kind agree
        sampled = [t for t in ready if t.request.temperature > 0]
        group = (sampled[0].request.top_k, sampled[0].impl) if sampled else (0, None)
        turns = [t for t in ready if t.request.temperature == 0 or (t.request.top_k, t.impl) == group]
        s = cfg.slots
        live = np.zeros((s,), np.bool_)
        own_len, prefix_len, emitted, budget = (np.zeros((s,), np.int32) for _ in range(4))
        greedy = np.ones((s,), np.bool_)
        temperature, top_p = np.ones((s,), np.float32), np.ones((s,), np.float32)
        n_stops = _STOP_SLOTS * max(1, -(-max(len(t.request.stop_token_ids) for t in turns) // _STOP_SLOTS))
        stops = np.full((s, n_stops), -1, np.int32)
        impl = group[1]
        key_shape = (2,) if impl is None else sampled[0].key_data.shape  # type: ignore[union-attr]
        key_data = np.zeros((s, *key_shape), np.uint32)
        for i, slot in enumerate(self._slots):
            own_len[i], prefix_len[i] = slot.own_len, slot.prefix_len
        for turn in turns:
            i, request = turn.slot, turn.request
            live[i], emitted[i], budget[i] = True, turn.emitted, turn.budget
            greedy[i] = request.temperature == 0.0
            temperature[i], top_p[i] = (request.temperature or 1.0), request.top_p
            stops[i, : len(request.stop_token_ids)] = request.stop_token_ids
            if turn.key_data is not None:
                key_data[i] = turn.key_data
        steps = cfg.decode_steps
        view = cfg.view_for(max(int(own_len[t.slot]) + min(steps, t.budget - t.emitted) for t in turns))
        any_sampled = bool((~greedy[live]).any())
        any_top_p = bool((top_p[live] < 1.0).any())
        top_k = group[0] if any_sampled else 0
        key = ("decode", s, steps, view, n_stops, impl, top_k, any_top_p, any_sampled)
        args = (self._state, self._cache, *self._rows(live, own_len, prefix_len, emitted, budget, key_data, greedy,
                                                      temperature, top_p, stops))
        program = self._program(key, lambda: decode_fn(self._graphdef, view, steps, impl, top_k, any_top_p,
                                                       any_sampled), args, s)
        self._cache, out_tokens, out_logps, new, stopped = program(*args)
        out_tokens, out_logps, new, stopped = jax.device_get((out_tokens, out_logps, new, stopped))
        self.stats.decode_calls += 1
        for turn in turns:
            i = turn.slot
            n = int(new[i])
            tokens = tuple(int(x) for x in out_tokens[i, :n])
            self._slots[i].tokens.extend(tokens)
            turn.emitted += n
            self.stats.new_tokens += n
            finish: Finish | None = None
            if stopped[i]:
                finish = "stop"
            elif turn.emitted >= turn.budget:
                finish = "length" if turn.budget >= turn.request.max_new_tokens else "context"
            chunk = TokenChunk(tokens, tuple(float(x) for x in out_logps[i, :n]), finish,
                               turn.computed if finish else 0)
            events.append((turn.id, chunk))
            if finish is not None:
                self._release(i)
