"""Read recorded images back through the URI their inspection row holds, for retraining.

A row in the database is data, not an instruction: a URI is only followed when it lies under a
configured image root, read by `model.data.uri_reader`, the reader the worker uses for events.
Everything else, like an inline image that left no URI, a file that was deleted or an
undecodable one, is *unavailable* with a reason, counted and reported by the caller, never
fatal by itself.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from model.data.images import ImageDecodeError, ImageTooLargeError, decode_image
from model.data.roots import Roots
from model.data.uri_reader import Refused, RefusedKind, Unreachable, read_uri

# Why a recorded image could not be used (the keys of the report's `unavailable` counts).
UNAVAILABLE_REASONS = ("inline", "outside_roots", "missing", "too_large", "undecodable", "error")
_UNAVAILABLE_AS: dict[RefusedKind, str] = {
    "outside_roots": "outside_roots",
    "missing": "missing",
    "too_large": "too_large",
    "no_store": "error",
}


class ImageUnavailable(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        assert reason in UNAVAILABLE_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class LoadedImage:
    uri: str
    data: bytes  # the encoded bytes, as stored
    sha256: str  # of `data`: the feature cache's key

    def decode(self) -> np.ndarray:
        """H x W x 3 uint8 RGB."""
        return decode_image(self.data)


class RecordedImages:
    """Reads image URIs under `roots` (directories, or URL prefixes such as s3://bucket/img/)."""

    def __init__(self, roots: list[str], max_bytes: int, max_pixels: int) -> None:
        self.roots = Roots.parse(roots)
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels

    @property
    def configured(self) -> bool:
        return self.roots.configured

    def load(self, uri: str | None) -> LoadedImage:
        """The image's bytes, checked to decode; `ImageUnavailable` with the reason otherwise."""
        if uri is None:
            raise ImageUnavailable("inline", "the image was sent inline; nothing to read back")
        data = self._read(uri)
        try:
            decode_image(data, self.max_pixels)
        except ImageTooLargeError as exc:
            raise ImageUnavailable("too_large", f"{uri}: {exc}") from exc
        except ImageDecodeError as exc:
            raise ImageUnavailable("undecodable", f"{uri}: {exc}") from exc
        return LoadedImage(uri, data, hashlib.sha256(data).hexdigest())

    def _read(self, uri: str) -> bytes:
        try:
            return read_uri(self.roots, uri, self.max_bytes)
        except Refused as exc:
            raise ImageUnavailable(_UNAVAILABLE_AS[exc.kind], str(exc)) from exc
        except Unreachable as exc:  # not this image's fault, but not usable in this run either
            raise ImageUnavailable("error", str(exc)) from exc
