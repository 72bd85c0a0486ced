"""Device meshes and logical-axis sharding rules.

Parameters and activations name their axes logically ("embed", "mlp", "heads", ...); one table of rules
maps those names onto the mesh axes ("data", "fsdp", "model"), so a new parallelism layout is a change of
rules, not of code. The rules in force are a context (``with axis_rules(rules): ...``, as flax's
``logical_axis_rules``), read both where parameters and caches are placed and where activations are
constrained, so an experiment's table reaches every layer without being threaded through each call. Default layout: the batch over data and
fsdp, tensor parallelism over "model", the hidden dimension of weights over "fsdp" (FSDP).

Meshes: ``"DxFxM"`` is data x fsdp x model. The two-axis ``"DxM"`` (data x model) is the layout this code had
before the fsdp axis existed, kept as it was: its data axis both splits the batch and shards the weights, i.e.
rules naming "fsdp" resolve to "data" on a mesh without an fsdp axis (``"8x4"`` lays out exactly as
``"1x8x4"``, with the mesh's axes named as before).

A dimension that does not divide the mesh axes its rule maps it to is an error that names the parameter (or
buffer, or activation), never a silent replication: replicating is a rule (``"kv_heads=none"``).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA = "data"
FSDP = "fsdp"
MODEL = "model"
MESH_AXES = (DATA, FSDP, MODEL)
TWO_AXIS_MESH = (DATA, MODEL)

# one mesh axis, several (the dimension split over their product, in order), or None (replicated)
MeshAxes = str | tuple[str, ...] | None
# logical axis name -> mesh axes; a later entry for the same name wins
LogicalRules = tuple[tuple[str, MeshAxes], ...]

DEFAULT_RULES: LogicalRules = (
    ("batch", (DATA, FSDP)),
    ("vocab", MODEL),
    ("embed", FSDP),        # FSDP: weights' hidden dimension (on a DxM mesh over data, as it always was)
    ("mlp", MODEL),
    ("heads", MODEL),
    ("kv_heads", MODEL),
    ("q_features", MODEL),  # heads*head_dim, flattened
    ("kv_features", MODEL),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),
    ("length", None),
    ("act_embed", None),    # activations keep the hidden dimension whole
    ("act_vocab", MODEL),
)


class ShardingError(ValueError):
    """A layout that cannot be: a mesh the devices cannot hold, a rule naming an absent mesh axis, or a
    dimension that does not divide its mesh axes. The message names what and where."""


_RULES: contextvars.ContextVar[LogicalRules] = contextvars.ContextVar(
    "rl_jax_axis_rules", default=DEFAULT_RULES
)


# ---------------------------------------------------------------------------------------------- rules


@contextlib.contextmanager
def axis_rules(rules: LogicalRules) -> Iterator[LogicalRules]:
    """Make ``rules`` the logical-axis rules of everything placed or traced inside the block.

    jit traces lazily, at the first call: whatever builds a jitted function that places or constrains arrays
    (the train step, the sampler) captures ``current_rules()`` when it is built and enters them again around
    its tracing, so the rules in force at construction are the ones its programs use.
    """
    token = _RULES.set(_validated(rules))
    try:
        yield rules
    finally:
        _RULES.reset(token)


def current_rules() -> LogicalRules:
    """The rules of the innermost ``axis_rules`` block (``DEFAULT_RULES`` outside any)."""
    return _RULES.get()


def _validated(rules: LogicalRules) -> LogicalRules:
    out = []
    for entry in rules:
        if len(entry) != 2 or not isinstance(entry[0], str):
            raise ShardingError(f"a logical-axis rule is (logical name, mesh axes); got {entry!r}")
        name, axes = entry
        out.append((name, _as_axes(axes, name)))
    return tuple(out)


def _as_axes(axes: Any, name: str) -> MeshAxes:
    """A rule's mesh axes in canonical form: None, one name, or a tuple of two or more distinct names."""
    if axes is None:
        return None
    names = (axes,) if isinstance(axes, str) else tuple(axes)
    unknown = [a for a in names if a not in MESH_AXES]
    if unknown or not names or len(set(names)) != len(names):
        raise ShardingError(
            f"rule {name!r}: mesh axes must be distinct names among {', '.join(MESH_AXES)} (or none); "
            f"got {axes!r}"
        )
    return names[0] if len(names) == 1 else names


