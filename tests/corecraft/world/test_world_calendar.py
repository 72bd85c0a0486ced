"""Business-day arithmetic: the week-at-a-time version equals counting weekdays one by one."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from corecraft.world.calendar import add_business_days


def count_weekdays(start: dt.date, days: int) -> dt.date:
    day = start
    while days > 0:
        day += dt.timedelta(days=1)
        if day.weekday() < 5:
            days -= 1
    return day


@given(st.dates(min_value=dt.date(2000, 1, 1), max_value=dt.date(2100, 1, 1)), st.integers(-3, 60))
def test_equals_counting_weekdays_one_by_one(start: dt.date, days: int) -> None:
    assert add_business_days(start, days) == count_weekdays(start, days)


def test_known_dates() -> None:
    friday, saturday = dt.date(2026, 11, 27), dt.date(2026, 11, 28)
    assert add_business_days(friday, 1) == dt.date(2026, 11, 30)  # Monday
    assert add_business_days(saturday, 1) == dt.date(2026, 11, 30)
    assert add_business_days(saturday, 5) == dt.date(2026, 12, 4)  # the next Friday
    assert add_business_days(saturday, 0) == saturday
