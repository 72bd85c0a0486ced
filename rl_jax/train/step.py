"""The GRPO train step: one pure, jitted function ``(state, batch) -> (state, metrics)``.

Read top to bottom, a step is:

1. Split the batch into micro-batches (rows strided so every micro-batch spans all data shards).
2. With an adaptive clip rule and several micro-batches, a forward-only pass over the whole batch gives the
   log-probs from which the clip bounds are searched, so every micro-batch uses the bounds the one big batch
   would (with one micro-batch they are searched inside the loss itself, no extra pass).
3. ``lax.scan`` over micro-batches: merge the model, compute chunked log-probs, the GRPO loss terms
   (numerator, denominator, metrics), and the gradient of the numerator; sum all three.
4. Divide the summed gradient by the summed denominator: exactly the token mean of the whole batch.
5. optax update (global-norm clip, AdamW on the schedule). If the loss or any gradient is not finite the new
   params and optimizer state are discarded: the state passes through unchanged but for ``step`` and
   ``skipped``, and the metrics say ``skipped = 1``.

Under a mesh the step is jitted with the state's and batch's NamedShardings as in/out shardings; the state is
donated, so params and optimizer state are updated in place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from rl_jax.grpo import (
    ClipBounds,
    LossTerms,
    Metrics,
    compute_clip_bounds,
    policy_loss,
    reduce_stacked,
    summarize,
    token_logprobs_from_hidden,
)
from rl_jax.models.prefix_tree import tree_hidden, unpack_lanes
from rl_jax.runtime import release_freed_memory
from rl_jax.sharding import LogicalRules, axis_rules, batch_spec, current_rules, replicated
from rl_jax.train.batch import Batch
from rl_jax.train.config import TrainConfig
from rl_jax.train.optimizer import learning_rate_schedule, make_optimizer
from rl_jax.train.state import TrainState, init_train_state, split_model, state_shardings, tree_shardings

# clip rules whose bounds do not depend on the batch: no pre-pass needed under gradient accumulation
FIXED_CLIP_RULES = frozenset({"ppo", "dapo", "dual"})

TrainStepFn = Callable[..., tuple[TrainState, dict[str, jax.Array]]]


def _shift_left(x: jax.Array) -> jax.Array:
    """Entry t takes entry t + 1 (the last gets 0): moves token-aligned arrays onto next-token predictions."""
    return jnp.concatenate([x[:, 1:], jnp.zeros_like(x[:, :1])], axis=1)


def _rows_window(x: jax.Array, start: jax.Array, window: int) -> jax.Array:
    """``x[b, start[b] : start[b] + window]`` for every row b: ``[B, T, ...] -> [B, window, ...]``."""
    return jax.vmap(lambda row, s: jax.lax.dynamic_slice_in_dim(row, s, window, axis=0))(x, start)


def _rows_unwindow(x: jax.Array, start: jax.Array, length: int) -> jax.Array:
    """The inverse placement: ``[B, window]`` into zeros ``[B, length]`` at each row's start."""
    zeros = jnp.zeros((x.shape[0], length), x.dtype)
    return jax.vmap(lambda z, row, s: jax.lax.dynamic_update_slice_in_dim(z, row, s, axis=0))(zeros, x, start)


