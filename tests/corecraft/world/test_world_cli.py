"""`corecraft world build|stats`: the real console entry in a subprocess, error paths through corecraft.cli.main."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corecraft.cli import main
from corecraft.world import World, WorldError

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
    assert "entities of 14 types" in built.stdout
    world = World.open(out)
    assert world.seed == 7 and world.scale == 0.2
    assert world.serialize() == World.build(seed=7, scale=0.2).serialize()

    stats = corecraft_process("world", "stats", "--db", str(out), "--json")
    assert stats.returncode == 0, stats.stderr
    lines = stats.stdout.strip().splitlines()
    assert len(lines) == 1
    parsed = json.loads(lines[0])
    assert list(parsed) == ["entity_types", "total", "seed", "tables"]
    assert parsed["seed"] == 7
    assert len(parsed["entity_types"]) == 14
    assert parsed["total"] == sum(parsed["entity_types"].values())
    assert parsed["entity_types"]["orders"] == 128
    assert parsed["entity_types"]["shipping_records"] == parsed["tables"]["shipments"]
    assert parsed["tables"]["order_lines"] > parsed["tables"]["orders"]


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
    assert_one_line_error(result, f"--out {blocker / 'w.db'}: {blocker} is not a directory")
    assert list(tmp_path.iterdir()) == [blocker]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux procfs: a directory no one can write")
def test_unwritable_output_is_refused_before_the_build(capsys: pytest.CaptureFixture[str]) -> None:
    # At scale 50 the build takes about a minute: refusing within seconds shows nothing was built first.
    start = time.perf_counter()
    result = run_cli(capsys, "world", "build", "--scale", "50", "--out", "/proc/self/world.db")
    assert time.perf_counter() - start < 20
    assert_one_line_error(result, "--out /proc/self/world.db: cannot create files in /proc/self")


def test_special_file_as_output_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # Saving renames a temporary file over the target: given /dev/null, as root, that would replace the device
    # (a FIFO stands in for it here, so that a regression cannot).
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert_one_line_error(run_cli(capsys, "world", "build", "--scale", "0.05", "--out", str(fifo)),
                          f"--out {fifo} exists and is not a regular file")
    assert fifo.is_fifo()


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


# Damaged and foreign database files -------------------------------------------------------------------------


def _with_meta(path: Path, rows: dict[str, str] | None, *, columns: str = "key TEXT PRIMARY KEY, value TEXT") -> None:
    """A SQLite file holding only a ``meta`` table: a CoreCraft world's, or ``rows`` if given."""
    from corecraft.world.schema import SCHEMA_NAME, SCHEMA_VERSION

    conn = sqlite3.connect(path)
    conn.execute(f"CREATE TABLE meta ({columns})")
    if rows is not None:
        good = {"schema_name": SCHEMA_NAME, "schema_version": str(SCHEMA_VERSION), "seed": "0", "scale": "1",
                "today": "2026-03-16"}
        conn.executemany("INSERT INTO meta VALUES (?, ?)", list((good | rows).items()))
    conn.commit()
    conn.close()


def _with_meta_values(path: Path, good: bytes, **values: str) -> None:
    """A complete world whose meta rows carry ``values``."""
    path.write_bytes(good)
    conn = sqlite3.connect(path)
    conn.executemany("UPDATE meta SET value = ? WHERE key = ?", [(v, k) for k, v in values.items()])
    conn.commit()
    conn.close()


