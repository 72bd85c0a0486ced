"""Checkpoints with orbax: the whole TrainState (params, optimizer state, step, skip count, RNG) plus a JSON
record of the data position and the config.

Saves are asynchronous (the step loop goes on while the arrays are written) and the last N are kept. A
restore takes the *target* layout: pass a state built for the new mesh (``abstract_state``) and the arrays
come back sharded that way, so a run saved on one mesh resumes on another.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from rl_jax.models.transformer import LAYERS_AXIS, STACKED, stack_layer_state, unstack_layer_state
from rl_jax.train.state import TrainState

_STATE = "state"
_META = "meta"


def to_json(obj: Any) -> Any:
    """A JSON-able view of (nested) frozen dataclasses, tuples and scalars, for the checkpoint's record."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    return repr(obj)


def abstract_state(state: TrainState, shardings: Any) -> TrainState:
    """ShapeDtypeStructs of ``state`` carrying ``shardings``: the restore target for a given mesh."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
    )


def _is_state(x: Any) -> bool:
    return isinstance(x, nnx.State)


def _map_states(fn: Any, tree: Any) -> Any:
    """``fn`` applied to every ``nnx.State`` in ``tree`` (the parameters and the optimizer's moments)."""
    return jax.tree.map(lambda x: fn(x) if _is_state(x) else x, tree, is_leaf=_is_state)


def _has_stacked_layers(tree: Any) -> bool:
    states = [x for x in jax.tree.leaves(tree, is_leaf=_is_state) if _is_state(x)]
    return any(path[:2] == (LAYERS_AXIS, STACKED) for state in states for path, _ in nnx.to_flat_state(state))


class Checkpointer:
    """Save and restore TrainStates under ``directory/<step>/``.

    Use as a context manager (or call ``close``) so pending asynchronous saves finish before exit.
    """

    def __init__(self, directory: str | Path, *, keep: int = 3, async_save: bool = True, save_every: int = 1):
        if keep < 1:
            raise ValueError(f"keep must be >= 1; got {keep}")
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1; got {save_every}")
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                save_interval_steps=save_every,
                enable_async_checkpointing=async_save,
                create=True,
            ),
            item_names=(_STATE, _META),
        )

    def save(self, state: TrainState, *, data_position: Any = None, config: Any = None, force: bool = False,
             step: int | None = None) -> bool:
        """Start saving ``state`` at ``step`` (default: its own step count); returns whether a save was started
        (see ``save_every``). A loop whose steps can skip an update numbers its checkpoints by its own steps.

        ``data_position`` (JSON-able: an index, a dict of cursors) says where the data stream stands, so a
        resumed run reads the next batch, not the first one again.
        """
        step = int(jax.device_get(state.step)) if step is None else int(step)
        meta = {"step": step, "data_position": to_json(data_position), "config": to_json(config)}
        return self._manager.save(
            step,
            args=ocp.args.Composite(
                **{_STATE: ocp.args.StandardSave(state), _META: ocp.args.JsonSave(meta)}
            ),
            force=force,
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def restore(self, target: TrainState, step: int | None = None) -> tuple[TrainState, dict[str, Any]]:
        """Restore ``(state, meta)``; ``target`` (concrete or abstract, with shardings) sets the layout."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {self.directory}")
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), target
        )
        try:
            out = self._restore(step, abstract)
        except ValueError as exc:
            # saved with the layers in the other layout (scanned training stores them stacked; checkpoints from
            # before it did, and unrolled runs, hold one entry per layer): restore that layout, then convert
            stacked = _has_stacked_layers(abstract)
            other = _map_states(unstack_layer_state if stacked else stack_layer_state, abstract)
            if jax.tree.structure(other) == jax.tree.structure(abstract):
                raise
            try:
                out = self._restore(step, other)
            except ValueError:
                raise exc from None
            converted = _map_states(stack_layer_state if stacked else unstack_layer_state, out[_STATE])
            shardings = jax.tree.map(lambda x: x.sharding, abstract)
            placed = jax.tree.map(lambda x, s: x if s is None else jax.device_put(x, s), converted, shardings)
            return placed, dict(out[_META])
        return out[_STATE], dict(out[_META])

    def _restore(self, step: int, abstract: Any) -> Any:
        return self._manager.restore(
            step,
            args=ocp.args.Composite(
                **{_STATE: ocp.args.StandardRestore(abstract), _META: ocp.args.JsonRestore()}
            ),
        )

    def wait(self) -> None:
        """Block until pending asynchronous saves are committed to disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_meta(directory: str | Path, step: int) -> dict[str, Any]:
    """The JSON record of one checkpoint, without loading arrays (for tools and tests)."""
    path = Path(directory) / str(step) / _META / "metadata"
    return json.loads(path.read_text())
