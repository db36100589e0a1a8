"""The review station over HTTP (FastAPI's test client on the real app, a real SQLite database
written by the worker's RecordStore, real heatmap PNGs and images): the queue's order and
paging, sign-in, labels through RecordStore.label with the reviewer's name, CSRF, roles,
escaping, media only through recorded URIs under the roots, and a database that is down.
The browser's view of the same: tests/test_review_browser.py."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from model.core.clock import utc_now
from model.stores.records import RecordStore
from schemas.limits import NOTE_LENGTH
from schemas.tables import REVIEW_PRIORITY_SQL
from tests.databases import closed_port_url, migration_module
from tests.review import LABELLED, PASSWORDS, QUEUE_ORDER, XSS, ReviewData, make_review_data
from worker.review.app import create_app
from worker.review.media import TOP, colour_overlay
from worker.review.settings import ReviewSettings


def settings_for(data: ReviewData, **overrides: object) -> ReviewSettings:
    values: dict[str, object] = {
        "database_url": data.url,
        "image_roots": [str(data.image_root)],
        "heatmap_store": str(data.heatmaps),
        "users_file": data.users,
        "session_secret": "test-secret",
        "secure_cookies": False,
        **overrides,
    }
    return ReviewSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def data(tmp_path: Path, sample_data: Path) -> ReviewData:
    return make_review_data(tmp_path, sample_data)


def client_for(data: ReviewData, user: str | None = "anna", **overrides: object) -> TestClient:
    client = TestClient(create_app(settings_for(data, **overrides)), follow_redirects=False)
    if user:
        r = client.post("/login", data={"name": user, "password": PASSWORDS[user]})
        assert r.status_code == 303, r.text
    return client


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF token on the page"
    return m[1]


def queue_ids(html: str) -> list[str]:
    return re.findall(r'class="open" href="/inspections/([^"?]+)', html)


def test_the_queue_puts_what_a_label_teaches_most_first_and_pages_by_keyset(data) -> None:
    client = client_for(data)
    first = client.get("/")
    assert first.status_code == 200
    assert queue_ids(first.text) == QUEUE_ORDER  # the labelled one is not queued
    paged, after = [], ""
    small = client_for(data, page_size=2)
    while True:
        page = small.get("/" + (f"?after={after}" if after else ""))
        paged += queue_ids(page.text)
        m = re.search(r"after=([^\"&]+)", page.text)
        if not m:
            break
        after = m[1]
    assert paged == QUEUE_ORDER, "every row once, in order, across pages"
    flagged = client.get("/?verdict=anomalous")
    assert queue_ids(flagged.text) == ["e-near-flag", "e-far-flag"]
    labelled = client.get("/?label_state=labelled")
    assert queue_ids(labelled.text) == [LABELLED]
    assert client.get("/?verdict=maybe").status_code == 400
    assert client.get("/?after=garbage").status_code == 400


def test_the_queue_filters_by_time_window_as_the_command_lines_write_it(data) -> None:
    client = client_for(data)
    # Rows i = 0..5 were processed at 08:00:0i (tests/review.py).
    since = client.get("/?since=2026-12-03T08:00:02%2B00:00").text
    assert queue_ids(since) == ["e-near-pass", "e-xss", "e-far-flag"]
    until = client.get("/?until=2026-12-03T08:00:02Z").text
    assert queue_ids(until) == ["e-near-flag", "e-far-pass"]
    assert queue_ids(client.get("/?since=2026-12-03").text) == QUEUE_ORDER  # midnight UTC
    assert client.get("/?since=2026-12-03T08:00").status_code == 400  # a time without a zone
    assert client.get("/?since=soon").status_code == 400
    recent = client.get("/?since=8h").text
    shown = re.search(r'name="since" placeholder="[^"]*" value="([^"]+)"', recent)
    assert shown, "the form shows the window it applied"
    at = datetime.fromisoformat(shown[1])
    assert abs((utc_now() - timedelta(hours=8) - at).total_seconds()) < 60
    counts = counts_of(client.get("/counts?since=2026-12-03T08:00:02Z").text)
    assert '<strong class="total">3</strong>' in counts


def counts_of(html: str) -> str:
    return re.sub(r"\s+", " ", html)


def test_the_queue_counts_what_its_filters_select_whatever_the_page(data) -> None:
    client = client_for(data, page_size=2)
    assert 'data-src="/counts"' in client.get("/").text  # the page fetches them after itself
    head = counts_of(client.get("/counts").text)
    assert '<strong class="total">5</strong> under these filters (2 flagged, 3 passed)' in head
    assert '<a class="facet" href="/?product_class=fabric">fabric 5</a>' in head
    assert "by line" not in head  # one line: nothing to split
    flagged = counts_of(client.get("/counts?verdict=anomalous&label_state=any").text)
    assert '<strong class="total">3</strong> under these filters (3 flagged, 0 passed)' in flagged
    assert 'href="/?product_class=fabric&amp;verdict=anomalous&amp;label_state=any"' in flagged
    none = counts_of(client.get("/counts?line=line-9").text)
    assert '<strong class="total">0</strong>' in none and "by class" not in none


def test_pages_need_a_sign_in_and_a_wrong_password_gets_none(data) -> None:
    anonymous = client_for(data, user=None)
    r = anonymous.get("/")
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert anonymous.get("/media/e-xss/image").status_code == 303
    wrong = anonymous.post("/login", data={"name": "anna", "password": "not-hers"})
    assert wrong.status_code == 401 and "grad_review" not in wrong.cookies
    unknown = anonymous.post("/login", data={"name": "mallory", "password": "whatever1"})
    assert unknown.status_code == 401
    # A sign-in goes back only to a page of this site.
    r = anonymous.post(
        "/login", data={"name": "anna", "password": PASSWORDS["anna"], "next": "//evil.example"}
    )
    assert r.status_code == 303 and r.headers["location"] == "/"


def test_a_label_is_recorded_with_the_reviewers_name_and_the_next_item_opens(data) -> None:
    client = client_for(data)
    page = client.get("/inspections/e-near-pass")
    assert page.status_code == 200
    r = client.post(
        "/inspections/e-near-pass/label",
        data={"label": "anomalous", "note": "scratch at the edge", "csrf": csrf_of(page.text)},
    )
    assert r.status_code == 303 and r.headers["location"] == "/inspections/e-near-flag"
    with RecordStore(data.url) as store:
        row = store.get("e-near-pass")
    assert row is not None and row.label == "anomalous" and row.labelled_by == "anna"
    assert row.label_note == "scratch at the edge" and row.labelled_at is not None
    assert "e-near-pass" not in queue_ids(client.get("/").text)


def test_a_note_too_long_or_an_unknown_label_is_refused_whole_and_changes_nothing(data) -> None:
    client = client_for(data)
    csrf = csrf_of(client.get("/inspections/e-near-flag").text)
    for form, reason in (
        ({"label": "normal", "note": "x" * (NOTE_LENGTH + 1)}, f"at most {NOTE_LENGTH}"),
        ({"label": "maybe"}, "normal or anomalous"),
    ):
        r = client.post("/inspections/e-near-flag/label", data={**form, "csrf": csrf})
        assert r.status_code == 400 and reason in r.text, r.text
    with RecordStore(data.url) as store:
        assert store.get("e-near-flag").label is None  # type: ignore[union-attr]


def test_a_state_change_without_the_csrf_token_is_refused_and_changes_nothing(data) -> None:
    client = client_for(data)
    for form in ({"label": "normal"}, {"label": "normal", "csrf": "forged"}):
        r = client.post("/inspections/e-near-flag/label", data=form)
        assert r.status_code == 403
    with RecordStore(data.url) as store:
        row = store.get("e-near-flag")
    assert row is not None and row.label is None


def test_a_viewer_can_look_but_not_label(data) -> None:
    viewer = client_for(data, user="vic")
    page = viewer.get("/inspections/e-near-flag")
    assert page.status_code == 200 and 'class="labelling"' not in page.text
    r = viewer.post(
        "/inspections/e-near-flag/label", data={"label": "normal", "csrf": csrf_of(page.text)}
    )
    assert r.status_code == 403
    with RecordStore(data.url) as store:
        assert store.get("e-near-flag").label is None  # type: ignore[union-attr]


def test_a_provisional_threshold_is_said_on_the_inspection_page(data) -> None:
    """A reviewer judging a rejection needs to know the threshold behind it was set from few
    normal images; rows recorded before results carried the flag say nothing either way."""
    client = client_for(data)
    said = "provisional threshold: set from fewer than 20 normal images"
    assert said in client.get("/inspections/e-near-flag").text
    assert said not in client.get("/inspections/e-far-flag").text  # steady
    assert said not in client.get("/inspections/e-far-pass").text  # recorded before the flag


def test_text_from_an_event_is_shown_as_text(data) -> None:
    client = client_for(data)
    escaped = "&lt;script&gt;alert(&#39;station&#39;)&lt;/script&gt;"
    for path in ("/", "/inspections/e-xss"):
        html = client.get(path).text
        assert XSS not in html and "<script>alert" not in html
        assert escaped in html
    page = client.get("/inspections/e-xss").text
    attributes = re.search(r'<pre class="attributes">(.*?)</pre>', page, re.S)
    assert attributes and escaped in attributes[1] and "P-4" in attributes[1]
    assert "inference 40 ms (batch of 8)" in page  # the result's stage timings, as recorded
    assert "script-src 'self'" in client.get("/").headers["content-security-policy"]


def test_media_only_through_recorded_uris_under_the_roots(data) -> None:
    client = client_for(data)
    image = client.get("/media/e-xss/image")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert cv2.imdecode(np.frombuffer(image.content, np.uint8), cv2.IMREAD_COLOR) is not None
    overlay = client.get("/media/e-xss/overlay")
    rgba = cv2.imdecode(np.frombuffer(overlay.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert overlay.status_code == 200 and rgba.shape == (224, 224, 4)
    for path in (
        "/media/../../etc/passwd/image",
        "/media/%2e%2e%2f%2e%2e%2fetc%2fpasswd/image",
        "/media/%2Fetc%2Fpasswd/image",
        "/media//etc/passwd/image",
        "/static/../tests/review.py",
        "/static/%2e%2e/app.py",
        "/media/no-such-event/image",
    ):
        assert client.get(path).status_code == 404, path
    # A row whose recorded image lies outside the configured roots is not served.
    with RecordStore(data.url) as store:
        row = store.get("e-far-pass")
        assert row is not None
        store.upsert_inspections([row.model_copy(update={"image_uri": data.outside.as_uri()})])
    assert client.get("/media/e-far-pass/image").status_code == 404


def test_a_database_that_is_down_gives_a_page_and_503_not_a_trace(data) -> None:
    client = client_for(data)
    down = TestClient(
        create_app(settings_for(data, database_url=closed_port_url())), follow_redirects=False
    )
    down.cookies = client.cookies  # the same signed session
    r = down.get("/")
    assert r.status_code == 503
    assert "cannot be reached" in r.text and "Traceback" not in r.text
    assert down.get("/readyz").status_code == 503


def test_the_overlay_means_the_same_risk_at_every_threshold() -> None:
    # value / threshold from 0 to 3, exact in binary at both thresholds (powers of two).
    ramp = (np.arange(224 * 224) % 768 / 256).astype(np.float32).reshape(224, 224)
    low = cv2.imdecode(np.frombuffer(colour_overlay(ramp * 2, 2.0), np.uint8), -1)
    high = cv2.imdecode(np.frombuffer(colour_overlay(ramp * 64, 64.0), np.uint8), -1)
    assert np.array_equal(low, high), "value / threshold decides the colour, not the range"
    flat = cv2.imdecode(np.frombuffer(colour_overlay(np.full((4, 4), 3.0), 3.0), np.uint8), -1)
    top = cv2.imdecode(np.frombuffer(colour_overlay(np.full((4, 4), 99.0), 3.0), np.uint8), -1)
    zero = cv2.imdecode(np.frombuffer(colour_overlay(np.zeros((4, 4)), 3.0), np.uint8), -1)
    assert zero[..., 3].max() == 0, "transparent where the map is 0"
    assert flat[..., 3].min() == 255 and not np.array_equal(flat, top)
    expected_mid = cv2.applyColorMap(np.array([[round(255 / TOP)]], np.uint8), cv2.COLORMAP_TURBO)
    assert np.array_equal(flat[0, 0, :3], expected_mid[0, 0])


def test_behind_a_trusted_proxy_its_header_names_the_reviewer(data) -> None:
    client = client_for(data, user=None, auth="proxy")
    assert client.get("/").status_code == 401
    anna = {"X-Forwarded-User": "anna", "X-Forwarded-Role": "reviewer"}
    page = client.get("/inspections/e-near-flag", headers=anna)
    assert page.status_code == 200 and 'class="labelling"' in page.text
    refused = client.post("/inspections/e-near-flag/label", data={"label": "normal"}, headers=anna)
    assert refused.status_code == 403
    ok = client.post(
        "/inspections/e-near-flag/label",
        data={"label": "normal", "csrf": csrf_of(page.text)},
        headers=anna,
    )
    assert ok.status_code == 303
    with RecordStore(data.url) as store:
        row = store.get("e-near-flag")
    assert row is not None and row.label == "normal" and row.labelled_by == "anna"
    viewer = client.get("/inspections/e-xss", headers={"X-Forwarded-User": "bob"})
    assert viewer.status_code == 200 and 'class="labelling"' not in viewer.text  # default role


def test_the_queue_reads_the_index_the_migrations_add_for_its_order(data) -> None:
    from sqlalchemy import create_engine

    from worker.review import queue as q

    engine = create_engine(data.url)
    try:
        with engine.connect() as conn:
            query = (
                q.select(q.T.c.event_id, q._priority)
                .where(q.T.c.label.is_(None))
                .order_by(q._priority, q.T.c.event_id)
                .limit(50)
            )
            sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
            conn.exec_driver_sql("ANALYZE")  # SQLite's planner weighs indexes by their stats
            plan = " ".join(str(r) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
    finally:
        engine.dispose()
    assert "ix_inspections_review_queue" in plan and "TEMP B-TREE" not in plan, plan
    migration = migration_module("0003_review_queue_index.py")
    assert migration.PRIORITY == REVIEW_PRIORITY_SQL, "the index is on the queue's own expression"
