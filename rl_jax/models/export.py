"""Export a Transformer as a Hugging Face checkpoint (config.json + safetensors) that transformers and vLLM load.

Tensors are gathered to the host and written one at a time, in shards of at most ``max_shard_bytes``, so the
host never holds more than one shard of the model.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from rl_jax.models.hf_names import hf_shapes, tensor_maps
from rl_jax.models.safetensors_io import shard_by_size, write_safetensors
from rl_jax.models.transformer import LAYERS_AXIS, STACKED, Transformer

# files a serving stack wants beside the weights; copied from the source checkpoint when given
SIDECAR_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
    "chat_template.jinja", "vocab.json", "merges.txt",
)


def _hf_tensors(model: Transformer, dtype: Any | None) -> Iterator[tuple[str, np.ndarray]]:
    cfg = model.config
    shapes = hf_shapes(cfg)
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))

    def weight(path: tuple) -> jax.Array:
        if path[0] == LAYERS_AXIS and isinstance(path[1], int) and path not in flat:
            # a scanned model stores layer i's weight as row i of a stacked one: one layer gathered at a time
            return flat[(LAYERS_AXIS, STACKED, *path[2:])].get_value()[path[1]]
        return flat[path].get_value()

    for m in tensor_maps(cfg):
        value = np.asarray(jax.device_get(weight(m.path)))
        if dtype is not None:
            value = value.astype(np.dtype(dtype))
        yield m.hf_name, m.to_hf(value, shapes[m.hf_name])


def save_pretrained(
    model: Transformer,
    out_dir: str | Path,
    *,
    dtype: Any | None = None,
    max_shard_bytes: int = 2 * 1024**3,
    copy_files_from: str | Path | None = None,
) -> Path:
    """Write ``model`` to ``out_dir`` (created) as an HF checkpoint; returns the directory.

    ``dtype`` converts the weights on the way out (default: as stored). ``copy_files_from`` names a source
    checkpoint whose tokenizer and generation config are copied alongside.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("model*.safetensors"):
        old.unlink()
    files: list[tuple[str, list[str]]] = []
    total = 0
    pending = shard_by_size(_hf_tensors(model, dtype), max_shard_bytes)
    tmp_names: list[Path] = []
    for i, shard in enumerate(pending):
        name = out / f"model-part-{i:05d}.safetensors"
        write_safetensors(name, shard)
        tmp_names.append(name)
        files.append((name.name, [n for n, _ in shard]))
        total += sum(a.nbytes for _, a in shard)
    if len(files) == 1:
        tmp_names[0].rename(out / "model.safetensors")
        (out / "model.safetensors.index.json").unlink(missing_ok=True)
    else:
        weight_map = {}
        for i, (name, tensors) in enumerate(files):
            final = f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
            (out / name).rename(out / final)
            weight_map.update({t: final for t in tensors})
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))

    hf_config = model.config.to_hf()
    param_dtype = np.dtype(dtype) if dtype is not None else np.dtype(model.embed.get_value().dtype)
    dtype_name = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}.get(param_dtype.name, "float32")
    hf_config["dtype"] = dtype_name  # transformers 5
    hf_config["torch_dtype"] = dtype_name  # transformers 4.x and vLLM
    (out / "config.json").write_text(json.dumps(hf_config, indent=2))
    if copy_files_from is not None:
        for fname in SIDECAR_FILES:
            src = Path(copy_files_from) / fname
            if src.exists():
                shutil.copyfile(src, out / fname)
    return out
