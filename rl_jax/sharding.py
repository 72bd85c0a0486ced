"""Device meshes and logical-axis sharding rules.

Parameters and activations name their axes logically ("embed", "mlp", "heads", ...); one table maps those
names onto the mesh axes ("data", "model"), so a new parallelism layout is a change of rules, not of code.
Default layout: tensor parallel over "model", FSDP (parameter sharding) over "data".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA = "data"
MODEL = "model"
MESH_AXES = (DATA, MODEL)

# logical axis name -> mesh axis (or None: replicated along every mesh axis)
LogicalRules = tuple[tuple[str, str | None], ...]

DEFAULT_RULES: LogicalRules = (
    ("batch", DATA),
    ("vocab", MODEL),
    ("embed", DATA),        # FSDP: the hidden dimension of weights is sharded over data
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


def parse_mesh_shape(spec: str) -> tuple[int, int]:
    """Parse ``"8x4"`` (data x model) into ``(8, 4)``; raise ValueError with a readable message."""
    parts = spec.lower().replace("*", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--mesh must look like DATAxMODEL, e.g. 8x4 or 1x1; got {spec!r}")
    data, model = (int(p) for p in parts)
    if data < 1 or model < 1:
        raise ValueError(f"--mesh axes must be >= 1; got {spec!r}")
    return data, model


def make_mesh(data: int = 1, model: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, model) mesh with Auto axis types (GSPMD-style propagation from annotated params).

    One process: the first ``data * model`` devices in order, row-major (data rows of ``model`` devices).
    Several processes (``jax.distributed``): the model axis stays within a process, whose tensor-parallel
    collectives run every layer and must not cross the slower network between hosts; the data axis spans the
    processes, process p holding data rows ``[p * data / n, (p + 1) * data / n)``, so a batch built with
    ``shard_batch`` from each process's own rows is their concatenation in process order. Every process
    contributes the same number of devices (its first ``data * model / n``).
    """
    devices = list(devices) if devices is not None else jax.devices()
    need = data * model
    if need > len(devices):
        raise ValueError(
            f"mesh {data}x{model} needs {need} devices but {len(devices)} are visible; on CPU set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={need} before JAX starts"
        )
    hosts = len({d.process_index for d in devices})
    if hosts == 1:
        grid = np.asarray(devices[:need]).reshape(data, model)
    else:
        grid = _multi_host_grid(devices, hosts, data, model)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def _multi_host_grid(devices: Sequence[jax.Device], hosts: int, data: int, model: int) -> np.ndarray:
    """The device grid of a mesh over several processes: a (data / hosts, model) block per process, stacked
    along data in process order."""
    if data % hosts:
        raise ValueError(
            f"mesh {data}x{model} over {hosts} processes: the data axis ({data}) must be a multiple of the "
            f"number of processes, so each holds whole data rows and the model axis stays within a host"
        )
    per_host = data * model // hosts
    chosen: list[jax.Device] = []
    for index in sorted({d.process_index for d in devices}):
        local = [d for d in devices if d.process_index == index]
        if len(local) < per_host:
            raise ValueError(
                f"mesh {data}x{model} over {hosts} processes needs {per_host} devices per process; "
                f"process {index} has {len(local)}"
            )
        chosen.extend(local[:per_host])
    # processes as the outer (DCN) granules: within each, create_device_mesh follows the physical topology
    # on TPU and keeps the given order on CPU/GPU; blocks stack along data by process index
    return mesh_utils.create_hybrid_device_mesh(
        (data // hosts, model), (hosts, 1), chosen, process_is_granule=True, allow_split_physical_axes=True
    )


def logical_to_spec(logical_axes: Sequence[str | None], rules: LogicalRules = DEFAULT_RULES) -> PartitionSpec:
    """Map logical axis names to a PartitionSpec; a mesh axis is used at most once per spec."""
    table = dict(rules)
    used: set[str] = set()
    out: list[str | None] = []
    for name in logical_axes:
        axis = table.get(name) if name is not None else None
        if axis is not None and axis in used:
            axis = None
        if axis is not None:
            used.add(axis)
        out.append(axis)
    return PartitionSpec(*out)


def logical_sharding(
    mesh: Mesh, logical_axes: Sequence[str | None], rules: LogicalRules = DEFAULT_RULES
) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes, rules))


def fit_spec_to_shape(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Drop mesh axes that do not divide their dimension (tiny test models, odd vocab sizes)."""
    fitted: list[str | None] = []
    for i, dim in enumerate(shape):
        axis = spec[i] if i < len(spec) else None
        if axis is not None and dim % mesh.shape[axis] != 0:
            axis = None
        fitted.append(axis)
    return PartitionSpec(*fitted)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Shard a batch-major array's leading dimension over data; replicate the rest."""
    return NamedSharding(mesh, PartitionSpec(DATA, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


# ---------------------------------------------------------------------------- params and activations
# Model parameters are nnx.Variables carrying a ``logical_axes`` metadata tuple (one name per dimension).
LOGICAL_AXES_KEY = "logical_axes"


def variable_sharding(variable: Any, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> NamedSharding:
    """The NamedSharding of one annotated nnx.Variable (replicated when it carries no logical axes)."""
    names = variable.get_metadata().get(LOGICAL_AXES_KEY)
    shape = variable.get_value().shape
    if names is None:
        return replicated(mesh)
    return NamedSharding(mesh, fit_spec_to_shape(logical_to_spec(names, rules), shape, mesh))


def state_shardings(state: Any, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> Any:
    """NamedShardings for every Variable of an ``nnx.State`` (same tree structure, for jit/orbax/device_put)."""
    from flax import nnx

    return jax.tree.map(
        lambda v: variable_sharding(v, mesh, rules),
        state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )


def shard_module(module: Any, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> Any:
    """Move a module's variables onto their logical shardings in place; returns the module."""
    from flax import nnx

    state = nnx.state(module)
    placed = jax.device_put(state, state_shardings(state, mesh, rules))
    nnx.update(module, placed)
    return module


def constrain(x: jax.Array, logical_axes: Sequence[str | None], rules: LogicalRules = DEFAULT_RULES) -> jax.Array:
    """Constrain an activation's sharding under the ambient mesh (``jax.set_mesh``); a no-op without one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec = logical_to_spec(logical_axes, rules)
    fitted = [
        axis if axis is not None and x.shape[i] % mesh.shape[axis] == 0 else None
        for i, axis in enumerate(tuple(spec) + (None,) * (x.ndim - len(spec)))
    ]
    return jax.lax.with_sharding_constraint(x, PartitionSpec(*fitted))
