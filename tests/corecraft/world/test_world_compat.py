"""The build rule checker over real catalog parts: the verdicts a PC builder would give."""

from __future__ import annotations

import sqlite3

import pytest

from corecraft.world import compat


def part(db: sqlite3.Connection, name_like: str, quantity: int = 1) -> compat.Part:
    rows = db.execute(
        "SELECT p.product_id, p.category, s.* FROM products p JOIN product_specs s USING (product_id) WHERE p.name LIKE ?",
        (name_like,),
    ).fetchall()
    assert len(rows) == 1, f"{name_like!r} matched {len(rows)} products"
    return compat.Part(rows[0]["product_id"], rows[0]["category"], dict(rows[0]), quantity)


@pytest.fixture
def rules(db: sqlite3.Connection) -> list[dict]:
    return [dict(r) for r in db.execute("SELECT * FROM compatibility_rules ORDER BY rule_id")]


def failed(db: sqlite3.Connection, rules: list[dict], *names: str) -> set[str]:
    return {v.rule_id for v in compat.check_build([part(db, n) for n in names], rules)}


def test_matching_am5_build_is_compatible(db: sqlite3.Connection, rules: list[dict]) -> None:
    parts = [
        part(db, "AMD Ryzen 7 7800X3D"),
        part(db, "MSI MAG X870 Tomahawk WiFi"),
        part(db, "G.Skill Trident Z5 Neo RGB 32GB%6000%"),
        part(db, "Fractal Design North"),
        part(db, "Thermalright Peerless Assassin 120 SE"),
        part(db, "MSI GeForce RTX 5070 Ventus 2X OC 12GB"),
        part(db, "Corsair RM850x%"),
    ]
    violations = compat.check_build(parts, rules)
    assert violations == []
    assert compat.build_status(violations) == "compatible"


def test_socket_mismatch_is_an_error(db: sqlite3.Connection, rules: list[dict]) -> None:
    assert "CR-001" in failed(db, rules, "Intel Core i5-14600K", "MSI MAG X870 Tomahawk WiFi")


def test_ddr4_kit_on_ddr5_board_is_an_error(db: sqlite3.Connection, rules: list[dict]) -> None:
    assert "CR-002" in failed(db, rules, "Corsair Vengeance LPX 32GB%3200%", "MSI MAG X870 Tomahawk WiFi")


def test_long_gpu_in_small_case_is_an_error(db: sqlite3.Connection, rules: list[dict]) -> None:
    assert "CR-006" in failed(db, rules, "ASUS ROG Astral GeForce RTX 5090%", "Fractal Design Terra")


def test_tall_air_cooler_in_sff_case_is_an_error(db: sqlite3.Connection, rules: list[dict]) -> None:
    assert "CR-007" in failed(db, rules, "Noctua NH-D15 G2", "Corsair 2000D Airflow")


def test_legacy_cooler_bracket_does_not_fit_am5(db: sqlite3.Connection, rules: list[dict]) -> None:
    assert "CR-009" in failed(db, rules, "AMD Ryzen 5 7600X", "Cooler Master Hyper 212 EVO (legacy bracket)")


def test_underpowered_psu_and_missing_16pin_are_errors(db: sqlite3.Connection, rules: list[dict]) -> None:
    assert {"CR-010", "CR-012"} <= failed(
        db, rules, "AMD Ryzen 9 9950X", "ASUS ROG Astral GeForce RTX 5090%", "Corsair CX550%"
    )


def test_atx_psu_in_sfx_only_case_is_an_error(db: sqlite3.Connection, rules: list[dict]) -> None:
    assert "CR-014" in failed(db, rules, "Corsair RM850x%", "Cooler Master MasterBox NR200P")


def test_new_cpu_on_old_bios_board_is_only_a_warning(db: sqlite3.Connection, rules: list[dict]) -> None:
    violations = compat.check_build([part(db, "AMD Ryzen 7 9700X"), part(db, "Gigabyte B650M DS3H")], rules)
    assert [v.rule_id for v in violations] == ["CR-015"]
    assert compat.build_status(violations) == "warnings"


def test_too_many_memory_modules_for_two_slots(db: sqlite3.Connection, rules: list[dict]) -> None:
    kit = part(db, "Corsair Vengeance RGB 32GB%6000%", quantity=2)
    violations = compat.check_build([kit, part(db, "ASRock B650I Lightning WiFi")], rules)
    assert "CR-004" in {v.rule_id for v in violations}


def test_missing_specs_are_skipped_not_failed(rules: list[dict]) -> None:
    cpu = compat.Part("X-CPU", "cpu", {"socket": None, "tdp_watts": None})
    board = compat.Part("X-MB", "motherboard", {"socket": "AM5"})
    assert compat.check_build([cpu, board], rules) == []
