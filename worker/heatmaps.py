"""Heatmap store: one PNG per event, under a key derived from the event id alone.

The PNG is 16-bit greyscale (bright = anomalous), so any image viewer opens it, and its text
chunks carry the linear scale back to raw map values (`grad:min`, `grad:max`) together with the
event id, score and model version. Quantisation error is at most (max - min) / 65535 / 2, far
below what separates a defect from a good part. A retry writes the same key, so redelivery
overwrites instead of duplicating. Local directories get an atomic rename; any other fsspec URL
(s3://bucket/heatmaps) is written with one put.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import fsspec
import numpy as np
from PIL import Image, PngImagePlugin

LEVELS = 65535


def heatmap_key(event_id: str) -> str:
    """`ab/<readable id>-<hash>.png`: stable for an id, safe as a path, spread over 256 dirs."""
    digest = hashlib.sha256(event_id.encode()).hexdigest()
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", event_id)[:80]
    return f"{digest[:2]}/{readable}-{digest[:12]}.png"


def encode_png(amap: np.ndarray, text: dict[str, str]) -> bytes:
    lo, hi = float(amap.min()), float(amap.max())
    span = hi - lo
    q = np.zeros(amap.shape, np.uint16) if span == 0 else np.rint((amap - lo) / span * LEVELS)
    img = Image.fromarray(q.astype(np.uint16))
    info = PngImagePlugin.PngInfo()
    info.add_text("grad:min", repr(lo))
    info.add_text("grad:max", repr(hi))
    for k, v in text.items():
        info.add_text(f"grad:{k}", v)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info, compress_level=1)
    return buf.getvalue()


def decode_png(data: bytes) -> tuple[np.ndarray, dict[str, str]]:
    """The raw map (float32) and the text chunks of a heatmap PNG."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        q = np.asarray(img, dtype=np.float64)
        text = {k[5:]: v for k, v in img.text.items() if k.startswith("grad:")}
    lo, hi = float(text["min"]), float(text["max"])
    return (lo + q / LEVELS * (hi - lo)).astype(np.float32), text


class HeatmapStore:
    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.local: Path | None = None
        if parts.scheme in ("", "file"):
            self.local = Path(parts.path if parts.scheme else base).resolve()
            self.base_uri = self.local.as_uri()
        else:
            self.base_uri = base.rstrip("/")
            self.fs, self.root = fsspec.core.url_to_fs(self.base_uri)

    def uri_for(self, event_id: str) -> str:
        return f"{self.base_uri}/{heatmap_key(event_id)}"

    def write(self, event_id: str, amap: np.ndarray, text: dict[str, str]) -> str:
        """Store the map; returns its URI. OSError and store errors propagate (transient)."""
        data = encode_png(amap, {"event_id": event_id, **text})
        key = heatmap_key(event_id)
        if self.local is not None:
            path = self.local / key
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".png")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        else:
            self.fs.pipe_file(f"{self.root}/{key}", data)
        return self.uri_for(event_id)


def read_heatmap(uri: str) -> tuple[np.ndarray, dict[str, str]]:
    """Open a heatmap by its URI (what a downstream reader does)."""
    with fsspec.open(uri, "rb") as f:
        return decode_png(f.read())
