"""`corecraft world build|stats` through the real console entry point, in a subprocess."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from corecraft.world import World

REPO = Path(__file__).resolve().parents[3]


# Exactly what the installed `corecraft` console script runs (entry point corecraft.cli:main).
ENTRY = "import sys; from corecraft.cli import main; sys.exit(main())"


def corecraft(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", ENTRY, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines, "an error message"
    # argparse prints its usage line first; the error itself is one line.
    assert len([line for line in lines if "error" in line]) == 1, proc.stderr
    for needle in needles:
        assert needle in proc.stderr


def test_build_writes_a_world_that_opens(tmp_path: Path) -> None:
    out = tmp_path / "w.db"
    proc = corecraft("world", "build", "--seed", "7", "--scale", "0.2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "entities" in proc.stdout
    world = World.open(out)
    assert world.seed == 7 and world.scale == 0.2
    assert world.serialize() == World.build(seed=7, scale=0.2).serialize()


def test_stats_json_is_one_object_with_counts(tmp_path: Path) -> None:
    out = tmp_path / "w.db"
    World.build(seed=4, scale=0.2).save(out)
    proc = corecraft("world", "stats", "--db", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    stats = json.loads(lines[0])
    assert set(stats) == {"entity_types", "total", "seed"}
    assert stats["seed"] == 4
    assert stats["total"] == sum(stats["entity_types"].values())
    assert stats["entity_types"]["orders"] == 128


def test_stats_from_seed_prints_a_table() -> None:
    proc = corecraft("world", "stats", "--seed", "0")
    assert proc.returncode == 0, proc.stderr
    assert "orders" in proc.stdout and "total" in proc.stdout


def test_unknown_flag_is_refused() -> None:
    assert_one_line_error(corecraft("world", "build", "--sede", "1"), "unrecognized arguments")


def test_negative_scale_is_refused() -> None:
    assert_one_line_error(corecraft("world", "build", "--scale", "-1"), "scale must be a positive number")


def test_non_numeric_seed_is_refused() -> None:
    assert_one_line_error(corecraft("world", "stats", "--seed", "abc"), "seed must be a non-negative integer")


def test_seed_and_db_together_are_refused(tmp_path: Path) -> None:
    assert_one_line_error(corecraft("world", "stats", "--seed", "1", "--db", str(tmp_path / "x.db")), "not allowed")


def test_unwritable_output_path_is_refused(tmp_path: Path) -> None:
    assert_one_line_error(corecraft("world", "build", "--scale", "0.05", "--out", str(tmp_path / "no" / "such" / "w.db")), "does not exist")
    assert_one_line_error(corecraft("world", "build", "--scale", "0.05", "--out", str(tmp_path)), "is a directory")


def test_output_path_that_cannot_be_written_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")  # its "child" cannot be created, even by root
    assert_one_line_error(corecraft("world", "build", "--scale", "0.05", "--out", str(blocker / "w.db")), "cannot write")


def test_file_that_is_not_a_corecraft_database_is_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not sqlite\n")
    assert_one_line_error(corecraft("world", "stats", "--db", str(text)), "not a SQLite database")
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    conn.commit()
    conn.close()
    assert_one_line_error(corecraft("world", "stats", "--db", str(other)), "not a CoreCraft world")
    assert_one_line_error(corecraft("world", "stats", "--db", str(tmp_path / "missing.db")), "no such file")
