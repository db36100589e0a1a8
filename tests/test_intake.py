"""Limits before parsing and strict contracts: every hostile value is a `Rejected` with the
reason of its class, never another exception."""

from __future__ import annotations

import json

import pytest

from worker.intake import RecordLimits, check_limits, json_depth, parse_event, parse_label
from worker.rejected import Rejected

GOOD = {
    "schema_version": 1,
    "event_id": "e-1",
    "line": "l",
    "station": "s",
    "product_class": "cookie",
    "captured_at": "2026-12-01T00:00:00+00:00",
    "image_uri": "file:///images/a.png",
}


def ev(**kw: object) -> bytes:
    return json.dumps({**GOOD, **kw}).encode()


def reason(value: bytes | None, limits: RecordLimits | None = None) -> str:
    with pytest.raises(Rejected) as info:
        parse_event(value, limits)
    return info.value.reason


def test_a_good_event_parses():
    assert parse_event(ev()).captured_at.utcoffset() is not None


def test_depth_is_measured_outside_strings():
    assert json_depth(b'{"a":[[{}]]}') == 4
    assert json_depth(b"") == 0
    # Brackets inside strings do not count: the scan runs on the text with strings removed.
    check_limits(ev(attributes={"s": "[[[[[[[[" * 100}), RecordLimits(max_json_depth=4))


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "depth: json.loads raised RecursionError"),
        (b'{"a":' * 5000 + b"1" + b"}" * 5000, "depth in an object"),
        (ev(attributes={"n": 1}).replace(b'"n": 1', b'"n": ' + b"9" * 5000), "4,300-digit limit"),
        (ev(attributes={"s": "x" * 70_000}), "attributes above their limit"),
    ],
)
def test_limits_come_before_the_parser(value: bytes, why: str):
    assert reason(value) == "limit_exceeded", why


def test_a_value_above_the_size_limit_is_not_parsed():
    assert reason(ev(), RecordLimits(max_value_bytes=50)) == "limit_exceeded"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (ev(attributes={"n": 1}).replace(b"1}", b"NaN}"), "invalid_json"),
        (ev(attributes={"n": 1}).replace(b"1}", b"1e999}"), "invalid_json"),
        (ev(attributes={"a": "x"}).replace(b'"x"', b'"\\udc00"'), "invalid_json"),
        (ev(attributes={"a": "x\x00"}), "invalid_json"),
        (ev(line="a\x00b"), "invalid_json"),
        (ev().decode().encode("utf-16"), "invalid_json"),
        (b"\xff\xfe not utf-8", "invalid_json"),
        (ev(schema_version=True), "unknown_schema_version"),
        (ev(schema_version=1.0), "unknown_schema_version"),
        (ev(captured_at=1_700_000_000), "invalid_event"),
        (ev(line=5), "invalid_event"),
        (ev(station="a\x01b"), "invalid_event"),
        (ev(image_uri="file://[/x.png"), "invalid_event"),
        (ev(image_uri="file:///x%00.png"), "invalid_event"),
        (ev(event_id="a/../../x"), "invalid_event"),
        (ev(event_id="a//b"), "invalid_event"),
        (None, "invalid_json"),
    ],
)
def test_strict_contract(value: bytes | None, expected: str):
    assert reason(value) == expected


def test_labels_are_strict_too():
    label = {"schema_version": 1, "event_id": "e-1", "label": "normal", "by": "anna"}
    assert parse_label(json.dumps(label).encode()).by == "anna"
    with pytest.raises(Rejected) as info:
        parse_label(json.dumps({**label, "by": "a\x00"}).encode())
    assert info.value.reason == "invalid_json"
    with pytest.raises(Rejected) as info:
        parse_label(json.dumps({**label, "labelled_at": 5}).encode())
    assert info.value.reason == "invalid_label"


def test_a_large_inline_image_passes_the_scans():
    value = ev(image_uri=None, image_b64="QUFB" * (3 * 1024 * 1024))  # 12 MiB of base64
    assert parse_event(value).image_b64 is not None
