import cv2
import numpy as np
import pytest

from model.data.images import ImageDecodeError, decode_image, read_mask, resize, to_batch


def encode(img_rgb: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def test_decode_gives_rgb_and_grey_becomes_three_channels():
    img = np.zeros((4, 6, 3), np.uint8)
    img[..., 0] = 200  # red
    out = decode_image(encode(img))
    assert out.shape == (4, 6, 3) and out[0, 0].tolist() == [200, 0, 0]
    _, grey = cv2.imencode(".png", np.full((5, 5), 77, np.uint8))
    assert decode_image(grey.tobytes())[0, 0].tolist() == [77, 77, 77]


def test_bad_bytes_are_refused_with_a_reason():
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")
    with pytest.raises(ImageDecodeError, match="undecodable"):
        decode_image(b"definitely not an image")
    with pytest.raises(ImageDecodeError, match="undecodable"):
        decode_image(b"not an image either", max_pixels=10_000)


def test_pixel_limit_refuses_before_decoding():
    big = encode(np.zeros((1200, 1000, 3), np.uint8))  # compresses to a few kB
    assert len(big) < 100_000
    with pytest.raises(ImageDecodeError, match="1000x1200"):
        decode_image(big, max_pixels=1_000_000)
    assert decode_image(big, max_pixels=1_200_000).shape == (1200, 1000, 3)


def test_resize_batch_and_masks(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (300, 256, 3), dtype=np.uint8)
    assert resize(img, 224).shape == (224, 224, 3)
    batch = to_batch([img, img[:100, :100]], 224)
    assert batch.shape == (2, 3, 224, 224) and str(batch.dtype) == "torch.uint8"
    mask = np.zeros((300, 256), np.uint8)
    mask[10:20, 30:40] = 255
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    m = read_mask(tmp_path / "m.png", 224)
    assert m.dtype == bool and m.any() and m.shape == (224, 224)
    assert not read_mask(None, 224).any()
