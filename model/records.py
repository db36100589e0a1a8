"""The SQL record of inspections, operator labels, model versions and calibrations.

`RecordStore(url)` is the one door to the database for the worker, the retrain job and the
label CLI. PostgreSQL in production (`postgresql+psycopg://...`, psycopg 3; a plain
`postgresql://` URL means the same), a SQLite file as the embedded default
(`sqlite:///inspections.sqlite3`). The schema is `schemas.tables`, built by the Alembic
migrations in `migrations/`: `migrate(url)` runs them.

Failures come in two kinds. `RecordStoreUnavailable`: the database cannot be reached, the
connection dropped, it is locked or busy; nothing was written, and the same call can simply be
retried later (the worker backs off and stops committing offsets meanwhile). Anything else
(an integrity error, a missing table, a bug) propagates unchanged: retrying would not help.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    case,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url

from schemas.model_state import ClassCalibration
from schemas.records import (
    CalibrationRecord,
    InspectionRecord,
    Label,
    LabelOutcome,
    ModelVersionRecord,
    calibration_statistics,
)
from schemas.tables import LABELS, Calibration, InFlight, Inspection, ModelVersion, PendingLabel

if TYPE_CHECKING:
    from alembic.config import Config

REPO_ROOT = Path(__file__).resolve().parents[1]
ALEMBIC_INI = REPO_ROOT / "alembic.ini"
MIGRATIONS_DIR = REPO_ROOT / "migrations"

DEFAULT_URL = "sqlite:///inspections.sqlite3"

# PostgreSQL: one advisory-lock key guarding "is there an inspection row for this event id?".
# Upserts take it shared (they never wait for each other), `label` exclusive, so a label and the
# inspection it belongs to cannot pass each other unseen (the label left pending forever).
_LABEL_LOCK_KEY = 0x67726164  # "grad"
# Ids per IN (...) list: far below SQLite's and PostgreSQL's bound-parameter limits.
_CHUNK = 500

_INSPECTION_COLUMNS = tuple(c.name for c in Inspection.__table__.columns)
_LABEL_COLUMNS = ("label", "labelled_by", "labelled_at", "label_note")


class RecordStoreUnavailable(RuntimeError):
    """The database cannot be reached, or dropped the connection, or is busy; retry later.

    Each call is one transaction, so the failed call happened whole or not at all; when the
    connection dropped during the commit itself, nobody can tell which. Every write here is
    idempotent, so retrying the same call is always safe.
    """


def database_url(url: str | URL) -> URL:
    """The URL as SQLAlchemy should use it: PostgreSQL through psycopg 3 unless told otherwise."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u


def safe_url(url: str | URL) -> str:
    """The URL for messages and logs: password hidden."""
    return make_url(url).render_as_string(hide_password=True)


# SQLite reports these as OperationalError although they are mistakes in the program or the
# schema (a database nobody migrated), not outages: they propagate instead of being retried.
_SQLITE_PROGRAMMING = ("no such table", "no such column", "has no column", "syntax error")


def is_unavailable(exc: BaseException) -> bool:
    """True for a failure that retrying later can fix: unreachable, disconnected, locked, busy."""
    if isinstance(exc, sa_exc.TimeoutError):  # no connection free in the pool in time
        return True
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    if exc.connection_invalidated or isinstance(exc, sa_exc.InterfaceError):
        return True
    if isinstance(exc, sa_exc.OperationalError):
        message = str(exc.orig).lower()
        return not any(m in message for m in _SQLITE_PROGRAMMING)
    return False


@contextmanager
def _translate_errors(url: URL) -> Iterator[None]:
    try:
        yield
    except (sa_exc.DBAPIError, sa_exc.TimeoutError) as exc:
        if is_unavailable(exc):
            detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            raise RecordStoreUnavailable(
                f"database {safe_url(url)} unavailable: {detail[0] if detail else exc!r}"
            ) from exc
        raise


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _aware(at: datetime | None, name: str) -> datetime:
    if at is None:
        return _now()
    if at.utcoffset() is None:
        raise ValueError(f"{name} must carry a time zone, got {at!r}")
    return at