def next_token_logprobs(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    frozen: nnx.State,
    batch: Batch,
    *,
    temperature: float = 1.0,
    chunk_size: int = 256,
    with_entropy: bool = False,
) -> tuple[jax.Array, jax.Array | None]:
    """Log-probs ``[B, T]`` whose entry t is log pi(tokens[t + 1] | tokens[:t + 1]) (last entry unused).

    Never materialises the [B, T, V] logits: the vocabulary projection is chunked over positions. With a loss
    window (``Batch.loss_window``) only the window's positions are projected; entries outside it are 0 (no
    trained token is predicted there).
    """
    model = nnx.merge(graphdef, params, frozen)
    targets = _shift_left(batch.tokens)
    if batch.loss_window is not None:
        targets = _rows_window(targets, batch.loss_start, batch.loss_window)
    if batch.lanes is not None:  # packed rows: the tree over lanes, then each row's window out of its lane
        lanes = batch.lanes
        hidden = tree_hidden(model, batch.shared, lanes.tokens, lanes.positions, lanes.valid, lanes.parent,
                             segment=lanes.segment)
        slot = batch.slot if batch.loss_window is None else _rows_window(batch.slot, batch.loss_start,
                                                                           batch.loss_window)
        hidden = unpack_lanes(hidden, slot, batch.shared[0].rows)
    else:
        if batch.shared is None:
            hidden = model.hidden(batch.tokens, batch.positions, batch.attention_mask)
        else:  # the prefix tree: shared segments once, each row's own tokens over them
            hidden = tree_hidden(
                model, batch.shared, batch.tokens, batch.positions, batch.attention_mask, batch.parent
            )
        if batch.loss_window is not None:
            hidden = _rows_window(hidden, batch.loss_start, batch.loss_window)
    # the vocabulary projection runs in the model's compute dtype (f32 accumulation), like every other matmul
    unembedding = model.unembedding().astype(hidden.dtype)
    out = token_logprobs_from_hidden(
        hidden, unembedding, targets, temperature, chunk_size=chunk_size, with_entropy=with_entropy,
    )
    logp, entropy = out.logp, out.entropy
    if batch.loss_window is not None:
        logp = _rows_unwindow(logp, batch.loss_start, batch.length)
        entropy = None if entropy is None else _rows_unwindow(entropy, batch.loss_start, batch.length)
    return logp, entropy


def token_logprobs(
    graphdef: nnx.GraphDef, params: nnx.State, frozen: nnx.State, batch: Batch, *,
    temperature: float = 1.0, chunk_size: int = 256,
) -> jax.Array:
    """Log-probs aligned like the batch (entry t scores tokens[t]; entry 0 is 0), e.g. a reference policy's
    ``ref_logp`` or a check of the sampler's ``old_logp``. With a loss window, only the tokens it predicts
    are scored (every trained token is); the rest are 0."""
    logp, _ = next_token_logprobs(graphdef, params, frozen, batch, temperature=temperature, chunk_size=chunk_size)
    return jnp.concatenate([jnp.zeros_like(logp[:, :1]), logp[:, :-1]], axis=1)


def split_micro_batches(batch: Batch, n: int) -> Batch:
    """``[B, ...] -> [n, B / n, ...]`` with micro-batch k holding rows k, k + n, k + 2n, ...

    Rows are strided, not blocked, so with the rows sharded over ``data`` every micro-batch has rows on every
    data shard and the split moves no data between devices. Under a prefix tree the rows of each copy stay
    together (copy c's rows are a block, and so are its rows within every micro-batch), and the shared levels
    are not split: every micro-batch attends to all of them, so the result's ``shared`` is None and
    ``with_shared`` puts them back on each micro-batch.
    """
    rows = batch.tokens.shape[0]
    if rows % n:
        raise ValueError(f"batch of {rows} rows does not split into {n} micro-batches")
    if batch.shared is not None and rows % (n * batch.shared[0].rows):
        raise ValueError(
            f"batch of {rows} rows in {batch.shared[0].rows} tree copies does not split into {n} micro-batches"
        )
    _check_packing(batch, n)
    rows_only = batch.replace(shared=None)
    if batch.lanes is not None:  # each micro-batch's lanes hold its own rows: one micro-batch's worth
        rows_only = rows_only.replace(lanes=batch.lanes.replace(micro_batches=1))
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1), rows_only)


def _check_packing(batch: Batch, micro_batches: int) -> None:
    """Packed rows are laid out per micro-batch: the step must split them as ``collate_tree`` did."""
    if batch.lanes is not None and batch.lanes.micro_batches != micro_batches:
        raise ValueError(
            f"the rows were packed into lanes for {batch.lanes.micro_batches} micro-batch(es) and the step runs "
            f"{micro_batches}: collate_tree(..., micro_batches={micro_batches})"
        )


def with_shared(micro_batch: Batch, batch: Batch) -> Batch:
    """A micro-batch from ``split_micro_batches`` with ``batch``'s shared tree levels (if any) restored."""
    return micro_batch.replace(shared=batch.shared)


def _loss_inputs(batch: Batch) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """(loss mask, old log-probs, reference log-probs) moved onto next-token positions."""
    ref = None if batch.ref_logp is None else _shift_left(batch.ref_logp)
    return _shift_left(batch.loss_mask), _shift_left(batch.old_logp), ref


