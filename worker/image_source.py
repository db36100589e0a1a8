"""Fetch and decode an event's image: inline base64, a file under the configured roots, or an
object-store URL through fsspec.

Two kinds of failure, because they need opposite handling:
- `Rejected`: the record itself is bad (outside the roots, missing, undecodable, too large).
  Retrying cannot help; the record goes to the dead-letter topic with the reason.
- a transient failure (store unreachable, I/O hiccup): retried with backoff for
  `transient_retry_s`, then dead-lettered as `transient_retries_exhausted`, so a poisoned URI
  cannot stall a partition forever and the record is still kept for replay.

An event never makes the worker read outside the configured roots (`model.data.roots`, the rule the
retraining applies to recorded rows too): local paths are resolved (symlinks included) before the
check, and URLs must start with a configured prefix and carry no `..` segment.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import fsspec
import numpy as np

from model.data.images import ImageDecodeError, ImageTooLargeError, decode_image
from model.data.roots import OutsideRoots, Roots
from schemas import InspectionEvent
from worker.rejected import Rejected

__all__ = ["ImageSource", "Rejected", "TransientError"]


class TransientError(Exception):
    """The store could not answer now; the same request may succeed later."""


_NOT_FOUND = (FileNotFoundError, IsADirectoryError, NotADirectoryError)
# OS errors that name the request, not the moment: a name too long, a symlink loop, an invalid
# argument. Retrying them for `transient_retry_s` would only stall the partition.
_PERMANENT_ERRNO = {errno.ENAMETOOLONG, errno.ELOOP, errno.EINVAL, errno.EILSEQ, errno.ENXIO}


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
        delay = 0.1
        while True:
            try:
                return self._read_uri(event.image_uri)
            except TransientError as exc:
                if time.monotonic() + delay > deadline:
                    raise Rejected(
                        "transient_retries_exhausted",
                        f"{event.image_uri}: still failing after {self.transient_retry_s:.0f} s: "
                        f"{exc}",
                    ) from exc
                self.on_retry(event.image_uri, exc)
                self.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _inline(self, b64: str) -> bytes:
        if len(b64) > (self.max_bytes * 4) // 3 + 4:
            raise Rejected("image_too_large", f"inline image above {self.max_bytes} bytes")
        try:
            return base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise Rejected("undecodable_image", f"image_b64 is not valid base64: {exc}") from exc

    def _read_uri(self, uri: str) -> bytes:
        try:
            where = self.roots.resolve(uri)
        except OutsideRoots as exc:
            raise Rejected("uri_not_allowed", str(exc)) from exc
        return self._read_local(uri, where) if isinstance(where, Path) else self._read_remote(uri)

    def _read_local(self, uri: str, path: Path) -> bytes:
        try:
            # O_NONBLOCK: a FIFO or a device under a root must not block the open (a FIFO with
            # no writer would hang the decode pool, and with it the partition, for good).
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise Rejected("image_not_found", f"{uri} is not a regular file")
                if st.st_size > self.max_bytes:
                    raise Rejected("image_too_large", f"{uri} is {st.st_size} bytes")
                data = f.read(self.max_bytes + 1)
            if len(data) > self.max_bytes:  # it grew after the stat
                raise Rejected("image_too_large", f"{uri} is above {self.max_bytes} bytes")
            return data
        except _NOT_FOUND as exc:
            raise Rejected("image_not_found", f"{uri}: {exc.strerror}") from exc
        except PermissionError as exc:
            raise Rejected("uri_not_allowed", f"{uri}: permission denied") from exc
        except OSError as exc:
            if exc.errno in _PERMANENT_ERRNO:
                raise Rejected("image_not_found", f"{uri}: {exc.strerror}") from exc
            # EIO, ESTALE on a network volume: worth another try.
            raise TransientError(f"{uri}: {exc}") from exc

    def _read_remote(self, uri: str) -> bytes:
        try:
            fs, path = fsspec.core.url_to_fs(uri)
        except (ValueError, ImportError) as exc:  # unknown protocol, driver not installed
            raise Rejected("uri_not_allowed", f"{uri}: no store for this scheme: {exc}") from exc
        try:
            size = fs.size(path)
            if size is not None and size > self.max_bytes:
                raise Rejected("image_too_large", f"{uri} is {size} bytes")
            data = fs.cat_file(path)
        except _NOT_FOUND as exc:
            raise Rejected("image_not_found", f"{uri} does not exist") from exc
        except Rejected:
            raise
        except Exception as exc:  # network, credentials refresh, throttling: the store's problem
            raise TransientError(f"{uri}: {type(exc).__name__}: {exc}") from exc
        if len(data) > self.max_bytes:
            raise Rejected("image_too_large", f"{uri} is {len(data)} bytes")
        return data