def with_overrides(rules: LogicalRules, overrides: Mapping[str, MeshAxes]) -> LogicalRules:
    """``rules`` with each named logical axis mapped anew (replaced in place; new names appended)."""
    changed = {name: _as_axes(axes, name) for name, axes in overrides.items()}
    known = {name for name, _ in rules}
    kept = tuple((name, changed.get(name, axes)) for name, axes in rules)
    return kept + tuple((name, axes) for name, axes in changed.items() if name not in known)


def parse_rule_overrides(entries: Sequence[str]) -> dict[str, MeshAxes]:
    """The config's spellings ``"kv_heads=none"``, ``"embed=fsdp"``, ``"batch=data+fsdp"`` as overrides of
    ``DEFAULT_RULES``; a logical name the defaults do not have is refused (a typo would change nothing)."""
    known = [name for name, _ in DEFAULT_RULES]
    out: dict[str, MeshAxes] = {}
    for entry in entries:
        name, sep, value = (part.strip() for part in entry.partition("="))
        if not sep or not name or not value:
            raise ShardingError(
                f"a sharding rule is LOGICAL=MESH_AXIS[+MESH_AXIS] or LOGICAL=none; got {entry!r}"
            )
        if name not in known:
            raise ShardingError(f"sharding rule {entry!r}: unknown logical axis {name!r} (known: {', '.join(known)})")
        axes = None if value.lower() in ("none", "null") else tuple(a.strip() for a in value.split("+"))
        out[name] = _as_axes(axes, name)
    return out


# ---------------------------------------------------------------------------------------------- meshes


def parse_mesh_shape(spec: str) -> tuple[int, ...]:
    """``"8x4"`` (data x model) into ``(8, 4)``, ``"2x4x4"`` (data x fsdp x model) into ``(2, 4, 4)``."""
    parts = spec.lower().replace("*", "x").split("x")
    if len(parts) not in (2, 3) or not all(p.strip().isdigit() for p in parts):
        raise ShardingError(
            f"--mesh must look like DATAxMODEL or DATAxFSDPxMODEL, e.g. 8x4, 1x1 or 2x4x4; got {spec!r}"
        )
    sizes = tuple(int(p) for p in parts)
    if min(sizes) < 1:
        raise ShardingError(f"--mesh axes must be >= 1; got {spec!r}")
    return sizes


