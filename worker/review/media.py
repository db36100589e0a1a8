"""An inspection's pictures: the image the camera took and its anomaly map as a colour overlay.

Both are read only through the URIs the worker recorded for the event, and only under the
configured roots (`REVIEW_IMAGE_ROOTS` for images, `REVIEW_HEATMAP_STORE` for maps): a request
names an event id, never a path. The overlay is scaled to the class threshold, not to the map's
own range: the map is in the units of the image score (the score is its largest local mean), so
value / threshold is the same risk on every image; 1.0 (the threshold) is the middle of the
colour scale, 2.0 and above its top, and the overlay is transparent where the map is near 0.
"""

from __future__ import annotations

import cv2
import numpy as np

from model.data.recorded_images import ImageUnavailable, RecordedImages
from model.data.roots import Roots
from model.data.uri_reader import Refused, Unreachable, read_uri
from worker.heatmaps import decode_png

TOP = 2.0  # value / threshold at the top of the colour scale
MAX_HEATMAP_BYTES = 64 * 1024 * 1024


class MediaUnavailable(Exception):
    """Nothing to show (not recorded, outside the roots, missing, unreadable): a 404."""


def content_type(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data.startswith(b"BM"):
        return "image/bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    return "application/octet-stream"


def image_bytes(images: RecordedImages, uri: str | None) -> bytes:
    try:
        return images.load(uri).data
    except ImageUnavailable as exc:
        raise MediaUnavailable(str(exc)) from exc


def overlay_png(heatmaps: Roots, uri: str, threshold: float) -> bytes:
    """The map at `uri` as an RGBA PNG: colour by value / threshold, alpha rising with it."""
    try:
        data = read_uri(heatmaps, uri, MAX_HEATMAP_BYTES)
        amap, _ = decode_png(data)
    except (Refused, Unreachable, ValueError, OSError) as exc:
        raise MediaUnavailable(f"{uri}: {exc}") from exc
    return colour_overlay(amap, threshold)


def colour_overlay(amap: np.ndarray, threshold: float) -> bytes:
    """Pure: the map scaled to the threshold, as an RGBA PNG (see the module's docstring)."""
    risk = np.clip(amap.astype(np.float32) / max(threshold, 1e-12) / TOP, 0.0, 1.0)
    level = np.rint(risk * 255).astype(np.uint8)
    bgr = cv2.applyColorMap(level, cv2.COLORMAP_TURBO)
    alpha = np.rint(np.clip(risk * 2.0, 0.0, 1.0) * 255).astype(np.uint8)
    ok, png = cv2.imencode(".png", np.dstack([bgr, alpha]))
    if not ok:
        raise MediaUnavailable("could not encode the overlay")
    return png.tobytes()
