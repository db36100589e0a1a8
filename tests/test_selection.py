"""Which recorded inspections a retrain may learn from (`model.lifecycle.selection`), on real
databases: never an image labelled anomalous, unlabelled ones only when enabled and clearly normal,
caps, and unreadable images counted, not fatal unless too few remain."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest

from model.data.recorded_images import ImageUnavailable, RecordedImages
from model.lifecycle.selection import (
    Picked,
    SelectionError,
    SelectionRules,
    confidently_normal,
    normal_candidates,
    select,
    split_normals,
)
from model.stores.migrations import migrate
from model.stores.records import RecordStore
from tests.databases import BACKENDS, database
from tests.retraining import inspection

NOW = datetime.now(timezone.utc)  # at collection: the tests may run many minutes later
START, END = NOW - timedelta(hours=3), NOW + timedelta(days=1)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path):
    with database(request.param, tmp_path) as url:
        migrate(url)
        with RecordStore(url) as s:
            yield s


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """40 small PNGs under an image root."""
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        cv2.imwrite(str(root / f"{i:02d}.png"), rng.integers(0, 255, (32, 32, 3), np.uint8))
    return root


def reader_for(*roots: Path) -> RecordedImages:
    return RecordedImages([str(r) for r in roots], max_bytes=1 << 20, max_pixels=10**6)


def run_select(store, root, classes=None, **kw):
    args = dict(include_unlabelled=False, margin=0.5, max_images=100, max_anomalies=100)
    rules = SelectionRules(**{**args, "min_images": 4, **kw})
    return select(store, reader_for(root), START, END, classes=classes, rules=rules)


def at(minutes_ago: float) -> datetime:
    return NOW - timedelta(minutes=minutes_ago)


def test_an_image_labelled_anomalous_is_never_selected(store: RecordStore, images: Path):
    rows = [inspection(f"n{i}", "cookie", images / f"{i:02d}.png", label="normal", at=at(i))
            for i in range(8)]  # fmt: skip
    rows += [inspection(f"a{i}", "cookie", images / f"{10 + i:02d}.png", label="anomalous")
             for i in range(3)]  # fmt: skip
    # The same image as n1, labelled anomalous in another inspection, long before the window.
    rows.append(inspection("old", "cookie", images / "01.png", label="anomalous", at=at(600)))
    # The same image as n2 inspected again: used once.
    rows.append(inspection("again", "cookie", images / "02.png", label="normal", at=at(30)))
    store.upsert_inspections(rows)
    sel = run_select(store, images)["cookie"]
    uris = {p.image.uri for p in sel.normals}
    assert len(sel.normals) == 7 and (images / "01.png").resolve().as_uri() not in uris
    assert all(p.row.label == "normal" for p in sel.normals)
    assert {p.row.event_id for p in sel.anomalies} == {"a0", "a1", "a2"}
    assert not uris & {p.image.uri for p in sel.anomalies}
    assert sel.excluded == {"image_labelled_anomalous_elsewhere": 1, "duplicate_image": 1}
    assert sel.window["labelled_normal"] == 9 and sel.window["labelled_anomalous"] == 3
    assert sel.status == "train"


def test_unlabelled_images_only_when_enabled_and_clearly_normal(store: RecordStore, images: Path):
    rows = [inspection(f"n{i}", "hazelnut", images / f"{i:02d}.png", label="normal")
            for i in range(5)]  # fmt: skip
    rows += [
        inspection("low", "hazelnut", images / "20.png", score=0.3, threshold=1.0),
        inspection("edge", "hazelnut", images / "21.png", score=0.6, threshold=1.0),
        inspection("uncal", "hazelnut", images / "22.png", score=0.1, calibrated=False),
        inspection("inline", "hazelnut", None, score=0.1),
        inspection("flagged", "hazelnut", images / "23.png", score=2.0, threshold=1.0),
    ]
    store.upsert_inspections(rows)
    off = run_select(store, images)["hazelnut"]
    assert {p.row.event_id for p in off.normals} == {f"n{i}" for i in range(5)}
    on = run_select(store, images, include_unlabelled=True)["hazelnut"]
    assert {p.row.event_id for p in on.normals} == {*(f"n{i}" for i in range(5)), "low"}
    assert on.summary()["unlabelled_below_margin"] == 1
    wide = run_select(store, images, include_unlabelled=True, margin=0.3)["hazelnut"]
    assert "edge" in {p.row.event_id for p in wide.normals}  # 0.6 < 0.7 x threshold


def test_candidate_rules_without_a_database():
    a, b = NOW - timedelta(minutes=2), NOW - timedelta(minutes=1)
    labelled = [
        inspection("n1", "c", "file:///i/1.png", label="normal", at=a),
        inspection("n2", "c", "file:///i/2.png", label="normal", at=b),
        inspection("x", "c", "file:///i/3.png", label="anomalous"),  # a wrong row passed in
    ]
    unlabelled = [
        inspection("u1", "c", "file:///i/4.png", score=0.2),
        inspection("u2", "c", "file:///i/5.png", score=0.9),
        inspection("u3", "c", "file:///i/1.png", score=0.1),  # n1's image: once only
        inspection("u4", "c", "file:///i/6.png", score=0.1),  # labelled anomalous elsewhere
    ]
    got, why = normal_candidates(
        labelled, unlabelled, {"file:///i/6.png"}, include_unlabelled=True, margin=0.5
    )
    assert [(c.row.event_id, c.source) for c in got] == [
        ("n2", "labelled_normal"),  # labelled first, newest first
        ("n1", "labelled_normal"),
        ("u1", "unlabelled_below_margin"),
    ]
    assert why == {
        "labelled_anomalous": 1,
        "unlabelled_not_below_margin": 1,
        "duplicate_image": 1,
        "image_labelled_anomalous_elsewhere": 1,
    }
    assert confidently_normal(unlabelled[0], 0.5) and not confidently_normal(unlabelled[1], 0.5)
    assert not confidently_normal(labelled[0], 0.5)  # labelled rows are not "unlabelled"


def test_per_class_caps_prefer_labelled_and_recent(store: RecordStore, images: Path):
    rows = [inspection(f"n{i}", "cookie", images / f"{i:02d}.png", label="normal", at=at(i))
            for i in range(10)]  # fmt: skip
    rows += [inspection(f"u{i}", "cookie", images / f"{10 + i:02d}.png", score=0.1, at=at(i))
             for i in range(10)]  # fmt: skip
    rows += [inspection(f"h{i}", "hazelnut", images / f"{20 + i:02d}.png", label="normal")
             for i in range(6)]  # fmt: skip
    store.upsert_inspections(rows)
    sel = run_select(store, images, include_unlabelled=True, max_images=12)
    cookie = sel["cookie"]
    assert len(cookie.normals) == 12 and cookie.capped == 8
    assert {p.row.event_id for p in cookie.normals} == {
        *(f"n{i}" for i in range(10)),
        "u0",
        "u1",
    }
    assert len(sel["hazelnut"].normals) == 6  # the busy class does not crowd it out
    only = run_select(store, images, classes=["hazelnut"])
    assert set(only) == {"hazelnut"}


def test_unavailable_images_are_counted_by_reason(store: RecordStore, images: Path, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    cv2.imwrite(str(outside / "x.png"), np.zeros((8, 8, 3), np.uint8))
    (images / "junk.png").write_bytes(b"not an image")
    (images / "link.png").symlink_to(outside / "x.png")  # a link out of the root
    rows = [inspection(f"n{i}", "cookie", images / f"{i:02d}.png", label="normal")
            for i in range(6)]  # fmt: skip
    rows += [
        inspection("inline", "cookie", None, label="normal"),
        inspection("gone", "cookie", images / "missing.png", label="normal"),
        inspection("junk", "cookie", images / "junk.png", label="normal"),
        inspection("out", "cookie", outside / "x.png", label="normal"),
        inspection("link", "cookie", (images / "link.png").as_uri(), label="normal"),
        inspection("etc", "cookie", "file:///etc/passwd", label="normal"),
        inspection("dots", "cookie", f"file://{images}/../outside/x.png", label="normal"),
        inspection("s3", "cookie", "s3://bucket/a.png", label="normal"),
    ]
    store.upsert_inspections(rows)
    sel = run_select(store, images)["cookie"]
    assert len(sel.normals) == 6 and sel.status == "train"
    assert sel.unavailable == {
        "inline": 1,
        "missing": 1,
        "undecodable": 1,
        "outside_roots": 5,
    }


def test_too_few_readable_images_is_an_error_naming_the_class(store: RecordStore, images: Path):
    rows = [inspection(f"n{i}", "transistor", images / f"{i:02d}.png", label="normal")
            for i in range(3)]  # fmt: skip
    rows += [inspection(f"g{i}", "transistor", images / f"gone{i}.png", label="normal")
             for i in range(3)]  # fmt: skip
    rows += [inspection(f"c{i}", "cookie", images / f"{10 + i:02d}.png", label="normal")
             for i in range(2)]  # fmt: skip
    store.upsert_inspections(rows)
    with pytest.raises(SelectionError, match=r"'transistor': only 3 of 6 .*3 missing"):
        run_select(store, images, min_images=5)
    sel = run_select(store, images, min_images=5, classes=["cookie"])
    assert sel["cookie"].status == "skipped"  # simply too few recorded: skipped, not an error
    assert "2 usable normal images, at least 5 needed" in sel["cookie"].note


def test_rows_outside_the_window_are_not_used(store: RecordStore, images: Path):
    rows = [inspection(f"n{i}", "cookie", images / f"{i:02d}.png", label="normal")
            for i in range(5)]  # fmt: skip
    rows += [inspection(f"old{i}", "cookie", images / f"{10 + i:02d}.png", label="normal",
                        at=at(24 * 60)) for i in range(5)]  # fmt: skip
    store.upsert_inspections(rows)
    sel = run_select(store, images)["cookie"]
    assert {p.row.event_id for p in sel.normals} == {f"n{i}" for i in range(5)}
    assert sel.window["inspected"] == 5


def test_held_out_normals_are_drawn_from_labelled_images_first(images: Path):
    reader = reader_for(images)
    picked = [
        Picked(
            reader.load((images / f"{i:02d}.png").as_uri()),
            inspection(f"e{i}", "c", images / f"{i:02d}.png"),
            "labelled_normal" if i < 4 else "unlabelled_below_margin",
        )
        for i in range(20)
    ]
    train, held = split_normals(picked, 0.25, 3, seed=0, product_class="c")
    assert len(held) == 5 and len(train) == 15
    assert sum(p.source == "labelled_normal" for p in held) == 4
    again = split_normals(picked, 0.25, 3, seed=0, product_class="c")
    assert [p.image.sha256 for p in again[1]] == [p.image.sha256 for p in held]  # seeded
    with pytest.raises(SelectionError, match="'c'"):
        split_normals(picked[:3], 0.25, 3, seed=0, product_class="c")


def test_the_reader_refuses_what_lies_outside_the_roots(images: Path):
    reader = reader_for(images)
    assert reader.load((images / "00.png").as_uri()).sha256
    for uri, reason in [
        (None, "inline"),
        ("file:///etc/hostname", "outside_roots"),
        ("file://otherhost/x.png", "outside_roots"),
        ((images / "nope.png").as_uri(), "missing"),
        ("s3://bucket/x.png", "outside_roots"),
    ]:
        with pytest.raises(ImageUnavailable) as info:
            reader.load(uri)
        assert info.value.reason == reason
    assert not RecordedImages([], 1, 1).configured
