"""The SQL schema: what the worker records and what retraining and audits read back.

SQLAlchemy 2 declarative models, portable between PostgreSQL (production) and SQLite (the
embedded default). Alembic's migrations in `migrations/` build exactly this schema; a test
compares the two, so a change here needs a new revision there (`alembic revision
--autogenerate -m "..."`).

Choices that hold for every table:

- Times are stored in UTC and always come back time-zone aware (`UTCDateTime`): SQLite has no
  zone-aware type, and a naive time in an audit trail is a time nobody can interpret.
- Enum-like columns (a label, a status) are short strings with a CHECK constraint rather than
  database enums: the same on both databases, and a new value is a plain constraint change.
- Free-form structures (statistics, metrics, gate decisions) are JSON; they are read whole and
  never queried inside.
- Constraint and index names come from one naming convention, so every database gets the same
  names and a migration can address them.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from schemas.limits import (
    EVENT_ID_LENGTH,
    NAME_LENGTH,
    NOTE_LENGTH,
    PERSON_LENGTH,
    URI_LENGTH,
    VERSION_LENGTH,
)

LABELS = ("normal", "anomalous")
MODEL_STATUSES = ("candidate", "active", "retired")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# The review station's queue order (worker.review.queue): a label teaches most where the model
# was least sure, so parts within REVIEW_BAND of their threshold on the confidence scale (0.5 at
# the threshold) come first, nearest first, then flagged parts, then the rest. One SQL text for
# the index and the query, so the database's planner can match one to the other.
REVIEW_BAND = 0.25
REVIEW_PRIORITY_SQL = (
    f"CASE WHEN abs(confidence - 0.5) <= {REVIEW_BAND} THEN 0.0"
    " WHEN is_anomalous THEN 1.0 ELSE 2.0 END + abs(confidence - 0.5)"
)


# A labelled mistake: flagged but labelled normal (a false alarm), or passed but labelled
# anomalous (a miss). The class page lists them from a partial index on exactly this.
MISTAKE_SQL = "(is_anomalous AND label = 'normal') OR (NOT is_anomalous AND label = 'anomalous')"


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class UTCDateTime(TypeDecorator[datetime]):
    """A zone-aware time stored as UTC; refuses naive times rather than guess their zone.

    PostgreSQL keeps it as `timestamp with time zone`; SQLite as text in one fixed UTC format,
    so comparing two stored times in SQL (`labelled_at < ...`) orders them correctly.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: give it a time zone")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base; `Base.metadata` is what Alembic compares the migrations against."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}  # noqa: RUF012


metadata = Base.metadata


class Inspection(Base):
    """One row per inspected image, keyed by the event id (the worker upserts on it).

    What the line saw (`captured_at`), what the model said (score, threshold, verdict, the
    version that scored it, a heatmap reference) and, once a quality engineer has looked, what a
    person says it was (`label`, by whom, when). Retraining selects verified-normal images from
    here; an audit reads who decided what.

    There is no foreign key to `model_versions`: a worker must be able to record a result even
    when the model that scored it was loaded from a file nobody registered, and a lost
    registration must never block the line.
    """

    __tablename__ = "inspections"
    __table_args__ = (
        CheckConstraint(_in("label", LABELS), name="label"),
        # Retraining: "this class's images processed since T", and "all images since T".
        Index("ix_inspections_product_class_processed_at", "product_class", "processed_at"),
        Index("ix_inspections_processed_at", "processed_at"),
        # Review: "the labelled ones" (and the unlabelled, to queue them).
        Index("ix_inspections_label", "label"),
        Index("ix_inspections_model_version", "model_version"),
        # Review: the unlabelled queue in its order, paged by (priority, event id).
        Index(
            "ix_inspections_review_queue",
            text(f"({REVIEW_PRIORITY_SQL})"),
            "event_id",
            postgresql_where=text("label IS NULL"),
            sqlite_where=text("label IS NULL"),
        ),
        # Review, class page: one class under one model in a window, answered from the index.
        Index(
            "ix_inspections_class_window",
            "product_class",
            "model_version",
            "processed_at",
            postgresql_include=["confidence", "is_anomalous", "label"],
        ),
        Index(
            "ix_inspections_mistakes",
            "product_class",
            "model_version",
            "processed_at",
            postgresql_where=text(MISTAKE_SQL),
            sqlite_where=text(MISTAKE_SQL),
        ),
    )

    event_id: Mapped[str] = mapped_column(String(EVENT_ID_LENGTH), primary_key=True)
    line: Mapped[str] = mapped_column(String(NAME_LENGTH))
    station: Mapped[str] = mapped_column(String(NAME_LENGTH))
    product_class: Mapped[str] = mapped_column(String(NAME_LENGTH))
    captured_at: Mapped[datetime] = mapped_column(doc="when the camera took the image")
    processed_at: Mapped[datetime] = mapped_column(doc="when the worker scored it")
    # Inline (base64) images have no URI: they cannot be re-read, so retraining skips them.
    image_uri: Mapped[str | None] = mapped_column(String(URI_LENGTH))
    heatmap_uri: Mapped[str] = mapped_column(String(URI_LENGTH))
    score: Mapped[float] = mapped_column(Double, doc="raw image score")
    threshold: Mapped[float] = mapped_column(Double)
    confidence: Mapped[float] = mapped_column(Double, doc="0.5 at the threshold")
    is_anomalous: Mapped[bool]
    calibrated: Mapped[bool] = mapped_column(doc="false: scored against the global threshold")
    # None on rows recorded before results carried it.
    threshold_steady: Mapped[bool | None] = mapped_column(
        doc="false: a provisional threshold (global, or from fewer than 20 normal images)"
    )
    model_version: Mapped[str] = mapped_column(String(VERSION_LENGTH))
    # Operator feedback: all four set together, or none.
    label: Mapped[str | None] = mapped_column(String(16), doc="'normal' or 'anomalous'")
    labelled_by: Mapped[str | None] = mapped_column(String(PERSON_LENGTH))
    labelled_at: Mapped[datetime | None]
    label_note: Mapped[str | None] = mapped_column(String(NOTE_LENGTH))
    # What the reviewer sees beside the verdict: the event's free attributes as sent, and the
    # result's stage timings. None on rows recorded before they were kept.
    attributes: Mapped[dict[str, Any] | None] = mapped_column(doc="the event's attributes")
    timings: Mapped[dict[str, Any] | None] = mapped_column(doc="StageTimings, milliseconds")


