"""Fetch and decode an event's image: inline base64, a file under the configured roots, or an
object-store URL through fsspec.

Two kinds of failure, because they need opposite handling:
- `Rejected`: the record itself is bad (outside the roots, missing, undecodable, too large).
  Retrying cannot help; the record goes to the dead-letter topic with the reason.
- a transient failure (store unreachable, I/O hiccup): retried with backoff for
  `transient_retry_s`, then dead-lettered as `transient_retries_exhausted`, so a poisoned URI
  cannot stall a partition forever and the record is still kept for replay.

An event never makes the worker read outside the configured roots: the bytes are read by
`model.data.uri_reader`, the reader the retraining uses for recorded rows too (local paths are
resolved, symlinks included, before the check; URLs must start with a configured prefix and
carry no `..` segment).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable

import numpy as np

from model.core.backoff import Backoff
from model.data.images import ImageDecodeError, ImageTooLargeError, decode_image
from model.data.roots import Roots
from model.data.uri_reader import Refused, RefusedKind, Unreachable, read_uri
from schemas import InspectionEvent
from worker.rejected import Rejected

__all__ = ["ImageSource", "Rejected", "TransientError"]


class TransientError(Exception):
    """The store could not answer now; the same request may succeed later."""


# The dead-letter reason of a URI the reader refuses (`model.data.uri_reader`).
_REJECTED_AS: dict[RefusedKind, str] = {
    "outside_roots": "uri_not_allowed",
    "no_store": "uri_not_allowed",
    "missing": "image_not_found",
    "too_large": "image_too_large",
}


class ImageSource:
    def __init__(
        self,
        roots: list[str],
        max_bytes: int,
        max_pixels: int,
        transient_retry_s: float = 300.0,
        on_retry: Callable[[str, Exception], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.roots = Roots.parse(roots)
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.transient_retry_s = transient_retry_s
        self.on_retry = on_retry or (lambda uri, exc: None)
        self.sleep = sleep

    def load(self, event: InspectionEvent) -> np.ndarray:
        """H x W x 3 uint8 RGB, or `Rejected`. Transient failures are retried here."""
        return self.decode(self.fetch(event))

    def decode(self, data: bytes) -> np.ndarray:
        try:
            return decode_image(data, self.max_pixels)
        except ImageTooLargeError as exc:
            raise Rejected("image_too_large", str(exc)) from exc
        except ImageDecodeError as exc:
            raise Rejected("undecodable_image", str(exc)) from exc

    def fetch(self, event: InspectionEvent) -> bytes:
        if event.image_b64 is not None:
            return self._inline(event.image_b64)
        assert event.image_uri is not None  # the schema requires one of the two
        deadline = time.monotonic() + self.transient_retry_s
        backoff = Backoff(first=0.1)
        while True:
            try:
                return self._read_uri(event.image_uri)
            except TransientError as exc:
                if time.monotonic() + backoff.delay > deadline:
                    raise Rejected(
                        "transient_retries_exhausted",
                        f"{event.image_uri}: still failing after {self.transient_retry_s:.0f} s: "
                        f"{exc}",
                    ) from exc
                self.on_retry(event.image_uri, exc)
                self.sleep(backoff.wait())

    def _inline(self, b64: str) -> bytes:
        if len(b64) > (self.max_bytes * 4) // 3 + 4:
            raise Rejected("image_too_large", f"inline image above {self.max_bytes} bytes")
        try:
            return base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise Rejected("undecodable_image", f"image_b64 is not valid base64: {exc}") from exc

    def _read_uri(self, uri: str) -> bytes:
        try:
            return read_uri(self.roots, uri, self.max_bytes)
        except Refused as exc:
            raise Rejected(_REJECTED_AS[exc.kind], str(exc)) from exc
        except Unreachable as exc:
            raise TransientError(str(exc)) from exc
