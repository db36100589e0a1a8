"""Records for the review station's tests: inspections as the worker records them (the same
RecordStore upsert, real heatmap PNGs in a heatmap store, real images under an image root)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from model.stores.migrations import migrate
from model.stores.records import RecordStore
from schemas.events import StageTimings
from schemas.records import InspectionRecord
from worker.heatmaps import HeatmapStore
from worker.review.accounts import add_user

T0 = datetime(2026, 12, 3, 8, 0, tzinfo=timezone.utc)
THRESHOLD = 0.5
PASSWORDS = {"anna": "anna-reviews-parts", "vic": "vic-only-looks"}
XSS = "<script>alert('station')</script>"

# (event id, confidence, verdict, station): the queue's order is near the threshold first
# (|confidence - 0.5| <= 0.25, nearest first), then flagged parts, then the rest.
ROWS = [
    ("e-far-pass", 0.02, False, "cam-1"),
    ("e-near-flag", 0.60, True, "cam-1"),
    ("e-far-flag", 0.95, True, "cam-2"),
    ("e-near-pass", 0.45, False, "cam-1"),
    ("e-xss", 0.30, False, XSS),
]
QUEUE_ORDER = ["e-near-pass", "e-near-flag", "e-xss", "e-far-flag", "e-far-pass"]
LABELLED = "e-done"
# Rows judged by a provisional (False) or steady (True) threshold; the rest predate the flag.
STEADY = {"e-near-flag": False, "e-far-flag": True}


@dataclass(frozen=True)
class ReviewData:
    url: str
    image_root: Path
    heatmaps: Path
    users: Path
    outside: Path  # an image outside the image root, recorded for one event


def make_review_data(tmp: Path, sample_data: Path, url: str | None = None) -> ReviewData:
    """A migrated database with the rows above, their images and heatmaps, and two accounts."""
    url = url or f"sqlite:///{tmp / 'inspections.sqlite3'}"
    migrate(url)
    images = sorted((sample_data / "fabric" / "test").rglob("*.png"))
    heatmaps = HeatmapStore(str(tmp / "heatmaps"))
    outside = tmp / "elsewhere" / "secret.png"
    outside.parent.mkdir(parents=True, exist_ok=True)
    outside.write_bytes(images[0].read_bytes())
    records = []
    rng = np.random.default_rng(3)
    for i, (event_id, confidence, flagged, station) in enumerate(
        [*ROWS, (LABELLED, 0.5, True, "cam-1")]
    ):
        amap = rng.random((224, 224), dtype=np.float32) * THRESHOLD * 2 * confidence
        records.append(
            InspectionRecord(
                event_id=event_id,
                line="line-3",
                station=station,
                product_class="fabric",
                captured_at=T0 + timedelta(seconds=i),
                processed_at=T0 + timedelta(seconds=i, milliseconds=180),
                image_uri=images[i % len(images)].resolve().as_uri(),
                heatmap_uri=heatmaps.write(event_id, amap, {"model_version": "grad-test"}),
                score=THRESHOLD * 2 * confidence,
                threshold=THRESHOLD,
                confidence=confidence,
                is_anomalous=flagged,
                calibrated=True,
                threshold_steady=STEADY.get(event_id),
                model_version="grad-0123456789abcdef",
                attributes={"part": f"P-{i}", "operator": XSS} if event_id == "e-xss" else None,
                timings=StageTimings(
                    queue_ms=4.0, fetch_decode_ms=6.5, infer_ms=40.0, heatmap_ms=3.0, batch_size=8
                ),
            )
        )
    with RecordStore(url) as store:
        store.upsert_inspections(records)
        store.label(LABELLED, "anomalous", by="someone", at=T0 + timedelta(hours=1))
    users = tmp / "users.json"
    add_user(users, "anna", PASSWORDS["anna"], "reviewer")
    add_user(users, "vic", PASSWORDS["vic"], "viewer")
    return ReviewData(url, sample_data, tmp / "heatmaps", users, outside)


def review_env(data: ReviewData) -> dict[str, str]:
    """The station's settings for these records, as an operator sets them."""
    return {
        "REVIEW_DATABASE_URL": data.url,
        "REVIEW_IMAGE_ROOTS": str(data.image_root),
        "REVIEW_HEATMAP_STORE": str(data.heatmaps),
        "REVIEW_USERS_FILE": str(data.users),
        "REVIEW_SESSION_SECRET": "test-secret-not-for-production",
        "REVIEW_SECURE_COOKIES": "false",
    }
