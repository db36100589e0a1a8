"""Wire contracts: what the worker accepts, what it refuses and why, the exported schemas."""

from __future__ import annotations

import json

import pytest

from schemas import DeadLetter, InspectionEvent
from schemas.export import CONTRACTS, SCHEMA_DIR, render
from worker.image_source import Rejected
from worker.intake import parse_event

GOOD = {
    "schema_version": 1,
    "event_id": "line-3-000123",
    "line": "line-3",
    "station": "cam-1",
    "product_class": "hazelnut",
    "captured_at": "2026-11-29T10:00:00+00:00",
    "image_uri": "file:///data/a.png",
}


def test_a_good_event_parses():
    ev = parse_event(json.dumps(GOOD).encode())
    assert ev.event_id == "line-3-000123" and ev.image_b64 is None
    assert ev.captured_at.utcoffset() is not None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (None, "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (json.dumps({**GOOD, "schema_version": 2}).encode(), "unknown_schema_version"),
        (
            json.dumps({k: v for k, v in GOOD.items() if k != "schema_version"}).encode(),
            "unknown_schema_version",
        ),
        (json.dumps({k: v for k, v in GOOD.items() if k != "station"}).encode(), "invalid_event"),
        (json.dumps({**GOOD, "image_b64": "AAAA"}).encode(), "invalid_event"),  # both images
        (
            json.dumps({k: v for k, v in GOOD.items() if k != "image_uri"}).encode(),
            "invalid_event",
        ),  # no image
        (
            json.dumps({**GOOD, "captured_at": "2026-11-29T10:00:00"}).encode(),
            "invalid_event",
        ),  # no time zone: ambiguous on a line that spans zones
        (json.dumps({**GOOD, "event_id": "../../etc/passwd"}).encode(), "invalid_event"),
        (json.dumps({**GOOD, "surprise": 1}).encode(), "invalid_event"),
    ],
)
def test_bad_values_are_rejected_with_a_reason(value, reason):
    with pytest.raises(Rejected) as exc:
        parse_event(value)
    assert exc.value.reason == reason
    assert exc.value.detail


def test_invalid_event_detail_names_the_field():
    bad = json.dumps({k: v for k, v in GOOD.items() if k != "station"}).encode()
    with pytest.raises(Rejected, match="station"):
        parse_event(bad)


def test_dead_letter_headers_round_trip():
    dl = DeadLetter(
        reason="uri_not_allowed",
        detail="file:///etc/passwd is outside the configured image roots",
        source_topic="line-3",
        source_partition=2,
        source_offset=41,
        event_id="e-1",
        worker="w-1",
        failed_at="2026-11-29T10:00:00+00:00",
    )
    headers = dl.to_headers()
    assert all(k.startswith("dlq.") and isinstance(v, bytes) for k, v in headers)
    assert DeadLetter.from_headers([("trace", b"x"), *headers]) == dl


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_exported_json_schemas_are_current(name):
    path = SCHEMA_DIR / f"{name}.schema.json"
    assert path.is_file(), "run `python -m schemas.export`"
    assert path.read_text() == render(CONTRACTS[name]), "stale: run `python -m schemas.export`"


def test_event_schema_requires_the_contract_fields():
    required = set(
        json.loads((SCHEMA_DIR / "inspection_event.schema.json").read_text())["required"]
    )
    assert {
        "schema_version",
        "event_id",
        "line",
        "station",
        "product_class",
        "captured_at",
    } <= required
    assert InspectionEvent.model_json_schema()["additionalProperties"] is False
