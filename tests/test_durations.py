"""Windows on the command line: durations, ISO dates, and the mistakes refused."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from model.lifecycle.window import WindowError, parse_duration, parse_time, resolve_window

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("12h", timedelta(hours=12)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("1d12h", timedelta(days=1, hours=12)),
        (" 7D ", timedelta(days=7)),
    ],
)
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["7", "d", "7 days", "-7d", "0h", "1.5h", "7y", ""])
def test_bad_durations_are_refused(text):
    with pytest.raises(WindowError):
        parse_duration(text)


def test_times_durations_dates_and_zones():
    assert parse_time("7d", NOW) == NOW - timedelta(days=7)
    assert parse_time("2026-11-01", NOW) == datetime(2026, 11, 1, tzinfo=timezone.utc)
    cet = parse_time("2026-11-01T06:00+01:00", NOW)
    assert cet == datetime(2026, 11, 1, 5, 0, tzinfo=timezone.utc)
    assert parse_time("2026-11-01T05:00:00Z", NOW) == cet
    with pytest.raises(WindowError, match="time zone"):
        parse_time("2026-11-01T06:00", NOW)  # a naive time is refused, not guessed
    with pytest.raises(WindowError):
        parse_time("2026-13-01", NOW)
    with pytest.raises(WindowError):
        parse_time("last tuesday", NOW)


def test_windows():
    assert resolve_window("7d", None, NOW) == (NOW - timedelta(days=7), NOW)
    start, end = resolve_window("2026-11-20", "1d", NOW)
    assert (start, end) == (datetime(2026, 11, 20, tzinfo=timezone.utc), NOW - timedelta(days=1))
    assert start.tzinfo is not None and end.tzinfo is not None
    with pytest.raises(WindowError, match="empty"):
        resolve_window("1d", "2d", NOW)
    with pytest.raises(WindowError, match="future"):
        resolve_window("2026-12-24", "2026-12-25", NOW)
