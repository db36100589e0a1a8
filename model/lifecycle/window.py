"""Time windows on the command line: `--since 7d`, `--until 12h`, or ISO 8601 dates and times.

A duration (`90s`, `30m`, `12h`, `7d`, `2w`, or combined: `1d12h`) counts back from now. A
date (`2026-11-01`) means its midnight UTC. A date and time must carry its zone
(`2026-11-01T06:00+01:00`, or `Z`): a naive time in an audit trail is a time nobody can
interpret, so it is refused rather than guessed.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

from model.core.clock import utc_now

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^(?:\d+[smhdw])+$")
_PART = re.compile(r"(\d+)([smhdw])")


class WindowError(ValueError):
    """A time or window the command line cannot use."""


def parse_duration(text: str) -> timedelta:
    """`12h`, `7d`, `2w`, `1d12h` ... as a timedelta (units s, m, h, d, w)."""
    t = text.strip().lower()
    if not _DURATION.match(t):
        raise WindowError(
            f"not a duration: {text!r} (use a number and a unit s, m, h, d or w: 12h, 7d, 2w)"
        )
    seconds = sum(int(n) * _UNITS[u] for n, u in _PART.findall(t))
    if seconds <= 0:
        raise WindowError(f"a duration must be positive, got {text!r}")
    return timedelta(seconds=seconds)


def parse_time(text: str, now: datetime) -> datetime:
    """A point in time: a duration before `now`, an ISO date (midnight UTC), or an ISO date and
    time with its zone. Always zone-aware."""
    t = text.strip()
    if not t:
        raise WindowError("empty time")
    if _DURATION.match(t.lower()):
        return now - parse_duration(t)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", t):
        try:
            d = date.fromisoformat(t)
        except ValueError as exc:
            raise WindowError(f"not a date: {text!r}") from exc
        return datetime(d.year, d.month, d.day, tzinfo=timezone.utc)
    iso = t[:-1] + "+00:00" if t[-1:] in ("Z", "z") else t  # Python 3.10 reads no "Z"
    try:
        at = datetime.fromisoformat(iso)
    except ValueError as exc:
        raise WindowError(
            f"not a duration or ISO 8601 time: {text!r} (e.g. 7d, 2026-11-01, "
            "2026-11-01T06:00+01:00)"
        ) from exc
    if at.utcoffset() is None:
        raise WindowError(f"give the time zone too, e.g. {t}+00:00 or {t}Z")
    return at


def resolve_window(
    since: str, until: str | None = None, now: datetime | None = None
) -> tuple[datetime, datetime]:
    """(start, end) in UTC; `until` defaults to now. Refuses an empty or inverted window and a
    start in the future."""
    now = now or utc_now()
    if now.utcoffset() is None:
        raise WindowError("now must carry a time zone")
    start = parse_time(since, now).astimezone(timezone.utc)
    end = (parse_time(until, now) if until else now).astimezone(timezone.utc)
    if start >= end:
        raise WindowError(f"the window is empty: --since {start.isoformat()} is not before "
                          f"--until {end.isoformat()}")  # fmt: skip
    if start > now:
        raise WindowError(f"--since {start.isoformat()} lies in the future")
    return start, end