def mesh_from_shape(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh ``parse_mesh_shape`` describes: (data, model) for two sizes, (data, fsdp, model) for three."""
    if len(shape) == 2:
        return make_mesh(shape[0], shape[1], devices)
    data, fsdp, model = shape
    return make_mesh(data, model, devices, fsdp=fsdp)


def make_mesh(
    data: int = 1, model: int = 1, devices: Sequence[jax.Device] | None = None, *, fsdp: int | None = None
) -> Mesh:
    """A (data, model) mesh, or (data, fsdp, model) when ``fsdp`` is given; Auto axis types (GSPMD-style
    propagation from annotated params).

    One process: the first ``data * fsdp * model`` devices in order, row-major. Several processes
    (``jax.distributed``): the model axis stays within a process, whose tensor-parallel collectives run every
    layer and must not cross the slower network between hosts; the batch rows (data x fsdp, data outer) span
    the processes, process p holding rows ``[p * rows / n, (p + 1) * rows / n)``, so a batch built with
    ``shard_batch`` from each process's own rows is their concatenation in process order. Every process
    contributes the same number of devices (its first ``data * fsdp * model / n``).
    """
    devices = list(devices) if devices is not None else jax.devices()
    rows = data * (fsdp or 1)
    need = rows * model
    named = f"{data}x{model}" if fsdp is None else f"{data}x{fsdp}x{model}"
    if need > len(devices):
        raise ShardingError(
            f"mesh {named} needs {need} devices but {len(devices)} are visible; on CPU set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={need} before JAX starts"
        )
    hosts = len({d.process_index for d in devices})
    if hosts == 1:
        grid = np.asarray(devices[:need]).reshape(rows, model)
    else:
        grid = _multi_host_grid(devices, hosts, rows, model, named)
    if fsdp is None:
        return Mesh(grid, TWO_AXIS_MESH, axis_types=(AxisType.Auto,) * 2)
    return Mesh(grid.reshape(data, fsdp, model), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def _multi_host_grid(
    devices: Sequence[jax.Device], hosts: int, rows: int, model: int, named: str
) -> np.ndarray:
    """The (rows, model) device grid of a mesh over several processes: a (rows / hosts, model) block per
    process, stacked along the rows in process order."""
    if rows % hosts:
        raise ShardingError(
            f"mesh {named} over {hosts} processes: the batch rows (data x fsdp = {rows}) must be a multiple "
            f"of the number of processes, so each holds whole rows and the model axis stays within a host"
        )
    per_host = rows * model // hosts
    chosen: list[jax.Device] = []
    for index in sorted({d.process_index for d in devices}):
        local = [d for d in devices if d.process_index == index]
        if len(local) < per_host:
            raise ShardingError(
                f"mesh {named} over {hosts} processes needs {per_host} devices per process; "
                f"process {index} has {len(local)}"
            )
        chosen.extend(local[:per_host])
    # processes as the outer (DCN) granules: within each, create_device_mesh follows the physical topology
    # on TPU and keeps the given order on CPU/GPU; blocks stack along the rows by process index
    return mesh_utils.create_hybrid_device_mesh(
        (rows // hosts, model), (hosts, 1), chosen, process_is_granule=True, allow_split_physical_axes=True
    )


def batch_axes(mesh: Mesh | Any) -> tuple[str, ...]:
    """The mesh axes a batch's rows split over: data, and fsdp where the mesh has it (data outer).

    Input batches are laid out by this, not by the "batch" rule: multi-host input splitting depends on it
    (``make_mesh``); the "batch" rule lays out the activations inside the step.
    """
    return tuple(a for a in (DATA, FSDP) if a in mesh.axis_names)


def batch_shards(mesh: Mesh | Any) -> int:
    """How many ways a batch's rows are split (its row count must be a multiple of this)."""
    return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def batch_spec(mesh: Mesh | Any, ndim: int, leading: int = 0) -> PartitionSpec:
    """Rows (dimension ``leading``) over the batch axes; every other dimension replicated."""
    axes = batch_axes(mesh)
    rows: MeshAxes = None if not axes else axes[0] if len(axes) == 1 else axes
    return PartitionSpec(*([None] * leading), rows, *([None] * (ndim - leading - 1)))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Shard a batch-major array's leading dimension over the batch axes; replicate the rest."""
    return NamedSharding(mesh, batch_spec(mesh, ndim))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


# ---------------------------------------------------------------------------------------------- specs


def _on_mesh(axes: MeshAxes, mesh_axis_names: Sequence[str] | None, name: str) -> tuple[str, ...]:
    """A rule's mesh axes as they exist on a mesh: "fsdp" is "data" on a two-axis mesh (the module doc)."""
    if axes is None:
        return ()
    names = (axes,) if isinstance(axes, str) else tuple(axes)
    if mesh_axis_names is None:
        return names
    out: list[str] = []
    for axis in names:
        if axis == FSDP and FSDP not in mesh_axis_names and DATA in mesh_axis_names:
            axis = DATA
        if axis not in mesh_axis_names:
            raise ShardingError(
                f"rule {name!r} maps to mesh axis {axis!r}, which the mesh (axes {tuple(mesh_axis_names)}) "
                "lacks"
            )
        if axis not in out:
            out.append(axis)
    return tuple(out)


def logical_to_spec(
    logical_axes: Sequence[str | None],
    rules: LogicalRules | None = None,
    mesh_axis_names: Sequence[str] | None = None,
) -> PartitionSpec:
    """Map logical axis names to a PartitionSpec (rules: ``current_rules()`` unless given).

    A mesh axis is used at most once per spec: a later dimension whose rule names an axis already used keeps
    the rest of its axes (none: replicated). A logical name without a rule is replicated.
    """
    table = dict(current_rules() if rules is None else rules)
    used: set[str] = set()
    out: list[MeshAxes] = []
    for name in logical_axes:
        axes = _on_mesh(table.get(name), mesh_axis_names, name) if name is not None else ()
        axes = tuple(a for a in axes if a not in used)
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*out)


