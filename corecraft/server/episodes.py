"""Episodes: one isolated fork of the world per episode, created on first use, freed on end or when idle.

MCP 2.x has no protocol session, so nothing ties one client's calls together on the server. Over HTTP the
client names its episode in a request header (``X-CoreCraft-Episode``); a stdio process is one episode.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

EPISODE_HEADER = "X-CoreCraft-Episode"
DEFAULT_EPISODE = "default"
_EPISODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


class Fork(Protocol):
    """What the world hands out per episode (``corecraft.world`` forks satisfy this)."""

    conn: sqlite3.Connection

    def close(self) -> None: ...


class EpisodeError(Exception):
    """A malformed episode id, or no room for another episode."""


@dataclass
class _Episode:
    fork: Fork
    last_used: float
    calls: int = 0


def validate_episode_id(value: str) -> str:
    if not _EPISODE_ID.fullmatch(value):
        raise EpisodeError(
            f"episode id {value[:40]!r} is malformed: use 1-128 characters from A-Z a-z 0-9 . _ : - "
            "starting with a letter or digit"
        )
    return value


def episode_from_headers(headers: Mapping[str, str] | None) -> str:
    """The episode a request belongs to: its header over HTTP; the one default episode on stdio or without it."""
    if headers is None:
        return DEFAULT_EPISODE
    value = headers.get(EPISODE_HEADER.lower())
    if value is None:
        value = headers.get(EPISODE_HEADER)
    return DEFAULT_EPISODE if value is None else validate_episode_id(value.strip())


class EpisodeManager:
    """Maps episode ids to live forks. The map is thread-safe; an episode's connection serves one call at a time
    (the server runs tool calls on its event loop). The clock is injectable so tests need not sleep."""

    def __init__(
        self,
        open_fork: Callable[[], Fork],
        *,
        idle_timeout_s: float = 900.0,
        max_episodes: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if idle_timeout_s <= 0:
            raise ValueError("idle_timeout_s must be positive")
        self._open_fork = open_fork
        self.idle_timeout_s = idle_timeout_s
        self.max_episodes = max_episodes
        self._clock = clock
        self._episodes: dict[str, _Episode] = {}
        self._lock = threading.Lock()

    def conn(self, episode_id: str) -> sqlite3.Connection:
        """The episode's connection, forking the world on its first use."""
        now = self._clock()
        with self._lock:
            episode = self._episodes.get(episode_id)
            if episode is None:
                if len(self._episodes) >= self.max_episodes:
                    self._sweep_locked(now)
                if len(self._episodes) >= self.max_episodes:
                    raise EpisodeError(
                        f"too many open episodes ({self.max_episodes}); end finished ones first"
                    )
                episode = _Episode(self._open_fork(), now)
                self._episodes[episode_id] = episode
            episode.last_used = now
            episode.calls += 1
            return episode.fork.conn

    def end(self, episode_id: str) -> bool:
        """Free the episode's fork; False when there was none."""
        with self._lock:
            episode = self._episodes.pop(episode_id, None)
        if episode is None:
            return False
        episode.fork.close()
        return True

    def sweep(self) -> list[str]:
        """Free every episode idle longer than the timeout; returns their ids."""
        with self._lock:
            return self._sweep_locked(self._clock())

    def _sweep_locked(self, now: float) -> list[str]:
        idle = [eid for eid, ep in self._episodes.items() if now - ep.last_used > self.idle_timeout_s]
        for eid in idle:
            self._episodes.pop(eid).fork.close()
        return idle

    def close_all(self) -> None:
        with self._lock:
            episodes, self._episodes = self._episodes, {}
        for episode in episodes.values():
            episode.fork.close()

    def ids(self) -> list[str]:
        with self._lock:
            return sorted(self._episodes)

    def __len__(self) -> int:
        return len(self._episodes)