def make_loss_fn(graphdef: nnx.GraphDef, cfg: TrainConfig) -> Callable[..., tuple[jax.Array, LossTerms]]:
    """``(params, frozen, batch, bounds, ref_params) -> (numerator, LossTerms)`` for one micro-batch.

    Differentiate the numerator with respect to ``params`` only. The reference policy's log-probs come from
    ``batch.ref_logp`` or, when that is None and ``ref_params`` is given, from a gradient-stopped forward of
    the same graph with ``ref_params``.
    """

    def loss_fn(
        params: nnx.State, frozen: nnx.State, batch: Batch, bounds: ClipBounds | None, ref_params: nnx.State | None
    ) -> tuple[jax.Array, LossTerms]:
        logp, entropy = next_token_logprobs(
            graphdef, params, frozen, batch, temperature=cfg.temperature,
            chunk_size=cfg.logprob_chunk, with_entropy=cfg.log_entropy,
        )
        mask, old_logp, ref_logp = _loss_inputs(batch)
        if ref_logp is None and ref_params is not None:
            ref_logp, _ = next_token_logprobs(
                graphdef, jax.lax.stop_gradient(ref_params), frozen, batch,
                temperature=cfg.temperature, chunk_size=cfg.logprob_chunk,
            )
            ref_logp = jax.lax.stop_gradient(ref_logp)
        terms = policy_loss(
            logp, old_logp, batch.advantages, mask, cfg.loss,
            ref_logp=ref_logp, entropy=entropy, bounds=bounds,
        )
        return terms.numerator, terms

    return loss_fn


def _global_bounds(
    graphdef: nnx.GraphDef, params: nnx.State, frozen: nnx.State, micro: Batch, batch: Batch, cfg: TrainConfig
) -> ClipBounds:
    """Clip bounds searched over every micro-batch at once, as one big batch would search them."""

    def forward(mb: Batch) -> jax.Array:
        logp, _ = next_token_logprobs(
            graphdef, params, frozen, with_shared(mb, batch), temperature=cfg.temperature,
            chunk_size=cfg.logprob_chunk,
        )
        return logp

    logp = jax.lax.map(forward, micro)  # [n, B / n, T]
    mask = jax.vmap(_shift_left)(micro.loss_mask)
    old = jax.vmap(_shift_left)(micro.old_logp)

    def flat(x: jax.Array) -> jax.Array:
        return x.reshape(-1, *x.shape[2:])

    return compute_clip_bounds(
        jax.lax.stop_gradient(flat(logp)), flat(old), flat(micro.advantages), flat(mask), cfg.loss.clip
    )


def _accumulation_dtype(dtype: Any) -> Any:
    """Where gradients are summed and divided: at least f32 (f64 when the parameters are f64)."""
    return jnp.promote_types(dtype, jnp.float32)