def _overwrite_pages(good: bytes, page_size: int = 4096) -> bytes:
    # Deterministic junk over three pages in the middle: the header stays valid, the b-trees do not.
    damaged = bytearray(good)
    middle = len(good) // page_size // 2
    junk = hashlib.sha256(b"corecraft").digest() * (page_size // 32)
    for page in range(middle, middle + 3):
        damaged[page * page_size : (page + 1) * page_size] = junk
    return bytes(damaged)


def _legacy_truncation(good: bytes) -> bytes:
    # Cut to whole pages, with a header whose page count SQLite would not trust (as an old writer leaves it).
    cut = bytearray(good[: 4096 * 40])
    cut[92:96] = (int.from_bytes(cut[24:28], "big") + 1).to_bytes(4, "big")
    return bytes(cut)


DAMAGED = {
    "garbage after the SQLite header": (lambda p, g: p.write_bytes(g[:16] + b"\xff" * 5000), "not a valid SQLite"),
    "valid header, garbage pages": (lambda p, g: p.write_bytes(g[:100] + b"\x5a" * (len(g) - 100)), "not a readable"),
    "truncated to a third": (lambda p, g: p.write_bytes(g[: len(g) // 3]), "is truncated"),
    "truncated to 200 bytes": (lambda p, g: p.write_bytes(g[:200]), "is truncated"),
    "truncated, untrusted page count": (lambda p, g: p.write_bytes(_legacy_truncation(g)), "not a readable"),
    "pages overwritten mid-file": (lambda p, g: p.write_bytes(_overwrite_pages(g)), "is damaged"),
    "meta table only": (lambda p, g: _with_meta(p, {}), "missing tables: brands"),
    "meta of another shape": (lambda p, g: _with_meta(p, None, columns="a, b"), "no readable meta table"),
    "seed that is not a number": (lambda p, g: _with_meta_values(p, g, seed="x"), "meta.seed must be"),
    "negative scale": (lambda p, g: _with_meta_values(p, g, scale="-1"), "meta.scale must be"),
    "today that is not a date": (lambda p, g: _with_meta_values(p, g, today="never"), "meta.today must be"),
    "a table dropped": (lambda p, g: _drop_table(p, g, "refunds"), "missing tables: refunds"),
}


def _drop_table(path: Path, good: bytes, table: str) -> None:
    path.write_bytes(good)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute(f"DROP TABLE {table}")
    conn.commit()
    conn.close()


@pytest.fixture(scope="module")
def damaged_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    good = World.build(seed=0, scale=0.1).serialize()
    folder = tmp_path_factory.mktemp("damaged")
    files = {}
    for n, (case, (make, needle)) in enumerate(DAMAGED.items()):
        path = folder / f"case{n}.db"
        make(path, good)
        assert path.read_bytes() != good
        files[case] = (path, needle)
    return files


@pytest.mark.parametrize("case", list(DAMAGED))
@pytest.mark.parametrize(
    "command", [("world", "stats", "--db"), ("world", "stats", "--json", "--db"), ("tools", "call", "getLoyaltyTier",
                                                                                   "{}", "--db")]
)
def test_damaged_or_foreign_database_is_one_line_error(
    capsys: pytest.CaptureFixture[str], damaged_files: dict[str, tuple[Path, str]], case: str,
    command: tuple[str, ...]
) -> None:
    path, needle = damaged_files[case]
    result = run_cli(capsys, *command, str(path))
    assert result[1] == ""
    assert_one_line_error(result, str(path), needle)


def test_serve_refuses_damaged_databases_in_one_line_through_the_console_entry(
    damaged_files: dict[str, tuple[Path, str]],
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # One case of each kind (bad bytes, truncation, not our schema): serve loads worlds exactly as `world stats`
    # does, which the test above runs through every case. All at once: each is a fresh interpreter (~2 s of
    # imports); stdin is empty, so a world that loaded would serve nothing and exit 0, failing the test.
    cases = ["garbage after the SQLite header", "truncated to a third", "meta table only"]
    procs = {
        case: subprocess.Popen([sys.executable, "-c", ENTRY, "serve", "--db", str(damaged_files[case][0])],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env, cwd=REPO)
        for case in cases
    }
    try:
        for case, proc in procs.items():
            out, err = proc.communicate(timeout=120)
            path, needle = damaged_files[case]
            assert out == "", case
            assert_one_line_error((proc.returncode, out, err), str(path), needle)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_open_refuses_damage_but_trusts_its_own_bytes(world: World, tmp_path: Path) -> None:
    # World.open checks every page of a file; bytes this process made (build, fork, pickle) are not re-checked.
    path = tmp_path / "w.db"
    world.save(path)
    assert World.open(path).serialize() == world.serialize()
    path.write_bytes(_overwrite_pages(world.serialize()))
    with pytest.raises(WorldError, match="is damaged"):
        World.open(path)