def make_engine(url: str | URL, *, connect_timeout_s: float = 5.0, echo: bool = False) -> Engine:
    """An engine set up for the worker's use of the database.

    SQLite: WAL journal (readers never block the writer), `synchronous=FULL` (a committed row
    survives a power cut: offsets are committed on the strength of it), foreign keys enforced,
    and a busy timeout; write transactions start with BEGIN IMMEDIATE so two writers queue on
    the busy timeout instead of failing on a lock upgrade. PostgreSQL: a connect timeout and
    TCP keepalives, so an outage or a dropped connection surfaces in seconds, not minutes.
    Every checkout is pinged first (`pool_pre_ping`), so a connection that died while idle is
    replaced instead of failing the next write.
    """
    u = database_url(url)
    backend = u.get_backend_name()
    connect_args: dict[str, Any] = {}
    if backend == "sqlite":
        connect_args["timeout"] = connect_timeout_s  # sqlite3's busy timeout, in seconds
    elif backend == "postgresql":
        timeout = max(2, round(connect_timeout_s))  # libpq: whole seconds, at least 2
        connect_args.update(
            connect_timeout=timeout,
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
            # Unacknowledged data for this long means the server is gone (Linux only).
            tcp_user_timeout=30_000,
            application_name="grad-inspect",
        )
    engine = create_engine(u, pool_pre_ping=True, connect_args=connect_args, echo=echo)
    if backend == "sqlite":
        busy_ms = int(connect_timeout_s * 1000)

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
            # Take transaction control from the sqlite3 module (it would BEGIN too late and
            # never for a SELECT); SQLAlchemy's "begin" event below emits BEGIN instead.
            dbapi_connection.isolation_level = None
            cur = dbapi_connection.cursor()
            try:
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=FULL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute(f"PRAGMA busy_timeout={busy_ms}")
            finally:
                cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            immediate = conn.get_execution_options().get("grad_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def alembic_config(url: str | URL) -> Config:
    """Alembic's configuration for `url`: the repository's alembic.ini and migrations/, the
    caller's logging left alone. For `alembic.command.*` (upgrade, downgrade, check)."""
    from alembic.config import Config

    cfg = Config(str(ALEMBIC_INI)) if ALEMBIC_INI.is_file() else Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["url"] = database_url(url).render_as_string(hide_password=False)
    cfg.attributes["configure_logging"] = False  # leave the host program's logging alone
    return cfg


def migrate(url: str | URL, revision: str = "head") -> None:
    """`alembic upgrade <revision>` on `url`, from any working directory.

    Finds `alembic.ini` and `migrations/` beside the packages (an editable install or a
    checkout). Raises `RecordStoreUnavailable` when the database cannot be reached.
    """
    from alembic import command

    if not MIGRATIONS_DIR.is_dir():
        raise FileNotFoundError(
            f"no migrations at {MIGRATIONS_DIR}: run from a checkout or an editable install"
        )
    with _translate_errors(database_url(url)):
        command.upgrade(alembic_config(url), revision)


class RecordStore:
    """Inspections, labels, model versions and calibrations in one SQL database.

    Every method is one transaction: it either happens whole or raises. Thread-safe (one
    connection per call, from a pool). The schema must exist: `migrate(url)` first.
    """

    def __init__(self, url: str, *, connect_timeout_s: float = 5.0, echo: bool = False) -> None:
        self.url = database_url(url)
        self.engine = make_engine(self.url, connect_timeout_s=connect_timeout_s, echo=echo)
        self.dialect = self.engine.dialect.name

    def __repr__(self) -> str:
        return f"RecordStore({safe_url(self.url)!r})"

    def close(self) -> None:
        """Close every pooled connection (a later call opens new ones)."""
        self.engine.dispose()

    def __enter__(self) -> RecordStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions -------------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with _translate_errors(self.url), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _write(self, label_lock: str | None = None) -> Iterator[Connection]:
        """A write transaction; `label_lock` 'shared' or 'exclusive' orders it against labels."""
        with _translate_errors(self.url), self.engine.connect() as conn:
            conn.execution_options(grad_write=True)
            with conn.begin():
                if label_lock is not None and self.dialect == "postgresql":
                    shared = "_shared" if label_lock == "shared" else ""
                    lock = text(f"SELECT pg_advisory_xact_lock{shared}(:key)")
                    conn.execute(lock, {"key": _LABEL_LOCK_KEY})
                yield conn

    def _insert(self, table: Any) -> Any:
        if self.dialect == "postgresql":
            return postgresql.insert(table)
        if self.dialect == "sqlite":
            return sqlite.insert(table)
        raise NotImplementedError(f"upserts on {self.dialect} are not implemented")

    # -- health -------------------------------------------------------------------------------

    def ping(self) -> None:
        """Raises `RecordStoreUnavailable` unless the database answers a query now."""
        with self._read() as conn:
            conn.execute(select(1)).scalar_one()

    # -- in-flight markers (the worker's crash-loop breaker) ----------------------------------

    def mark_in_flight(self, group: str, markers: Sequence[Mapping[str, Any]], worker: str) -> None:
        """Upsert one marker per (topic, partition): keys `topic`, `partition`, `first_offset`,
        `last_offset`, `crashes`, `suspect_last` (see `schemas.tables.InFlight`)."""
        if not markers:
            return
        now = _now()
        rows = [
            {**m, "consumer_group": group, "worker": worker, "updated_at": now} for m in markers
        ]
        table = InFlight.__table__
        stmt = self._insert(table)
        keys = ("consumer_group", "topic", "partition")
        stmt = stmt.on_conflict_do_update(
            index_elements=[table.c[k] for k in keys],
            set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys},
        )
        with self._write() as conn:
            conn.execute(stmt, rows)

    def in_flight(self, group: str, topic: str, partition: int) -> dict[str, Any] | None:
        """The marker last written for a partition, as a dict of its columns, or None."""
        table = InFlight.__table__
        with self._read() as conn:
            row = conn.execute(
                select(table).where(
                    table.c.consumer_group == group,
                    table.c.topic == topic,
                    table.c.partition == partition,
                )
            ).first()
        return None if row is None else dict(row._mapping)

    # -- inspections --------------------------------------------------------------------------

    def upsert_inspections(self, records: Sequence[InspectionRecord]) -> None:
        """Insert or update inspection rows by event id, in one transaction, then apply any
        labels that were waiting for these events.

        Idempotent: the same records twice leave the same rows. An update never erases an
        operator label already on the row; a record that carries a label replaces the row's
        only if its `labelled_at` is not older. Of several records with one event id in the
        same call, the last counts.
        """
        latest: dict[str, InspectionRecord] = {}
        for r in records:
            latest.pop(r.event_id, None)
            latest[r.event_id] = r
        if not latest:
            return
        rows = [r.model_dump() for r in latest.values()]
        table = Inspection.__table__
        stmt = self._insert(table)
        ex = stmt.excluded
        incoming_wins = and_(
            ex.label.is_not(None),
            or_(table.c.labelled_at.is_(None), ex.labelled_at >= table.c.labelled_at),
        )
        set_: dict[str, Any] = {
            c: ex[c] for c in _INSPECTION_COLUMNS if c != "event_id" and c not in _LABEL_COLUMNS
        }
        set_.update({c: case((incoming_wins, ex[c]), else_=table.c[c]) for c in _LABEL_COLUMNS})
        stmt = stmt.on_conflict_do_update(index_elements=[table.c.event_id], set_=set_)
        with self._write(label_lock="shared") as conn:
            conn.execute(stmt, rows)
            ids = list(latest)
            for i in range(0, len(ids), _CHUNK):
                self._apply_pending(conn, ids[i : i + _CHUNK])

    def _apply_pending(self, conn: Connection, ids: list[str]) -> None:
        pending_t = PendingLabel.__table__
        insp = Inspection.__table__
        waiting = conn.execute(select(pending_t).where(pending_t.c.event_id.in_(ids))).all()
        for p in waiting:
            conn.execute(
                update(insp)
                .where(
                    insp.c.event_id == p.event_id,
                    or_(insp.c.labelled_at.is_(None), insp.c.labelled_at <= p.labelled_at),
                )
                .values(
                    label=p.label,
                    labelled_by=p.labelled_by,
                    labelled_at=p.labelled_at,
                    label_note=p.note,
                )
            )
        if waiting:
            conn.execute(
                delete(pending_t).where(pending_t.c.event_id.in_([p.event_id for p in waiting]))
            )

    def label(
        self,
        event_id: str,
        label: Label,
        by: str,
        note: str | None = None,
        at: datetime | None = None,
    ) -> LabelOutcome:
        """Record an operator's verdict on one event.

        'applied': set on the inspection row. 'pending': no inspection recorded yet; the label
        is kept and applied when it arrives (a later label for the same id replaces it).
        'superseded': a label given later (`labelled_at` newer than `at`) is already recorded,
        so this one changes nothing: the last label given wins, whatever order they arrive in.
        `at` defaults to now; it must carry a time zone.
        """
        if label not in LABELS:
            raise ValueError(f"label must be one of {LABELS}, got {label!r}")
        if not by:
            raise ValueError("a label needs the name of who gave it")
        at = _aware(at, "at")
        insp = Inspection.__table__
        pending_t = PendingLabel.__table__
        with self._write(label_lock="exclusive") as conn:
            current = conn.execute(
                select(insp.c.labelled_at).where(insp.c.event_id == event_id)
            ).first()
            if current is not None:
                if current.labelled_at is not None and current.labelled_at > at:
                    return "superseded"
                conn.execute(
                    update(insp)
                    .where(insp.c.event_id == event_id)
                    .values(label=label, labelled_by=by, labelled_at=at, label_note=note)
                )
                return "applied"
            waiting = conn.execute(
                select(pending_t.c.labelled_at).where(pending_t.c.event_id == event_id)
            ).first()
            if waiting is not None and waiting.labelled_at > at:
                return "superseded"
            values = {
                "event_id": event_id,
                "label": label,
                "labelled_by": by,
                "labelled_at": at,
                "note": note,
                "received_at": _now(),
            }
            stmt = self._insert(pending_t).values(values)
            stmt = stmt.on_conflict_do_update(
                index_elements=[pending_t.c.event_id],
                set_={k: stmt.excluded[k] for k in values if k != "event_id"},
            )
            conn.execute(stmt)
            return "pending"

    def get(self, event_id: str) -> InspectionRecord | None:
        """The inspection row for an event id, or None."""
        with self._read() as conn:
            row = conn.execute(
                select(Inspection.__table__).where(Inspection.__table__.c.event_id == event_id)
            ).first()
        return None if row is None else InspectionRecord.model_validate(row._asdict())

    def count(self) -> int:
        """Inspection rows recorded."""
        with self._read() as conn:
            return conn.execute(select(func.count()).select_from(Inspection.__table__)).scalar_one()

    def pending_labels(self) -> dict[str, Label]:
        """Labels still waiting for their inspection, by event id."""
        t = PendingLabel.__table__
        with self._read() as conn:
            return {r.event_id: r.label for r in conn.execute(select(t.c.event_id, t.c.label))}

    # -- model versions and calibrations ------------------------------------------------------

    def record_model_version(
        self,
        version: str,
        artifact_uri: str,
        *,
        parent_version: str | None = None,
        created_at: datetime | None = None,
        train_window_start: datetime | None = None,
        train_window_end: datetime | None = None,
        images_per_class: Mapping[str, int] | None = None,
        metrics: Mapping[str, Any] | None = None,
        gate_decision: Mapping[str, Any] | None = None,
    ) -> ModelVersionRecord:
        """Register a trained model as a 'candidate' (idempotent on `version`).

        Recording a known version again updates what it says about itself (artifact, lineage,
        window, figures, gate decision: the arguments given, not None) and leaves its status,
        promotion and creation time as they are.
        """
        t = ModelVersion.__table__
        values: dict[str, Any] = {
            "version": version,
            "artifact_uri": artifact_uri,
            "parent_version": parent_version,
            "created_at": _aware(created_at, "created_at"),
            "train_window_start": train_window_start,
            "train_window_end": train_window_end,
            "images_per_class": dict(images_per_class or {}),
            "metrics": dict(metrics or {}),
            "status": "candidate",
            "gate_decision": None if gate_decision is None else dict(gate_decision),
        }
        given = {
            "artifact_uri": artifact_uri,
            "parent_version": parent_version,
            "train_window_start": train_window_start,
            "train_window_end": train_window_end,
            "images_per_class": images_per_class,
            "metrics": metrics,
            "gate_decision": gate_decision,
        }
        stmt = self._insert(t).values(values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[t.c.version],
            set_={k: stmt.excluded[k] for k, v in given.items() if v is not None},
        )
        with self._write() as conn:
            conn.execute(stmt)
            row = conn.execute(select(t).where(t.c.version == version)).one()
        return ModelVersionRecord.model_validate(row._asdict())

    def set_active(
        self,
        version: str,
        by: str,
        *,
        at: datetime | None = None,
        gate_decision: Mapping[str, Any] | None = None,
    ) -> None:
        """Promote a recorded version: it becomes 'active', the one active before 'retired'.

        Raises `LookupError` for a version never recorded. Promoting the active version again
        changes nothing but `promoted_at`/`promoted_by` (and the gate decision, if given).
        """
        t = ModelVersion.__table__
        values: dict[str, Any] = {
            "status": "active",
            "promoted_at": _aware(at, "at"),
            "promoted_by": by,
        }
        if gate_decision is not None:
            values["gate_decision"] = dict(gate_decision)
        with self._write() as conn:
            if conn.execute(select(t.c.version).where(t.c.version == version)).first() is None:
                raise LookupError(f"model version {version!r} is not recorded")
            conn.execute(
                update(t)
                .where(t.c.status == "active", t.c.version != version)
                .values(status="retired")
            )
            conn.execute(update(t).where(t.c.version == version).values(values))

    def active_version(self) -> str | None:
        """The version currently 'active', or None before the first promotion."""
        t = ModelVersion.__table__
        with self._read() as conn:
            return conn.execute(select(t.c.version).where(t.c.status == "active")).scalar()

    def model_versions(self) -> list[ModelVersionRecord]:
        """Every recorded version, oldest first."""
        t = ModelVersion.__table__
        with self._read() as conn:
            rows = conn.execute(select(t).order_by(t.c.created_at, t.c.version)).all()
        return [ModelVersionRecord.model_validate(r._asdict()) for r in rows]

    def record_calibration(
        self,
        model_version: str,
        product_class: str,
        calibration: ClassCalibration,
        *,
        at: datetime | None = None,
    ) -> None:
        """Record a class's calibration under a recorded model version, as of `at` (now).

        Idempotent on (class, version, at). The model version must be recorded first (a
        foreign key; `sqlalchemy.exc.IntegrityError` otherwise).
        """
        t = Calibration.__table__
        values = {
            "product_class": product_class,
            "model_version": model_version,
            "threshold": calibration.threshold,
            "target_fpr": calibration.target_fpr,
            "statistics": calibration_statistics(calibration),
            "created_at": _aware(at, "at"),
        }
        stmt = self._insert(t).values(values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[t.c.product_class, t.c.model_version, t.c.created_at],
            set_={k: stmt.excluded[k] for k in ("threshold", "target_fpr", "statistics")},
        )
        with self._write() as conn:
            conn.execute(stmt)

    def calibrations(self, model_version: str) -> dict[str, CalibrationRecord]:
        """The calibration in force per class under `model_version`: the latest recorded."""
        t = Calibration.__table__
        with self._read() as conn:
            rows = conn.execute(
                select(t).where(t.c.model_version == model_version).order_by(t.c.created_at)
            ).all()
        out: dict[str, CalibrationRecord] = {}
        for r in rows:  # oldest first: the latest per class overwrites
            out[r.product_class] = CalibrationRecord(
                product_class=r.product_class,
                model_version=r.model_version,
                created_at=r.created_at,
                calibration=ClassCalibration(
                    threshold=r.threshold, target_fpr=r.target_fpr, **r.statistics
                ),
            )
        return out

    # -- retraining: what a window of the record holds ------------------------------------------

    def window_counts(
        self, start: datetime, end: datetime, classes: Sequence[str] | None = None
    ) -> dict[str, dict[str, int]]:
        """Per product class, the inspections processed in [start, end]: all of them, labelled
        normal, labelled anomalous, unlabelled, and inline (no image URI to read back)."""
        t = Inspection.__table__

        def n(cond: Any) -> Any:
            return func.coalesce(func.sum(case((cond, 1), else_=0)), 0)

        stmt = (
            select(
                t.c.product_class,
                func.count().label("inspected"),
                n(t.c.label == "normal").label("labelled_normal"),
                n(t.c.label == "anomalous").label("labelled_anomalous"),
                n(t.c.label.is_(None)).label("unlabelled"),
                n(t.c.image_uri.is_(None)).label("inline"),
            )
            .where(
                t.c.processed_at >= _aware(start, "start"), t.c.processed_at <= _aware(end, "end")
            )
            .group_by(t.c.product_class)
            .order_by(t.c.product_class)
        )
        if classes is not None:
            stmt = stmt.where(t.c.product_class.in_(list(classes)))
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        keys = ("inspected", "labelled_normal", "labelled_anomalous", "unlabelled", "inline")
        return {r.product_class: {k: int(getattr(r, k)) for k in keys} for r in rows}

    def inspections_in_window(
        self,
        start: datetime,
        end: datetime,
        product_class: str,
        *,
        label: Label | None,
        calibrated_only: bool = False,
        max_score_ratio: float | None = None,
        with_image_uri: bool = False,
        limit: int | None = None,
    ) -> list[InspectionRecord]:
        """One class's inspections processed in [start, end], newest first.

        `label` "normal" or "anomalous" selects rows an operator labelled so, None the rows
        nobody labelled. `calibrated_only`: scored against the class's own calibration.
        `max_score_ratio=r`: score below r x the threshold the row was scored against.
        `with_image_uri`: leave out inline images (nothing to read back).
        """
        t = Inspection.__table__
        conds = [
            t.c.product_class == product_class,
            t.c.processed_at >= _aware(start, "start"),
            t.c.processed_at <= _aware(end, "end"),
            t.c.label.is_(None) if label is None else t.c.label == label,
        ]
        if calibrated_only:
            conds.append(t.c.calibrated.is_(True))
        if max_score_ratio is not None:
            conds.append(t.c.score < t.c.threshold * max_score_ratio)
        if with_image_uri:
            conds.append(t.c.image_uri.is_not(None))
        stmt = select(t).where(*conds).order_by(t.c.processed_at.desc(), t.c.event_id.desc())
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        return [InspectionRecord.model_validate(r._asdict()) for r in rows]

    def anomalous_image_uris(self, uris: Sequence[str]) -> set[str]:
        """Those of `uris` that an operator labelled anomalous in any inspection, at any time."""
        t = Inspection.__table__
        wanted = sorted(set(uris))
        out: set[str] = set()
        with self._read() as conn:
            for i in range(0, len(wanted), _CHUNK):
                chunk = wanted[i : i + _CHUNK]
                out.update(
                    conn.execute(
                        select(t.c.image_uri)
                        .where(t.c.image_uri.in_(chunk), t.c.label == "anomalous")
                        .distinct()
                    ).scalars()
                )
        return out

    def model_version(self, version: str) -> ModelVersionRecord | None:
        """One recorded version, or None."""
        t = ModelVersion.__table__
        with self._read() as conn:
            row = conn.execute(select(t).where(t.c.version == version)).first()
        return None if row is None else ModelVersionRecord.model_validate(row._asdict())