def build_step_fn(
    graphdef: nnx.GraphDef,
    cfg: TrainConfig,
    optimizer: optax.GradientTransformation | None = None,
    micro_sharding: NamedSharding | None = None,
) -> Callable[[TrainState, Batch, nnx.State | None], tuple[TrainState, dict[str, jax.Array]]]:
    """The un-jitted step ``(state, batch, ref_params) -> (state, metrics)`` (``make_train_step`` jits it)."""
    optimizer = optimizer or make_optimizer(cfg.optimizer)
    schedule = learning_rate_schedule(cfg.optimizer)
    loss_fn = make_loss_fn(graphdef, cfg)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    n = cfg.micro_batches
    adaptive = cfg.loss.clip.rule not in FIXED_CLIP_RULES

    def step(
        state: TrainState, batch: Batch, ref_params: nnx.State | None = None
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        params, frozen = state.params, state.frozen
        _check_packing(batch, n)
        if n == 1:
            # bounds (adaptive or fixed) are searched inside the loss over this, the whole, batch
            (_, terms), grads = grad_fn(params, frozen, batch, None, ref_params)
            numerator, denominator, metrics = terms
        else:
            micro = split_micro_batches(batch, n)
            if micro_sharding is not None:
                micro = jax.tree.map(
                    lambda x: jax.lax.with_sharding_constraint(
                        x, NamedSharding(micro_sharding.mesh, batch_spec(micro_sharding.mesh, x.ndim, leading=1))
                    ),
                    micro,
                )
            bounds = _global_bounds(graphdef, params, frozen, micro, batch, cfg) if adaptive else None

            def accumulate(carry: tuple[Any, jax.Array, jax.Array], mb: Batch) -> tuple[Any, Metrics]:
                grad_sum, num_sum, den_sum = carry
                (_, terms), g = grad_fn(params, frozen, with_shared(mb, batch), bounds, ref_params)
                grad_sum = jax.tree.map(jnp.add, grad_sum, g)
                return (grad_sum, num_sum + terms.numerator, den_sum + terms.denominator), terms.metrics

            # summed in (at least) f32 whatever the parameters are stored in (bf16 sums drop small terms)
            zeros = jax.tree.map(lambda p: jnp.zeros_like(p, _accumulation_dtype(p.dtype)), params)
            init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
            (grads, numerator, denominator), stacked = jax.lax.scan(accumulate, init, micro)
            metrics = reduce_stacked(stacked)

        # the token mean over the whole batch: one division by the total denominator (no grad through it)
        safe_den = jnp.where(denominator > 0, denominator, 1.0)
        loss = jnp.where(denominator > 0, numerator / safe_den, 0.0)
        grads = jax.tree.map(lambda g: g.astype(_accumulation_dtype(g.dtype)) / safe_den, grads)

        # one test of the global norm, not one per leaf: a NaN or inf in any gradient makes it non-finite (as
        # does a sum of squares past f32's range, a gradient no update should take). The per-leaf tests' chain
        # of ``and``s is cheap enough that XLA copied it into every leaf's update fusion: a program, and a
        # compile time, growing with the square of the parameter count (BUILD.md: compile time)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        # stored like the parameters (f32 master weights, or bf16 by choice): the optimizer's moments and the
        # updated parameters keep param_dtype, so the step's output state has its input's signature
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        updates, new_opt_state = optimizer.update(grads, state.opt_state, params)
        new_params = optax.apply_updates(params, updates)

        def keep_if_finite(new: Any, old: Any) -> Any:
            return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)

        applied_updates = state.step - state.skipped  # the optimizer's own count: skipped steps do not advance it
        new_state = state.replace(
            params=keep_if_finite(new_params, params),
            opt_state=keep_if_finite(new_opt_state, state.opt_state),
            step=state.step + 1,
            skipped=state.skipped + (~finite).astype(jnp.int32),
            rng=jax.random.split(state.rng)[0],
        )
        out = summarize(metrics)
        out.update(
            loss=loss,
            grad_norm=grad_norm,
            learning_rate=jnp.asarray(schedule(applied_updates), jnp.float32),
            skipped=(~finite).astype(jnp.int32),
            step=new_state.step,
        )
        return new_state, out

    return step