def check_divisible(
    spec: PartitionSpec,
    shape: Sequence[int],
    mesh_shape: Mapping[str, int],
    what: str,
    logical_axes: Sequence[str | None],
) -> PartitionSpec:
    """``spec`` if every sharded dimension of ``shape`` divides its mesh axes; else a ValueError naming
    ``what`` (a parameter's path, a buffer), its shape, the logical axis and the mesh axis size."""
    for i, dim in enumerate(shape):
        axes = spec[i] if i < len(spec) else None
        if axes is None:
            continue
        names = (axes,) if isinstance(axes, str) else tuple(axes)
        size = math.prod(mesh_shape[a] for a in names)
        if dim % size:
            logical = logical_axes[i] if i < len(logical_axes) else None
            joined = "x".join(names)
            raise ShardingError(
                f"{what}: dimension {i} (logical axis {logical!r}) of shape {tuple(shape)} is {dim}, which "
                f"does not divide over mesh axis {joined!r} of size {size}; map {logical!r} elsewhere in the "
                f"sharding rules (e.g. TrainConfig.sharding_rules '{logical}=none' to replicate it) or "
                "change the mesh"
            )
    return spec


def sharding_for(
    mesh: Mesh,
    logical_axes: Sequence[str | None],
    shape: Sequence[int],
    what: str,
    rules: LogicalRules | None = None,
) -> NamedSharding:
    """The NamedSharding of an array named ``what`` by its logical axes; a ValueError if a dimension does not
    divide its mesh axes (``check_divisible``)."""
    spec = logical_to_spec(logical_axes, rules, mesh.axis_names)
    return NamedSharding(mesh, check_divisible(spec, shape, dict(mesh.shape), what, logical_axes))


def logical_sharding(
    mesh: Mesh, logical_axes: Sequence[str | None], rules: LogicalRules | None = None
) -> NamedSharding:
    """The NamedSharding of logical axes on ``mesh`` (no shape: no divisibility check)."""
    return NamedSharding(mesh, logical_to_spec(logical_axes, rules, mesh.axis_names))


# ---------------------------------------------------------------------------- params and activations
# Model parameters are nnx.Variables carrying a ``logical_axes`` metadata tuple (one name per dimension).
LOGICAL_AXES_KEY = "logical_axes"


def variable_sharding(
    variable: Any, mesh: Mesh, rules: LogicalRules | None = None, name: str = "a parameter"
) -> NamedSharding:
    """The NamedSharding of one annotated nnx.Variable (replicated when it carries no logical axes); a
    ValueError naming ``name`` when a dimension does not divide its mesh axes."""
    names = variable.get_metadata().get(LOGICAL_AXES_KEY)
    if names is None:
        return replicated(mesh)
    return sharding_for(mesh, names, variable.get_value().shape, f"parameter {name}", rules)


def _is_variable(x: Any) -> bool:
    from flax import nnx

    return isinstance(x, nnx.Variable)


def state_shardings(state: Any, mesh: Mesh, rules: LogicalRules | None = None) -> Any:
    """NamedShardings for every Variable of an ``nnx.State`` (same tree structure, for jit, orbax and
    device_put); a dimension that does not divide its mesh axes is a ValueError naming the variable's path."""

    def one(path: Any, variable: Any) -> NamedSharding:
        return variable_sharding(variable, mesh, rules, jax.tree_util.keystr(path))

    return jax.tree_util.tree_map_with_path(one, state, is_leaf=_is_variable)


def shard_module(module: Any, mesh: Mesh, rules: LogicalRules | None = None) -> Any:
    """Move a module's variables onto their logical shardings in place; returns the module."""
    from flax import nnx

    state = nnx.state(module)
    placed = jax.device_put(state, state_shardings(state, mesh, rules))
    nnx.update(module, placed)
    return module


def constrain(
    x: jax.Array, logical_axes: Sequence[str | None], rules: LogicalRules | None = None
) -> jax.Array:
    """Constrain an activation's sharding under the ambient mesh (``jax.set_mesh``); a no-op without one.

    A dimension that does not divide its mesh axes is a ValueError at trace time, as for parameters.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec = logical_to_spec(logical_axes, rules, mesh.axis_names)
    check_divisible(spec, x.shape, dict(mesh.shape), f"activation {tuple(logical_axes)}", logical_axes)
    return jax.lax.with_sharding_constraint(x, spec)
