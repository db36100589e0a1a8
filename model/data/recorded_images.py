"""Read recorded images back through the URI their inspection row holds, for retraining.

A row in the database is data, not an instruction: a URI is only followed when it lies under a
configured image root (local directories are resolved, symlinks included, before the check; URLs
must start with a configured prefix and carry no `..` segment): `model.data.roots`, the rule the
worker applies to events. Everything else, like an inline image that left no URI, a file that
was deleted or an undecodable one, is *unavailable* with a reason, counted and reported by the
caller, never fatal by itself.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np

from model.data.images import ImageDecodeError, ImageTooLargeError, decode_image
from model.data.roots import OutsideRoots, Roots

# Why a recorded image could not be used (the keys of the report's `unavailable` counts).
UNAVAILABLE_REASONS = ("inline", "outside_roots", "missing", "too_large", "undecodable", "error")


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
            where = self.roots.resolve(uri)
        except OutsideRoots as exc:
            raise ImageUnavailable("outside_roots", str(exc)) from exc
        if isinstance(where, Path):
            try:
                with where.open("rb") as f:
                    if os.fstat(f.fileno()).st_size > self.max_bytes:
                        raise ImageUnavailable("too_large", f"{uri} above {self.max_bytes} bytes")
                    return f.read()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
                raise ImageUnavailable("missing", f"{uri}: {exc.strerror}") from exc
            except PermissionError as exc:
                raise ImageUnavailable("outside_roots", f"{uri}: permission denied") from exc
            except OSError as exc:
                raise ImageUnavailable("error", f"{uri}: {exc}") from exc
        try:
            fs, path = fsspec.core.url_to_fs(uri)
            size = fs.size(path)
            if size is not None and size > self.max_bytes:
                raise ImageUnavailable("too_large", f"{uri} is {size} bytes")
            data = fs.cat_file(path)
        except ImageUnavailable:
            raise
        except FileNotFoundError as exc:
            raise ImageUnavailable("missing", f"{uri} does not exist") from exc
        except Exception as exc:  # unknown scheme, driver missing, network: not this image's use
            raise ImageUnavailable("error", f"{uri}: {type(exc).__name__}: {exc}") from exc
        if len(data) > self.max_bytes:
            raise ImageUnavailable("too_large", f"{uri} is {len(data)} bytes")
        return data
