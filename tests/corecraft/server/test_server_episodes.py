"""Episodes on real world forks: created on first use, reused, freed on end, on idle timeout, and capped."""

from __future__ import annotations

import sqlite3

import pytest

from corecraft.server.episodes import (
    DEFAULT_EPISODE,
    EpisodeError,
    EpisodeManager,
    episode_from_headers,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_first_use_forks_and_later_calls_reuse_the_same_fork(world):
    episodes = EpisodeManager(world.fork)
    a = episodes.conn("a")
    a.execute("UPDATE customers SET first_name = 'Changed' WHERE rowid = 1")
    assert episodes.conn("a") is a
    b = episodes.conn("b")
    assert b.execute("SELECT first_name FROM customers WHERE rowid = 1").fetchone()[0] != "Changed"
    assert episodes.ids() == ["a", "b"]
    episodes.close_all()


def test_ending_an_episode_closes_its_fork(world):
    episodes = EpisodeManager(world.fork)
    conn = episodes.conn("a")
    assert episodes.end("a") is True
    assert episodes.end("a") is False
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")
    assert len(episodes) == 0


def test_idle_episodes_are_freed_by_the_sweep(world):
    clock = Clock()
    episodes = EpisodeManager(world.fork, idle_timeout_s=60, clock=clock)
    episodes.conn("old")
    clock.now = 50
    episodes.conn("young")
    clock.now = 100
    assert episodes.sweep() == ["old"]
    assert episodes.ids() == ["young"]
    episodes.close_all()


def test_episode_cap_refuses_new_episodes_until_idle_ones_go(world):
    clock = Clock()
    episodes = EpisodeManager(world.fork, idle_timeout_s=10, max_episodes=2, clock=clock)
    episodes.conn("a")
    episodes.conn("b")
    with pytest.raises(EpisodeError, match="too many open episodes"):
        episodes.conn("c")
    clock.now = 11
    episodes.conn("c")  # a and b were idle: swept to make room
    assert episodes.ids() == ["c"]
    episodes.close_all()


def test_episode_header_is_read_and_validated():
    assert episode_from_headers(None) == DEFAULT_EPISODE
    assert episode_from_headers({}) == DEFAULT_EPISODE
    assert episode_from_headers({"x-corecraft-episode": "run-7:sample.3"}) == "run-7:sample.3"
    for bad in ("", "has space", "x" * 129, "../etc", "ünïcode"):
        with pytest.raises(EpisodeError, match="malformed"):
            episode_from_headers({"x-corecraft-episode": bad})
