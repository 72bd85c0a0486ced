"""The trainer's state as one pytree, and how it is laid out on a mesh.

The model is split once (``nnx.split``) into a static graph definition, which the step closes over, and
arrays, which live here. Parameters keep their ``nnx.Variable`` wrappers, so their logical axis names
(``logical_axes`` metadata) travel with them, and the optimizer state, which mirrors the parameter tree,
inherits them: one rule table lays out both.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh

from rl_jax.sharding import LogicalRules, replicated, variable_sharding


@struct.dataclass
class TrainState:
    """Everything a step reads and writes; donated to and returned by ``train_step``."""

    params: nnx.State  # trainable parameters (nnx.Param)
    frozen: nnx.State  # the model's other variables (buffers), carried unchanged
    opt_state: optax.OptState
    step: jax.Array  # int32: train steps taken (skipped ones included; it is also the data position)
    skipped: jax.Array  # int32: steps whose update was skipped for a non-finite loss or gradient
    rng: jax.Array  # uint32[2] raw PRNG key, split once per step


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """``(graphdef, params, frozen)``: merge them back with ``nnx.merge(graphdef, params, frozen)``."""
    graphdef, params, frozen = nnx.split(model, nnx.Param, ...)
    return graphdef, params, frozen


def init_train_state(
    params: nnx.State, frozen: nnx.State, optimizer: optax.GradientTransformation, seed: int = 0
) -> TrainState:
    return TrainState(
        params=params,
        frozen=frozen,
        opt_state=optimizer.init(params),
        step=jnp.zeros((), jnp.int32),
        skipped=jnp.zeros((), jnp.int32),
        rng=jax.random.PRNGKey(seed),
    )


# ----------------------------------------------------------------------------------------- sharding


def tree_shardings(tree: Any, mesh: Mesh, rules: LogicalRules | None = None) -> Any:
    """NamedShardings for any pytree holding ``nnx.Variable``s and plain arrays.

    Variables with logical axis names (``rl_jax.sharding.LOGICAL_AXES_KEY`` metadata) are sharded by ``rules``
    (default: the rules in force, ``rl_jax.sharding.axis_rules``); a dimension that does not divide its mesh
    axes is a ValueError naming the variable's path. Everything else (step counters, keys) is replicated.
    Variables keep their wrapper, so the result matches the tree for jit shardings and orbax.
    """

    def one(path: Any, x: Any) -> Any:
        if isinstance(x, nnx.Variable):
            return x.replace(variable_sharding(x, mesh, rules, jax.tree_util.keystr(path)))
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def state_shardings(state: TrainState, mesh: Mesh, rules: LogicalRules | None = None) -> TrainState:
    """A TrainState-shaped tree of NamedShardings (works on concrete or abstract states)."""
    return tree_shardings(state, mesh, rules)


def place_state(state: TrainState, mesh: Mesh, rules: LogicalRules | None = None) -> TrainState:
    """Put a state onto ``mesh`` laid out by the logical rules."""
    return jax.device_put(state, state_shardings(state, mesh, rules))
