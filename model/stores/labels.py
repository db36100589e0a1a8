"""An operator's verdict on one inspection, recorded where the workers record: the one path
`model.label` and the review station share (last label wins; a label for an event not recorded
yet is kept and applied when the inspection arrives).

A failure says what to do in one line (`LabelError`); the label is then not recorded, and
nothing else changed.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from model.core.clock import utc_now
from model.stores.records import RecordStore
from model.stores.sql import RecordStoreUnavailable, safe_url
from schemas.records import Label, LabelOutcome


class LabelError(RuntimeError):
    """The label could not be recorded; the message says why and what to do."""


def record_label(
    url: str,
    event_id: str,
    label: Label,
    *,
    by: str,
    note: str | None = None,
    at: datetime | None = None,
) -> LabelOutcome:
    """Record `label` for `event_id` in the database at `url`; 'applied', 'pending' (no
    inspection recorded yet: kept) or 'superseded' (a later label is already recorded)."""
    missing = _missing_sqlite_file(url)
    if missing is not None:
        # Opening it would create an empty file and then fail on the missing tables.
        raise LabelError(
            f"no database at {missing.resolve()}: the worker creates it when it starts "
            "(or run `alembic upgrade head`); pass --database-url or set GRAD_DATABASE_URL"
        )
    try:
        with RecordStore(url) as store:
            return store.label(event_id, label, by=by, note=note, at=at or utc_now())
    except RecordStoreUnavailable as exc:
        raise LabelError(f"cannot reach the database: {exc}") from exc
    except (sa_exc.OperationalError, sa_exc.ProgrammingError) as exc:
        raise LabelError(
            f"the database {safe_url(url)} has no inspection tables (run `alembic upgrade head`):"
            f" {str(exc.orig).strip().splitlines()[0]}"
        ) from exc


def _missing_sqlite_file(url: str) -> Path | None:
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or u.database in (None, "", ":memory:"):
        return None
    path = Path(u.database)
    return None if path.exists() else path
