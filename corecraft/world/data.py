"""Loading the readable data files under ``worlds/corecraft/`` that the generator draws from.

TOML for tables of facts; Markdown with TOML front matter (between ``+++`` lines) for documents.
"""

from __future__ import annotations

import functools
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corecraft.shipped import worlds_dir
from corecraft.world.world import WorldError

_DEFAULT_DIR = worlds_dir() / "corecraft"


def data_dir() -> Path:
    """Where the world data lives: $CORECRAFT_WORLD_DATA, else the repository's worlds/corecraft/ (or an
    installed package's copy of it, ``corecraft.shipped``)."""
    return Path(os.environ.get("CORECRAFT_WORLD_DATA", _DEFAULT_DIR))


@dataclass(frozen=True)
class Document:
    """A Markdown document with its front matter."""

    front: dict[str, Any]
    body: str
    path: Path


@dataclass(frozen=True)
class WorldData:
    world: dict[str, Any]
    brands: list[dict[str, Any]]
    catalog: dict[str, dict[str, Any]]  # file stem -> parsed catalog file
    logistics: dict[str, Any]
    loyalty: dict[str, Any]
    slas: dict[str, Any]
    warranty: dict[str, Any]
    promotions: dict[str, Any]
    compatibility: dict[str, Any]
    people: dict[str, Any]
    tickets: dict[str, Any]
    ops_chat: dict[str, Any]
    policies: list[Document]
    kb: list[Document]


def _toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise WorldError(f"world data file missing: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise WorldError(f"world data file {path} is not valid TOML: {exc}") from exc


def parse_document(path: Path) -> Document:
    text = path.read_text(encoding="utf-8")
    if not text.startswith("+++\n"):
        raise WorldError(f"{path}: a document must start with '+++' TOML front matter")
    end = text.find("\n+++\n", 4)
    if end < 0:
        raise WorldError(f"{path}: front matter is not closed with '+++'")
    try:
        front = tomllib.loads(text[4:end])
    except tomllib.TOMLDecodeError as exc:
        raise WorldError(f"{path}: bad front matter: {exc}") from exc
    return Document(front=front, body=text[end + 5 :].strip() + "\n", path=path)


@functools.cache
def load(directory: Path | None = None) -> WorldData:
    root = directory or data_dir()
    if not root.is_dir():
        raise WorldError(f"world data directory not found: {root} (set CORECRAFT_WORLD_DATA)")
    catalog = {p.stem: _toml(p) for p in sorted((root / "catalog").glob("*.toml"))}
    policies = [parse_document(p) for p in sorted((root / "policies").glob("*.md"))]
    kb = [parse_document(p) for p in sorted((root / "kb").glob("*.md"))]
    return WorldData(
        world=_toml(root / "world.toml"),
        brands=_toml(root / "brands.toml")["brands"],
        catalog=catalog,
        logistics=_toml(root / "logistics.toml"),
        loyalty=_toml(root / "loyalty.toml"),
        slas=_toml(root / "slas.toml"),
        warranty=_toml(root / "warranty.toml"),
        promotions=_toml(root / "promotions.toml"),
        compatibility=_toml(root / "compatibility.toml"),
        people=_toml(root / "people.toml"),
        tickets=_toml(root / "tickets.toml"),
        ops_chat=_toml(root / "ops_chat.toml"),
        policies=policies,
        kb=kb,
    )
