"""`corecraft world build|stats`: the real console entry in a subprocess, error paths through corecraft.cli.main."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from corecraft.cli import main
from corecraft.world import World

REPO = Path(__file__).resolve().parents[3]
# Exactly what the installed `corecraft` console script runs (entry point corecraft.cli:main).
ENTRY = "import sys; from corecraft.cli import main; sys.exit(main())"


def corecraft_process(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", ENTRY, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(result: tuple[int, str, str], *needles: str) -> None:
    code, _out, err = result
    assert code != 0
    assert "Traceback" not in err
    # Exactly one line on stderr, usage errors included (no argparse usage block before it).
    lines = err.splitlines()
    assert len(lines) == 1 and "error" in lines[0], err
    for needle in needles:
        assert needle in lines[0], err


# The real entry point, end to end -------------------------------------------------------------------------


def test_build_then_stats_json_through_the_console_entry(tmp_path: Path) -> None:
    out = tmp_path / "w.db"
    built = corecraft_process("world", "build", "--seed", "7", "--scale", "0.2", "--out", str(out))
    assert built.returncode == 0, built.stderr
    assert "entities" in built.stdout
    world = World.open(out)
    assert world.seed == 7 and world.scale == 0.2
    assert world.serialize() == World.build(seed=7, scale=0.2).serialize()

    stats = corecraft_process("world", "stats", "--db", str(out), "--json")
    assert stats.returncode == 0, stats.stderr
    lines = stats.stdout.strip().splitlines()
    assert len(lines) == 1
    parsed = json.loads(lines[0])
    assert set(parsed) == {"entity_types", "total", "seed"}
    assert parsed["seed"] == 7
    assert parsed["total"] == sum(parsed["entity_types"].values())
    assert parsed["entity_types"]["orders"] == 128


def test_bad_input_through_the_console_entry_is_one_line_without_traceback(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not sqlite\n")
    proc = corecraft_process("world", "stats", "--db", str(text))
    assert_one_line_error((proc.returncode, proc.stdout, proc.stderr), "not a SQLite database")


# Behaviour, in process ------------------------------------------------------------------------------------


def test_stats_from_seed_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "world", "stats", "--seed", "0")
    assert code == 0
    assert "orders" in out and "total" in out and "today=" in out


def test_unknown_flag_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_line_error(run_cli(capsys, "world", "build", "--sede", "1"), "corecraft world build: error:",
                          "unrecognized arguments: --sede", "try 'corecraft world build --help'")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        ((), ("corecraft: error:", "required: COMMAND", "try 'corecraft --help'")),
        (("wrld",), ("invalid choice: 'wrld'", "try 'corecraft --help'")),
        (("world",), ("required: SUBCOMMAND", "try 'corecraft world --help'")),
        (("tools", "call"), ("required: name", "try 'corecraft tools call --help'")),
        (("serve", "--port", "eighty"), ("--port", "'eighty'", "try 'corecraft serve --help'")),
        (("serve", "--transport", "ftp"), ("invalid choice: 'ftp'", "try 'corecraft serve --help'")),
        (("world", "stats", "--json", "extra"), ("unrecognized arguments: extra", "try 'corecraft world stats --help'")),
    ],
)
def test_every_subcommand_reports_usage_errors_in_one_line(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], needles: tuple[str, ...]
) -> None:
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and out == ""
    assert_one_line_error((code, out, err), *needles)


def test_negative_scale_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_line_error(run_cli(capsys, "world", "build", "--scale", "-1"), "scale must be a positive number")


def test_absurd_scale_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_line_error(run_cli(capsys, "world", "build", "--scale", "1e9"), "scale must be at most")


def test_non_numeric_seed_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_line_error(run_cli(capsys, "world", "stats", "--seed", "abc"), "seed must be a non-negative integer")


def test_seed_and_db_together_are_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert_one_line_error(run_cli(capsys, "world", "stats", "--seed", "1", "--db", str(tmp_path / "x.db")), "not allowed")


def test_scale_with_a_saved_database_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert_one_line_error(run_cli(capsys, "world", "stats", "--db", str(tmp_path / "x.db"), "--scale", "2"), "--scale applies")


def test_missing_output_directory_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    result = run_cli(capsys, "world", "build", "--scale", "0.05", "--out", str(tmp_path / "no" / "such" / "w.db"))
    assert_one_line_error(result, "does not exist")


def test_directory_as_output_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert_one_line_error(run_cli(capsys, "world", "build", "--scale", "0.05", "--out", str(tmp_path)), "is a directory")


def test_output_path_that_cannot_be_written_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")  # its "child" cannot be created, even by root
    result = run_cli(capsys, "world", "build", "--scale", "0.05", "--out", str(blocker / "w.db"))
    assert_one_line_error(result, "cannot write")
    assert list(tmp_path.iterdir()) == [blocker]


def test_database_that_is_not_corecraft_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    conn.commit()
    conn.close()
    assert_one_line_error(run_cli(capsys, "world", "stats", "--db", str(other)), "not a CoreCraft world")


def test_missing_database_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert_one_line_error(run_cli(capsys, "world", "stats", "--db", str(tmp_path / "missing.db")), "no such file")


def test_diff_lists_what_changed_between_two_saved_worlds(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    base = World.build(seed=0, scale=0.1)
    base.save(tmp_path / "before.db")
    with base.fork() as fork:
        with fork.conn:
            fork.conn.execute("UPDATE customers SET phone = NULL WHERE customer_id = 'CUST-10001'")
        World.from_bytes(fork.serialize()).save(tmp_path / "after.db")
    code, out, _ = run_cli(capsys, "world", "diff", str(tmp_path / "before.db"), str(tmp_path / "after.db"))
    assert code == 0
    assert out.strip() == "customers: +0 inserted, ~1 updated (phone), -0 deleted"
    code, out, _ = run_cli(capsys, "world", "diff", str(tmp_path / "before.db"), str(tmp_path / "after.db"), "--json")
    assert json.loads(out)["customers"]["updated"][0]["after"]["phone"] is None
    code, out, _ = run_cli(capsys, "world", "diff", str(tmp_path / "before.db"), str(tmp_path / "before.db"))
    assert out.strip() == "no changes"
    assert_one_line_error(run_cli(capsys, "world", "diff", str(tmp_path / "before.db"), str(tmp_path / "nope.db")), "no such file")
