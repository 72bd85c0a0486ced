"""Business-day arithmetic shared by the world generator (promised delivery dates) and the shipping tool."""

from __future__ import annotations

import datetime as dt
import functools


@functools.lru_cache(maxsize=4096)  # pure; a shipping quote asks it once per carrier service, for the same few dates
def add_business_days(start: dt.date, days: int) -> dt.date:
    """The ``days``-th weekday after ``start`` (``start`` itself when ``days`` <= 0); no holidays.

    Whole weeks are added at once: from a weekday, 5 business days are exactly one week. A weekend start is
    first moved back to its Friday, which has the same next business day.
    """
    if days <= 0:
        return start
    day = start - dt.timedelta(days=max(0, start.weekday() - 4))
    weeks, rest = divmod(days, 5)
    day += dt.timedelta(weeks=weeks)
    while rest:
        day += dt.timedelta(days=1)
        if day.weekday() < 5:
            rest -= 1
    return day
