"""The SQL record store on real databases (a SQLite file, and PostgreSQL): upserts that are
idempotent and keep labels, labels that wait for their inspection, model versions and
calibrations, and outages reported as `RecordStoreUnavailable`, never as silent loss."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text, update

from model.stores.migrations import migrate
from model.stores.records import RecordStore
from model.stores.sql import RecordStoreUnavailable
from schemas.model_state import ClassCalibration
from schemas.records import InspectionRecord
from schemas.tables import ModelVersion
from tests.databases import (
    BACKENDS,
    T0,
    PostgresServer,
    closed_port_url,
    database,
    make_result,
)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path):
    with database(request.param, tmp_path) as url:
        migrate(url)
        with RecordStore(url) as s:
            yield s


def rec(event_id: str, **kw) -> InspectionRecord:
    return InspectionRecord.from_result(make_result(event_id, **kw), f"file:///img/{event_id}.png")


def calibration(threshold: float) -> ClassCalibration:
    return ClassCalibration(
        threshold=threshold,
        scale=0.1,
        target_fpr=0.01,
        n_images=12,
        mean=0.2,
        std=0.05,
        median=0.19,
        q99=0.3,
        max=0.31,
        method="lognormal",
    )


# -- inspections ------------------------------------------------------------------------------


def test_a_result_round_trips(store: RecordStore):
    result = make_result("ev-1", score=0.7).model_copy(
        update={"attributes": {"part": "P-17", "shift": {"name": "night", "lead": "Ana"}}}
    )
    store.upsert_inspections([InspectionRecord.from_result(result, None)])
    got = store.get("ev-1")
    assert got is not None
    assert got.captured_at == result.captured_at and got.captured_at.tzinfo is not None
    assert got.captured_at.utcoffset() == timedelta(0)  # stored and returned in UTC
    assert got.processed_at == result.processed_at
    assert (got.score, got.threshold, got.is_anomalous) == (0.7, 0.5, True)
    assert got.model_version == result.model_version and got.heatmap_uri == result.heatmap_uri
    assert got.image_uri is None and got.label is None
    assert got.attributes == result.attributes and got.timings == result.timings
    assert store.get("nope") is None
    assert store.count() == 1


def test_upsert_is_idempotent(store: RecordStore):
    batch = [rec(f"ev-{i}", seconds=i) for i in range(5)]
    store.upsert_inspections(batch)
    first = [store.get(r.event_id) for r in batch]
    store.upsert_inspections(batch)  # a redelivered batch
    store.upsert_inspections(batch[2:] + batch[:2])
    assert store.count() == 5
    assert [store.get(r.event_id) for r in batch] == first == batch
    store.upsert_inspections([])  # nothing to do


def test_the_last_of_duplicates_in_one_batch_counts(store: RecordStore):
    store.upsert_inspections([rec("dup", score=0.1), rec("dup", score=0.9)])
    got = store.get("dup")
    assert store.count() == 1 and got is not None and got.score == 0.9


def test_an_update_keeps_the_operator_label(store: RecordStore):
    store.upsert_inspections([rec("ev-1", score=0.2)])
    assert store.label("ev-1", "anomalous", by="ana", note="crack", at=T0) == "applied"
    store.upsert_inspections([rec("ev-1", score=0.3)])  # re-scored after a redelivery
    got = store.get("ev-1")
    assert got is not None and got.score == 0.3
    assert (got.label, got.labelled_by, got.labelled_at, got.label_note) == (
        "anomalous",
        "ana",
        T0,
        "crack",
    )


def test_a_record_carrying_an_older_label_does_not_replace_a_newer_one(store: RecordStore):
    store.upsert_inspections([rec("ev-1")])
    store.label("ev-1", "anomalous", by="ana", at=T0)
    older = rec("ev-1").model_copy(
        update={"label": "normal", "labelled_by": "bo", "labelled_at": T0 - timedelta(hours=1)}
    )
    store.upsert_inspections([older])
    got = store.get("ev-1")
    assert got is not None and (got.label, got.labelled_by) == ("anomalous", "ana")
    newer = older.model_copy(update={"labelled_at": T0 + timedelta(hours=1)})
    store.upsert_inspections([newer])
    got = store.get("ev-1")
    assert got is not None and (got.label, got.labelled_by) == ("normal", "bo")


def test_a_label_for_an_unknown_event_waits_for_it(store: RecordStore):
    assert store.label("early", "anomalous", by="ana", note="dent", at=T0) == "pending"
    assert store.get("early") is None
    assert store.pending_labels() == {"early": "anomalous"}

    store.upsert_inspections([rec("other"), rec("early")])
    got = store.get("early")
    assert got is not None
    assert (got.label, got.labelled_by, got.labelled_at, got.label_note) == (
        "anomalous",
        "ana",
        T0,
        "dent",
    )
    other = store.get("other")
    assert other is not None and other.label is None
    assert store.pending_labels() == {}
    store.upsert_inspections([rec("early")])  # a redelivery keeps it
    got = store.get("early")
    assert got is not None and got.label == "anomalous"


def test_a_later_label_replaces_an_earlier_one_whatever_the_arrival_order(store: RecordStore):
    t1, t2, t3 = T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)
    # While pending.
    assert store.label("ev-1", "anomalous", by="ana", at=t1) == "pending"
    assert store.label("ev-1", "normal", by="bo", at=t2) == "pending"
    assert store.label("ev-1", "anomalous", by="cy", at=t1) == "superseded"  # arrived late
    assert store.pending_labels() == {"ev-1": "normal"}
    store.upsert_inspections([rec("ev-1")])
    got = store.get("ev-1")
    assert got is not None and (got.label, got.labelled_by, got.labelled_at) == ("normal", "bo", t2)
    # On the row.
    assert store.label("ev-1", "anomalous", by="cy", at=t1) == "superseded"
    got = store.get("ev-1")
    assert got is not None and got.label == "normal"
    assert store.label("ev-1", "anomalous", by="dee", note="on review", at=t3) == "applied"
    got = store.get("ev-1")
    assert got is not None
    assert (got.label, got.labelled_by, got.label_note) == ("anomalous", "dee", "on review")
    assert store.label("ev-1", "anomalous", by="dee", note="on review", at=t3) == "applied"


def test_labels_and_inspections_racing_never_leave_a_label_behind(store: RecordStore):
    """Labels for events being recorded at the same moment: each lands on its row."""
    ids = [f"race-{i}" for i in range(60)]
    errors: list[BaseException] = []

    def labeller() -> None:
        try:
            for i in ids:
                store.label(i, "anomalous", by="ana", at=T0)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=labeller)
    t.start()
    for k in range(0, len(ids), 3):
        store.upsert_inspections([rec(i) for i in ids[k : k + 3]])
    t.join(timeout=120)
    assert not errors and not t.is_alive()
    assert store.pending_labels() == {}
    for i in ids:
        got = store.get(i)
        assert got is not None and got.label == "anomalous", i


def test_label_refuses_nonsense(store: RecordStore):
    with pytest.raises(ValueError, match="label"):
        store.label("ev-1", "maybe", by="ana")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="who"):
        store.label("ev-1", "normal", by="")
    with pytest.raises(ValueError, match="time zone"):
        store.label("ev-1", "normal", by="ana", at=T0.replace(tzinfo=None))


# -- model versions and calibrations ------------------------------------------------------------


def test_model_versions_promote_and_retire(store: RecordStore):
    v1 = store.record_model_version(
        "grad-aaaa", "file:///models/a.safetensors", images_per_class={"hazelnut": 120}
    )
    assert v1.status == "candidate" and v1.images_per_class == {"hazelnut": 120}
    store.record_model_version(
        "grad-bbbb",
        "file:///models/b.safetensors",
        parent_version="grad-aaaa",
        created_at=T0 + timedelta(days=1),
        train_window=(T0 - timedelta(days=7), T0),
        metrics={"auroc": 0.97},
    )
    assert store.active_version() is None
    store.set_active("grad-aaaa", by="bootstrap")
    assert store.active_version() == "grad-aaaa"
    store.set_active("grad-bbbb", by="retrain-cron", at=T0, gate_decision={"promote": True})
    by_version = {v.version: v for v in store.model_versions()}
    assert by_version["grad-aaaa"].status == "retired"
    b = by_version["grad-bbbb"]
    assert (b.status, b.promoted_by, b.promoted_at) == ("active", "retrain-cron", T0)
    assert b.parent_version == "grad-aaaa" and b.metrics == {"auroc": 0.97}
    assert b.gate_decision == {"promote": True} and b.train_window_end == T0
    assert store.active_version() == "grad-bbbb"

    # Recording it again (a retried job) keeps its status; new figures replace old ones.
    again = store.record_model_version(
        "grad-bbbb", "file:///models/b.safetensors", metrics={"auroc": 0.98}
    )
    assert again.status == "active" and again.metrics == {"auroc": 0.98}
    assert again.parent_version == "grad-aaaa"  # not given: kept

    with pytest.raises(LookupError):
        store.set_active("grad-never", by="x")


def test_the_database_allows_one_active_version_only(store: RecordStore):
    store.record_model_version("grad-aaaa", "file:///a")
    store.record_model_version("grad-bbbb", "file:///b")
    store.set_active("grad-aaaa", by="x")
    t = ModelVersion.__table__
    with pytest.raises(sa_exc.IntegrityError), store.engine.begin() as conn:
        conn.execute(update(t).where(t.c.version == "grad-bbbb").values(status="active"))


def test_calibrations_keep_history_and_the_latest_counts(store: RecordStore):
    store.record_model_version("grad-aaaa", "file:///a")
    store.record_calibration("grad-aaaa", "hazelnut", calibration(0.5), at=T0)
    store.record_calibration("grad-aaaa", "hazelnut", calibration(0.5), at=T0)  # idempotent
    store.record_calibration("grad-aaaa", "hazelnut", calibration(0.6), at=T0 + timedelta(hours=1))
    store.record_calibration("grad-aaaa", "screw", calibration(0.4), at=T0)
    got = store.calibrations("grad-aaaa")
    assert set(got) == {"hazelnut", "screw"}
    assert got["hazelnut"].calibration == calibration(0.6)
    assert got["hazelnut"].created_at == T0 + timedelta(hours=1)
    assert store.calibrations("grad-other") == {}
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM class_calibrations")).scalar_one() == 3


def test_a_calibration_for_an_unrecorded_version_is_an_integrity_error(store: RecordStore):
    with pytest.raises(sa_exc.IntegrityError):
        store.record_calibration("grad-never", "hazelnut", calibration(0.5))


# -- failures -----------------------------------------------------------------------------------


def test_an_unreachable_server_is_reported_as_unavailable_quickly():
    with RecordStore(closed_port_url(), connect_timeout_s=2) as store:
        t0 = time.monotonic()
        with pytest.raises(RecordStoreUnavailable, match="unavailable"):
            store.ping()
        with pytest.raises(RecordStoreUnavailable):
            store.upsert_inspections([rec("ev-1")])
        with pytest.raises(RecordStoreUnavailable):
            store.label("ev-1", "normal", by="ana")
        assert time.monotonic() - t0 < 15


def test_an_unopenable_sqlite_file_is_unavailable(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'no-such-dir' / 'x.sqlite3'}"
    with RecordStore(url) as store, pytest.raises(RecordStoreUnavailable):
        store.ping()


def test_a_locked_sqlite_database_is_unavailable_not_an_error(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'locked.sqlite3'}"
    migrate(url)
    other = sqlite3.connect(tmp_path / "locked.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        with RecordStore(url, connect_timeout_s=0.5) as store:
            with pytest.raises(RecordStoreUnavailable, match="locked"):
                store.upsert_inspections([rec("ev-1")])
            other.execute("ROLLBACK")
            store.upsert_inspections([rec("ev-1")])  # the lock is gone: the retry succeeds
            assert store.count() == 1
    finally:
        other.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_database_without_the_schema_is_an_error_not_an_outage(backend: str, tmp_path: Path):
    """A missing migration must fail loudly, not be retried forever as if the server were down."""
    with database(backend, tmp_path) as url, RecordStore(url) as store:
        store.ping()
        with pytest.raises(sa_exc.DBAPIError) as info:
            store.upsert_inspections([rec("ev-1")])
        assert not isinstance(info.value, RecordStoreUnavailable)


@pytest.mark.integration
def test_a_server_going_away_and_coming_back():
    """A real PostgreSQL server stopped under an open pool, then started again."""
    server = PostgresServer()
    try:
        server.start()
        migrate(server.url)
        with RecordStore(server.url, connect_timeout_s=2) as store:
            store.upsert_inspections([rec("ev-1")])
            server.stop()
            with pytest.raises(RecordStoreUnavailable):
                store.upsert_inspections([rec("ev-2")])
            with pytest.raises(RecordStoreUnavailable):
                store.ping()
            server.start()
            store.upsert_inspections([rec("ev-2")])  # the same call, retried
            assert store.count() == 2
            assert store.get("ev-1") is not None
    finally:
        server.close()


def test_naive_times_are_refused():
    with pytest.raises(ValueError):
        InspectionRecord.from_result(
            make_result("ev-1").model_copy(update={"captured_at": T0.replace(tzinfo=None)}), None
        )
    assert make_result("ev-1").captured_at.tzinfo != timezone.utc  # the helper uses +01:00