class ModelVersion(Base):
    """A trained model, by content id (`grad-<hash>`, the checkpoint's version).

    Lineage (`parent_version`), what it learned from (training window, images per class), how
    it measured (`metrics`), and its life: `candidate` after training, `active` once promoted
    (at most one at a time, enforced by a partial unique index), `retired` when replaced. The
    gate decision keeps why a promotion was or was not made.
    """

    __tablename__ = "model_versions"
    __table_args__ = (
        CheckConstraint(_in("status", MODEL_STATUSES), name="status"),
        Index(
            "uq_model_versions_one_active",
            "status",
            unique=True,
            sqlite_where=text("status = 'active'"),
            postgresql_where=text("status = 'active'"),
        ),
    )

    version: Mapped[str] = mapped_column(String(VERSION_LENGTH), primary_key=True)
    artifact_uri: Mapped[str] = mapped_column(String(URI_LENGTH), doc="where the checkpoint is")
    parent_version: Mapped[str | None] = mapped_column(
        String(VERSION_LENGTH), ForeignKey("model_versions.version"), doc="fine-tuned from"
    )
    created_at: Mapped[datetime]
    train_window_start: Mapped[datetime | None] = mapped_column(doc="oldest image trained on")
    train_window_end: Mapped[datetime | None] = mapped_column(doc="newest image trained on")
    images_per_class: Mapped[dict[str, Any]] = mapped_column(doc="class -> training images")
    metrics: Mapped[dict[str, Any]] = mapped_column(doc="evaluation figures, free form")
    status: Mapped[str] = mapped_column(String(16), doc="'candidate', 'active' or 'retired'")
    promoted_at: Mapped[datetime | None]
    promoted_by: Mapped[str | None] = mapped_column(String(PERSON_LENGTH), doc="person or job")
    gate_decision: Mapped[dict[str, Any] | None] = mapped_column(
        doc="the promotion gate's comparison with the active version, and its verdict"
    )


class Calibration(Base):
    """A product class's decision state under one model version, as set at one time.

    A class is recalibrated (a new target false-positive rate, more normal images) without a
    new model, so the history is kept: the latest row per (class, version) is the one in
    force. `statistics` holds what `schemas.model_state.ClassCalibration` holds beside the
    threshold (mean, std, median, q99, max, n_images, method, scale).
    """

    __tablename__ = "class_calibrations"
    __table_args__ = (UniqueConstraint("product_class", "model_version", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    product_class: Mapped[str] = mapped_column(String(NAME_LENGTH))
    model_version: Mapped[str] = mapped_column(
        String(VERSION_LENGTH), ForeignKey("model_versions.version"), index=True
    )
    threshold: Mapped[float] = mapped_column(Double)
    statistics: Mapped[dict[str, Any]]
    target_fpr: Mapped[float] = mapped_column(Double)
    created_at: Mapped[datetime]


class PendingLabel(Base):
    """An operator label that arrived before its inspection row (never silently dropped).

    Feedback can overtake a result (the worker is behind, or the label came from the line
    itself). The label waits here, one per event id (the latest `labelled_at` wins), and is
    moved onto the inspection row, then deleted, in the transaction that records the
    inspection.
    """

    __tablename__ = "pending_labels"
    __table_args__ = (CheckConstraint(_in("label", LABELS), name="label"),)

    event_id: Mapped[str] = mapped_column(String(EVENT_ID_LENGTH), primary_key=True)
    label: Mapped[str] = mapped_column(String(16))
    labelled_by: Mapped[str] = mapped_column(String(PERSON_LENGTH))
    labelled_at: Mapped[datetime]
    note: Mapped[str | None] = mapped_column(String(NOTE_LENGTH))
    received_at: Mapped[datetime] = mapped_column(doc="when the database got it")


class InFlight(Base):
    """Which records of a partition a worker is processing right now: the crash-loop breaker's
    marker (`worker.breaker`).

    Written before a polled record is fetched, decoded or scored; never cleared, because the
    committed offset already tells a stale marker from a live one. A worker that is given a
    partition and finds its committed offset inside the marked range knows that the previous
    owner died with those records in flight (killed for memory, a segfault in a native library).
    It lives here, not in the worker's memory or Redis, because it must outlive the process
    that wrote it and be seen by whichever member of the group takes the partition next.
    """

    __tablename__ = "in_flight"

    consumer_group: Mapped[str] = mapped_column(String(255), primary_key=True)
    topic: Mapped[str] = mapped_column(String(255), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    first_offset: Mapped[int] = mapped_column(BigInteger)
    last_offset: Mapped[int] = mapped_column(BigInteger)
    crashes: Mapped[int] = mapped_column(
        Integer, doc="crashes the first record of the range was already in flight for"
    )
    suspect_last: Mapped[int] = mapped_column(
        BigInteger, doc="records up to here were in flight at an earlier crash: one at a time"
    )
    worker: Mapped[str] = mapped_column(String(255))
    updated_at: Mapped[datetime]
