"""The review station's class page on real SQL records: the distribution beside the
calibration's normals, the drift figure, the anomaly rate per day, labelled mistakes."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, event

from model.core.clock import utc_now
from model.metrics.calibration import calibrate, confidence
from model.metrics.drift import drift
from model.stores.records import RecordStore
from schemas import ClassCalibration
from schemas.records import InspectionRecord
from schemas.tables import MISTAKE_SQL
from tests.databases import migration_module
from tests.review import ReviewData, make_review_data
from tests.test_review import client_for
from worker.review import classes as k

VERSION = "grad-00000000000000c1"


def parts(
    product_class: str, scores: np.ndarray, cal: ClassCalibration, now: datetime, days: int
) -> list[InspectionRecord]:
    """Parts spread over the last `days` days, scored against `cal` as the worker scores."""
    conf = confidence(scores, cal)
    return [
        InspectionRecord(
            event_id=f"{product_class}-{i}",
            line="line-3",
            station="cam-1",
            product_class=product_class,
            captured_at=now - timedelta(days=days) * (1 - i / len(scores)) - timedelta(minutes=1),
            processed_at=now - timedelta(days=days) * (1 - i / len(scores)),
            image_uri=None,
            heatmap_uri="file:///nowhere.png",
            score=float(s),
            threshold=cal.threshold,
            confidence=float(c),
            is_anomalous=bool(s > cal.threshold),
            calibrated=True,
            model_version=VERSION,
        )
        for i, (s, c) in enumerate(zip(scores, conf, strict=True))
    ]


@pytest.fixture
def history(tmp_path: Path, sample_data: Path) -> tuple[ReviewData, dict]:
    data = make_review_data(tmp_path, sample_data)
    rng = np.random.default_rng(11)
    now = utc_now()
    cals = {c: calibrate(20 * np.exp(0.2 * rng.standard_normal(150))) for c in ("screw", "nut")}
    steady = 20 * np.exp(0.2 * rng.standard_normal(900))
    shifted = 26 * np.exp(0.2 * rng.standard_normal(900))  # the line changed: scores 30 % up
    rows = parts("nut", steady, cals["nut"], now, 3)
    rows += parts("screw", shifted, cals["screw"], now, 3)
    with RecordStore(data.url) as store:
        store.record_model_version(VERSION, "file:///models/c1.safetensors")
        for c, cal in cals.items():
            store.record_calibration(VERSION, c, cal)
        store.set_active(VERSION, by="test")
        store.upsert_inspections(rows)
        flagged = [r.event_id for r in rows if r.product_class == "screw" and r.is_anomalous]
        passed = [r.event_id for r in rows if r.product_class == "screw" and not r.is_anomalous]
        for e in flagged[:5]:
            store.label(e, "normal", by="anna")
        for e in passed[:3]:
            store.label(e, "anomalous", by="anna")
        store.label(flagged[5], "anomalous", by="anna")
    return data, {"cals": cals, "rows": rows, "false_alarms": flagged[:5], "misses": passed[:3]}


def test_the_index_lists_each_class_with_its_parts_and_threshold(history) -> None:
    data, h = history
    html = client_for(data).get("/classes").text
    for c in ("nut", "screw"):
        n = sum(r.product_class == c for r in h["rows"])
        flagged = sum(r.product_class == c and r.is_anomalous for r in h["rows"])
        assert f'href="/classes/{c}?days=7"' in html
        assert f"<td>{n}</td>" in html and f"<td>{flagged} (" in html
        assert f"{h['cals'][c].threshold:.4g}" in html


def drift_on_page(html: str) -> float:
    head = html.split('class="drift', 1)[1]
    return float(head.split("<strong>", 1)[1].split("</strong>", 1)[0])


def test_a_line_whose_normal_parts_moved_shows_drift_and_a_steady_one_does_not(history) -> None:
    data, h = history
    client = client_for(data)
    for c, moved in (("screw", True), ("nut", False)):
        html = client.get(f"/classes/{c}").text
        mine = [r for r in h["rows"] if r.product_class == c]
        exact = drift(np.array([r.confidence for r in mine]), h["cals"][c])
        assert drift_on_page(html) == pytest.approx(exact.statistic, abs=0.02)
        assert ('class="drift shifted"' in html) is moved
        assert ('class="drift steady"' in html) is not moved
        assert f"{exact.recent} parts judged normal" in html
        assert f"{len(mine)} parts scored by <code>{VERSION}</code>" in html


def test_the_anomaly_rate_per_day_and_the_labelled_mistakes(history) -> None:
    data, h = history
    html = client_for(data).get("/classes/screw?days=7").text
    mine = [r for r in h["rows"] if r.product_class == "screw"]
    per_day: dict[str, list[bool]] = {}
    for r in mine:
        per_day.setdefault(r.processed_at.date().isoformat(), []).append(r.is_anomalous)
    for day, flags in per_day.items():
        assert f"<tr><td>{day}</td><td>{len(flags)}</td><td>{sum(flags)}</td>" in html
    assert '<strong class="false-alarms">5</strong>' in html
    assert '<strong class="misses">3</strong>' in html
    for e in h["false_alarms"] + h["misses"]:
        assert f'href="/inspections/{e}"' in html
    # The chart: one bar per shown bin, the calibration's normals as a line, the threshold.
    assert html.count('class="bar"') >= 50 and 'class="reference"' in html
    assert 'class="threshold"' in html


def test_a_shorter_window_counts_fewer_parts_and_a_class_never_seen_is_404(history) -> None:
    data, h = history
    client = client_for(data)
    html = client.get("/classes/screw?days=1").text
    recent = [r for r in h["rows"] if r.product_class == "screw"]
    cut = utc_now() - timedelta(days=1)
    n = sum(r.processed_at >= cut for r in recent)
    assert f"{n} parts scored" in html or f"{n + 1} parts scored" in html  # the clock moved
    assert client.get("/classes/screw?days=0").status_code == 422
    assert client.get("/classes/none-such?model_version=grad-nope").text.count("0 parts") == 1


def test_without_a_recorded_calibration_the_page_says_so(history) -> None:
    data, _ = history
    html = client_for(data).get("/classes/fabric?days=90&model_version=grad-0123456789abcdef").text
    assert "No calibration of this class is recorded" in html and 'class="drift' not in html


def test_the_class_page_reads_the_indexes_the_migrations_add_for_it(history) -> None:
    """Each of the page's statements, as it runs them, planned by SQLite on the migrated
    database: the window's aggregates on ix_inspections_class_window, the mistakes on the
    partial ix_inspections_mistakes (PostgreSQL's plans: bench.review)."""
    data, _ = history
    engine = create_engine(data.url)
    statements: list[tuple[str, object]] = []

    @event.listens_for(engine, "before_cursor_execute")
    def keep(conn, cursor, statement, parameters, context, executemany) -> None:
        statements.append((statement, parameters))

    now = utc_now()
    w = k.ClassWindow("screw", VERSION, now - timedelta(days=7), now)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            statements.clear()
            k.confidence_counts(conn, w)
            k.per_day(conn, w)
            k.mistakes(conn, w)
            ran = list(statements)
            plans = [
                " ".join(str(r) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params))
                for sql, params in ran
            ]
    finally:
        engine.dispose()
    # histogram, per day, mistakes counted, labelled counted, false alarms, misses
    assert len(plans) == 6, ran
    for i, index in enumerate(["class_window", "class_window", "mistakes", "class_window",
                               "mistakes", "mistakes"]):  # fmt: skip
        assert f"ix_inspections_{index}" in plans[i], plans[i]
    migration = migration_module("0005_class_page_indexes.py")
    assert migration.MISTAKE == MISTAKE_SQL, "the partial index is on the page's own predicate"
