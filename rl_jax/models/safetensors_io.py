"""Memory-mapped reading and streaming writing of safetensors files.

The format is an 8-byte little-endian header length, a JSON header (name -> dtype, shape, byte offsets) and the
raw tensor bytes. We map the file with numpy instead of going through ``safetensors.safe_open`` because its
numpy backend cannot represent bfloat16 (the usual checkpoint dtype); ``ml_dtypes.bfloat16`` can, so a bf16
tensor is a zero-copy view like any other, and a loader reads only the pages of the slices it asks for.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


class SafetensorsDir:
    """Read-only, memory-mapped view of every tensor in a checkpoint directory (one file or a sharded set)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"checkpoint directory not found: {self.directory}")
        index = self.directory / "model.safetensors.index.json"
        if index.exists():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in self.directory.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors files in {self.directory}")
        self._entries: dict[str, tuple[np.memmap, np.dtype, tuple[int, ...], int]] = {}
        for name in files:
            self._map_file(self.directory / name)

    def _map_file(self, path: Path) -> None:
        if not path.exists():
            raise FileNotFoundError(f"{path} is listed in the index but missing")
        with path.open("rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
        data_start = 8 + header_len
        mm = np.memmap(path, dtype=np.uint8, mode="r")
        for tensor, meta in header.items():
            if tensor == "__metadata__":
                continue
            if meta["dtype"] not in _DTYPES:
                raise ValueError(f"{path.name}: tensor {tensor} has unsupported dtype {meta['dtype']}")
            begin, _ = meta["data_offsets"]
            self._entries[tensor] = (mm, _DTYPES[meta["dtype"]], tuple(meta["shape"]), data_start + begin)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def keys(self) -> list[str]:
        return list(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __getitem__(self, name: str) -> np.ndarray:
        """A zero-copy, read-only view of one tensor."""
        if name not in self._entries:
            raise KeyError(f"tensor {name!r} not found in {self.directory}")
        mm, dtype, shape, offset = self._entries[name]
        if int(np.prod(shape, dtype=np.int64)) == 0:
            return np.zeros(shape, dtype)
        return np.ndarray(shape, dtype=dtype, buffer=mm, offset=offset, order="C")


def write_safetensors(
    path: str | Path, tensors: Iterable[tuple[str, np.ndarray]], metadata: dict[str, str] | None = None
) -> None:
    """Write one safetensors file (the header needs every shape first, so the caller bounds a file's size)."""
    items = list(tensors)
    header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, arr in items:
        if arr.dtype not in _NAMES:
            raise ValueError(f"cannot write tensor {name} of dtype {arr.dtype} to safetensors")
        header[name] = {"dtype": _NAMES[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    with Path(path).open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _, arr in items:
            _write_array(f, arr)


def _write_array(f: BinaryIO, arr: np.ndarray) -> None:
    f.write(np.ascontiguousarray(arr).tobytes(order="C"))


def shard_by_size(
    tensors: Iterable[tuple[str, np.ndarray]], max_bytes: int
) -> Iterator[list[tuple[str, np.ndarray]]]:
    """Group a tensor stream into consecutive shards of at most ``max_bytes`` (a bigger tensor gets its own)."""
    shard: list[tuple[str, np.ndarray]] = []
    size = 0
    for name, arr in tensors:
        if shard and size + arr.nbytes > max_bytes:
            yield shard
            shard, size = [], 0
        shard.append((name, arr))
        size += arr.nbytes
    if shard:
        yield shard
