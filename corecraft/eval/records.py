"""The evaluation output directory: file names, and reading the runs recorded so far.

Records are JSON Lines appended one at a time, so an interruption can leave the last line cut off: readers skip
such a line, and ``repair_jsonl`` drops it before anything is appended after it (which would glue the next record
onto the broken one and lose it too).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RUNS_FILE = "runs.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.json"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON object line of ``path`` (none if it does not exist); cut or broken lines are skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def read_runs(out: Path) -> list[dict[str, Any]]:
    """Every complete line of ``out/runs.jsonl``; a line cut by an interruption is skipped (and so redone)."""
    return read_jsonl(Path(out) / RUNS_FILE)


def repair_jsonl(path: Path) -> int:
    """Drops lines an interruption left incomplete, so appends start on a fresh line; returns lines dropped."""
    path = Path(path)
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


def repair_runs(out: Path) -> int:
    return repair_jsonl(Path(out) / RUNS_FILE)
