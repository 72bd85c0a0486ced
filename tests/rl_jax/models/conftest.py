"""Session fixtures for the model tests: tiny random HF checkpoints of every family, written once."""

from __future__ import annotations

from pathlib import Path

import pytest
from models_helpers import write_hf_checkpoints


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory) -> dict[str, Path]:
    return write_hf_checkpoints(tmp_path_factory.mktemp("hf_tiny"))
