"""The one clock of `model`: timezone-aware UTC, so that times from the worker, the retraining
and the database compare without guessing a zone."""

from __future__ import annotations

from datetime import datetime, timezone


def utc_now() -> datetime:
    """Now, in UTC, timezone-aware."""
    return datetime.now(timezone.utc)


def time_tag(at: datetime | None = None) -> str:
    """A compact UTC time that sorts as text (`20261202T073400Z`): names a run's folder."""
    return (at or utc_now()).astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