def make_train_step(
    graphdef: nnx.GraphDef,
    cfg: TrainConfig,
    *,
    mesh: Mesh | None = None,
    state_sharding: TrainState | None = None,
    optimizer: optax.GradientTransformation | None = None,
    rules: LogicalRules | None = None,
) -> TrainStepFn:
    """The jitted step ``train_step(state, batch, ref_params=None) -> (state, metrics)``; ``state`` is donated.

    With a ``mesh``, ``state_sharding`` (from ``state_shardings``) pins the state's layout in and out, the
    batch's rows are sharded over the batch axes (data, fsdp), metrics come back replicated, and the model's
    activation constraints see the mesh and ``rules`` (default: the logical-axis rules in force now, when the
    step is built: jit traces at the first call, which may run under other rules). Pass ``ref_params`` (laid
    out like the params) to compute the KL reference in-step when the batch carries no ``ref_logp``; they are
    read, never updated or donated.
    """
    if (mesh is None) != (state_sharding is None):
        raise ValueError("pass both mesh and state_sharding, or neither")
    rules = current_rules() if rules is None else rules
    step = build_step_fn(
        graphdef, cfg, optimizer,
        micro_sharding=None if mesh is None else NamedSharding(mesh, batch_spec(mesh, 1)),
    )
    compiled: dict[bool, Callable] = {}

    def jitted(with_ref: bool) -> Callable:
        if with_ref not in compiled:
            if mesh is None:
                compiled[with_ref] = jax.jit(step, donate_argnums=0)
            else:
                assert state_sharding is not None
                data = NamedSharding(mesh, batch_spec(mesh, 1))
                ref = state_sharding.params if with_ref else None
                compiled[with_ref] = jax.jit(
                    step,
                    donate_argnums=0,
                    in_shardings=(state_sharding, data, ref),
                    out_shardings=(state_sharding, replicated(mesh)),
                )
        return compiled[with_ref]

    programs: dict[Any, Callable] = {}

    def program(state: TrainState, batch: Batch, ref_params: nnx.State | None) -> Callable:
        """The compiled step for these arguments' shapes: compiled ahead of its first run, so that the
        compiler's freed memory goes back to the OS (``release_freed_memory``) before the step's buffers are
        allocated; then reused like ``jit``'s own cache."""
        signature = jax.tree.map(
            lambda x: (x.shape, x.dtype, getattr(x, "sharding", None)), (state, batch, ref_params)
        )
        key = (jax.tree.structure((state, batch, ref_params)), tuple(jax.tree.leaves(signature)))
        if key not in programs:
            with axis_rules(rules):  # traced here: under the rules the step was built with
                programs[key] = jitted(ref_params is not None).lower(state, batch, ref_params).compile()
            release_freed_memory()
        return programs[key]

    def train_step(
        state: TrainState, batch: Batch, ref_params: nnx.State | None = None
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        if mesh is None:
            return program(state, batch, ref_params)(state, batch, ref_params)
        with jax.set_mesh(mesh):
            return program(state, batch, ref_params)(state, batch, ref_params)

    return train_step


def make_logprob_fn(
    graphdef: nnx.GraphDef, cfg: TrainConfig, *, mesh: Mesh | None = None, rules: LogicalRules | None = None
) -> Callable[[nnx.State, nnx.State, Batch], jax.Array]:
    """Jitted ``(params, frozen, batch) -> logp [B, T]`` aligned like the batch (for reference log-probs);
    traced under ``rules`` (default: the logical-axis rules in force when it is made)."""
    rules = current_rules() if rules is None else rules

    def fn(params: nnx.State, frozen: nnx.State, batch: Batch) -> jax.Array:
        return token_logprobs(
            graphdef, params, frozen, batch, temperature=cfg.temperature, chunk_size=cfg.logprob_chunk
        )

    jitted = jax.jit(fn)
    if mesh is None:
        return jitted

    def with_mesh(params: nnx.State, frozen: nnx.State, batch: Batch) -> jax.Array:
        with jax.set_mesh(mesh), axis_rules(rules):
            return jitted(params, frozen, batch)

    return with_mesh


def create_train_state(
    model: nnx.Module, cfg: TrainConfig, mesh: Mesh | None = None
) -> tuple[nnx.GraphDef, TrainState, TrainStepFn]:
    """Split ``model``, build its optimizer state (on ``mesh``, laid out by the logical-axis rules in force:
    ``rl_jax.sharding.axis_rules``) and the step, which traces under those same rules.

    Returns ``(graphdef, state, train_step)``; the model object itself is not used afterwards.
    """
    rules = current_rules()
    graphdef, params, frozen = split_model(model)
    optimizer = make_optimizer(cfg.optimizer)
    if mesh is None:
        # Commit every leaf to the params' device. Parameters loaded from a checkpoint are committed while
        # fresh counters and keys are not; a jitted step's outputs are all committed, so a mixed state would
        # change the step's signature after the first call and compile the whole step a second time.
        device = next(iter(jax.tree.leaves(params)[0].devices()))
        state = jax.device_put(init_train_state(params, frozen, optimizer, cfg.seed), device)
        return graphdef, state, make_train_step(graphdef, cfg, optimizer=optimizer)
    abstract = jax.eval_shape(lambda p, f: init_train_state(p, f, optimizer, cfg.seed), params, frozen)
    shardings = state_shardings(abstract, mesh, rules)
    params = jax.device_put(params, tree_shardings(params, mesh, rules))
    frozen = jax.device_put(frozen, tree_shardings(frozen, mesh, rules))
    # initialise the optimizer state directly in its sharded layout
    state = jax.jit(
        lambda p, f: init_train_state(p, f, optimizer, cfg.seed), out_shardings=shardings
    )(params, frozen)
    return graphdef, state, make_train_step(
        graphdef, cfg, mesh=mesh, state_sharding=shardings, optimizer=optimizer, rules=rules
    )
