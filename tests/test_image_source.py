"""Fetching images for events: roots enforced, bad images refused with the right reason, transient
failures retried. Real files, a real fsspec store (memory://), real encoders."""

from __future__ import annotations

import base64
import os
from datetime import datetime, timezone
from pathlib import Path

import cv2
import fsspec
import numpy as np
import pytest

from schemas import InspectionEvent
from worker.image_source import ImageSource, Rejected, TransientError


def event(uri: str | None = None, b64: str | None = None) -> InspectionEvent:
    return InspectionEvent(
        schema_version=1,
        event_id="e-1",
        line="l",
        station="s",
        product_class="c",
        captured_at=datetime.now(timezone.utc),
        image_uri=uri,
        image_b64=b64,
    )


def png(h: int = 32, w: int = 48) -> bytes:
    img = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    return cv2.imencode(".png", img)[1].tobytes()


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    allowed = tmp_path / "images"
    outside = tmp_path / "private"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "ok.png").write_bytes(png())
    (outside / "secret.png").write_bytes(png())
    (allowed / "junk.png").write_bytes(b"not an image at all")
    os.symlink(outside / "secret.png", allowed / "escape.png")
    return allowed, outside


def source(*roots: str | Path, **kw) -> ImageSource:
    return ImageSource(
        [str(r) for r in roots],
        max_bytes=kw.pop("max_bytes", 1 << 20),
        max_pixels=kw.pop("max_pixels", 10_000),
        **kw,
    )


def test_file_uri_under_a_root_is_read(roots):
    allowed, _ = roots
    img = source(allowed).load(event((allowed / "ok.png").as_uri()))
    assert img.shape == (32, 48, 3) and img.dtype == np.uint8


@pytest.mark.parametrize(
    "uri",
    [
        "{outside}/secret.png",
        "file://{outside}/secret.png",
        "file://{allowed}/../private/secret.png",
        "file://{allowed}/escape.png",  # a symlink inside the root pointing out of it
        "file://otherhost{allowed}/ok.png",
        "memory://bucket/ok.png",  # a scheme no root allows
    ],
)
def test_nothing_outside_the_roots_is_read(roots, uri):
    allowed, outside = roots
    with pytest.raises(Rejected) as exc:
        source(allowed).load(event(uri.format(allowed=allowed, outside=outside)))
    assert exc.value.reason == "uri_not_allowed"


def test_missing_file_and_directory_are_not_found(roots):
    allowed, _ = roots
    for uri in [(allowed / "nope.png").as_uri(), allowed.as_uri()]:
        with pytest.raises(Rejected) as exc:
            source(allowed).load(event(uri))
        assert exc.value.reason == "image_not_found"


def test_undecodable_and_oversized_images(roots):
    allowed, _ = roots
    with pytest.raises(Rejected) as exc:
        source(allowed).load(event((allowed / "junk.png").as_uri()))
    assert exc.value.reason == "undecodable_image"
    with pytest.raises(Rejected) as exc:  # 32 x 48 = 1536 pixels
        source(allowed, max_pixels=1000).load(event((allowed / "ok.png").as_uri()))
    assert exc.value.reason == "image_too_large"
    with pytest.raises(Rejected) as exc:
        source(allowed, max_bytes=100).load(event((allowed / "ok.png").as_uri()))
    assert exc.value.reason == "image_too_large"


def test_decompression_bomb_is_refused_from_its_header():
    # 20000 x 20000 of zeros: a few hundred KB compressed, 1.2 GB decoded.
    bomb = cv2.imencode(
        ".png", np.zeros((20000, 20000), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9]
    )[1]
    with pytest.raises(Rejected) as exc:
        source(max_bytes=1 << 30).load(event(b64=base64.b64encode(bomb.tobytes()).decode()))
    assert exc.value.reason == "image_too_large"


def test_inline_images():
    data = png()
    img = source().load(event(b64=base64.b64encode(data).decode()))
    assert img.shape == (32, 48, 3)
    with pytest.raises(Rejected) as exc:
        source().load(event(b64="not*base64"))
    assert exc.value.reason == "undecodable_image"
    with pytest.raises(Rejected) as exc:
        source(max_bytes=100).load(event(b64=base64.b64encode(data).decode()))
    assert exc.value.reason == "image_too_large"


def test_object_store_urls_through_fsspec():
    fs = fsspec.filesystem("memory")
    fs.pipe("/line3/images/a.png", png())
    fs.pipe("/other/b.png", png())
    src = source("memory://line3/images")
    assert src.load(event("memory://line3/images/a.png")).shape == (32, 48, 3)
    for uri, reason in [
        ("memory://other/b.png", "uri_not_allowed"),
        ("memory://line3/images/../../other/b.png", "uri_not_allowed"),
        ("memory://line3/images-evil/a.png", "uri_not_allowed"),  # prefix, not a subdirectory
        ("memory://line3/images/missing.png", "image_not_found"),
    ]:
        with pytest.raises(Rejected) as exc:
            src.load(event(uri))
        assert exc.value.reason == reason, uri


class FlakyStore(ImageSource):
    """A store that fails transiently a set number of times. The real stores cannot be made to
    fail on cue, so this overrides the one method that talks to them."""

    def __init__(self, failures: int, **kw) -> None:
        super().__init__([], max_bytes=1 << 20, max_pixels=10_000, **kw)
        self.failures = failures
        self.calls = 0

    def _read_uri(self, uri: str) -> bytes:
        self.calls += 1
        if self.calls <= self.failures:
            raise TransientError("connection reset")
        return png()


def test_transient_failures_are_retried_then_dead_lettered():
    retried: list[str] = []
    src = FlakyStore(3, on_retry=lambda uri, exc: retried.append(uri), sleep=lambda s: None)
    assert src.load(event("s3://b/a.png")).shape == (32, 48, 3)
    assert src.calls == 4 and len(retried) == 3

    slept: list[float] = []
    src = FlakyStore(10**9, transient_retry_s=5.0, sleep=slept.append)
    with pytest.raises(Rejected) as exc:
        src.load(event("s3://b/a.png"))
    assert exc.value.reason == "transient_retries_exhausted"
    assert slept == sorted(slept) and max(slept) <= 10.0  # exponential backoff, capped
