"""The evaluation output directory: file names, and reading the runs recorded so far."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RUNS_FILE = "runs.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.json"


def read_runs(out: Path) -> list[dict[str, Any]]:
    """Every complete line of ``out/runs.jsonl``; a line cut by an interruption is skipped (and so redone)."""
    path = Path(out) / RUNS_FILE
    if not path.exists():
        return []
    runs = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                runs.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return runs


def repair_runs(out: Path) -> int:
    """Drops lines an interruption left incomplete, so appends start on a fresh line; returns lines dropped."""
    path = Path(out) / RUNS_FILE
    if not path.exists():
        return 0
    text = path.read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    good = []
    for ln in lines:
        try:
            json.loads(ln)
        except json.JSONDecodeError:
            continue
        good.append(ln)
    if len(good) != len(lines) or (text and not text.endswith("\n")):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(ln + "\n" for ln in good), encoding="utf-8")
        tmp.replace(path)
    return len(lines) - len(good)
