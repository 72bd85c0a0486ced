"""Where the shipped data lives: the world generator's facts and documents, and the task set.

In a checkout (and an editable install) that is the repository's ``worlds/``; a regular install (``pip install
.``) carries the same files as data files under ``<prefix>/share/corecraft/worlds/`` (pyproject.toml's
``tool.setuptools.data-files``), so the environment works outside a checkout too.
"""

from __future__ import annotations

import sys
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[1] / "worlds"
_INSTALLED = Path(sys.prefix) / "share" / "corecraft" / "worlds"


def worlds_dir() -> Path:
    """The checkout's ``worlds/`` when the package runs from one, else the installed copy."""
    return _CHECKOUT if _CHECKOUT.is_dir() else _INSTALLED
