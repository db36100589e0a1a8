"""Image decoding and resizing: the one preprocessing path for training, evaluation and serving.

Pixels stay uint8 RGB until the backbone normalises them, so the same bytes give the same score
wherever they are scored.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch


class ImageDecodeError(ValueError):
    """The bytes are not an image this service can read (or exceed the pixel limit)."""


class ImageTooLargeError(ImageDecodeError):
    """The image header announces more pixels than the limit (a decompression bomb, say)."""


def decode_image(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """Decode encoded image bytes (PNG, JPEG, BMP, TIFF, ...) to H x W x 3 uint8 RGB.

    With `max_pixels`, a decompression bomb is refused before its full-size decode.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size == 0:
        raise ImageDecodeError("empty image")
    if max_pixels is not None:
        # Pillow reads only the header here, so a decompression bomb is refused before any
        # pixel is allocated (OpenCV would decode a PNG fully even for a reduced read).
        try:
            with Image.open(io.BytesIO(data)) as header:
                width, height = header.size
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(str(exc)) from exc
        except OSError as exc:
            raise ImageDecodeError(f"undecodable image: {exc}") from exc
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"image is {width}x{height}, above the {max_pixels}-pixel limit"
            )
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        raise ImageDecodeError("undecodable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_image(path: Path, max_pixels: int | None = None) -> np.ndarray:
    return decode_image(Path(path).read_bytes(), max_pixels)


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """Square resize; area averaging when shrinking (no aliasing), bilinear when growing."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    shrink = img.shape[0] > size or img.shape[1] > size
    return cv2.resize(
        img, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    )


def read_mask(path: Path | None, size: int, like: tuple[int, int] | None = None) -> np.ndarray:
    """Binary defect mask at size x size by nearest neighbour; all zeros when there is none."""
    if path is None:
        return np.zeros((size, size), dtype=bool)
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise ImageDecodeError(f"unreadable mask {path}")
    return cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST) > 127


def to_batch(images: list[np.ndarray], size: int) -> torch.Tensor:
    """List of H x W x 3 uint8 RGB images to a B x 3 x size x size uint8 tensor.

    torch is imported here, not with the module: decoding images (the review station, the
    worker's fetch pool) needs no torch."""
    import torch

    arr = np.stack([resize(im, size) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
