"""Heatmap PNGs: open as images, decode back to the map, land under a key fixed by the event id."""

from __future__ import annotations

from pathlib import Path

import cv2
import fsspec
import numpy as np

from worker.heatmaps import LEVELS, HeatmapStore, heatmap_key, read_heatmap


def a_map(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((224, 224)) * 40 + 60).astype(np.float32)


def test_png_decodes_back_to_the_map_within_quantisation(tmp_path: Path):
    amap = a_map()
    store = HeatmapStore(str(tmp_path))
    uri = store.write("line-3/evt:1", amap, {"score": "87.5", "model_version": "grad-x"})
    back, text = read_heatmap(uri)
    step = (amap.max() - amap.min()) / LEVELS
    assert np.abs(back - amap).max() <= step / 2 + 1e-5
    assert text["event_id"] == "line-3/evt:1" and text["model_version"] == "grad-x"
    # A person's viewer opens it: a plain 16-bit greyscale PNG, hottest where the map is highest.
    img = cv2.imread(uri.removeprefix("file://"), cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint16 and img.shape == (224, 224)
    assert np.unravel_index(img.argmax(), img.shape) == np.unravel_index(amap.argmax(), amap.shape)


def test_constant_map_survives():
    store = HeatmapStore("memory://heatmaps-const")
    back, _ = read_heatmap(store.write("e", np.full((8, 8), 3.25, np.float32), {}))
    assert np.all(back == 3.25)


def test_a_retry_overwrites_the_same_key(tmp_path: Path):
    store = HeatmapStore(str(tmp_path))
    first = store.write("evt-7", a_map(1), {})
    second = store.write("evt-7", a_map(2), {})
    assert first == second
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 1  # no temporary file left behind either
    assert np.allclose(read_heatmap(second)[0], a_map(2), atol=1e-3)


def test_keys_are_stable_safe_and_distinct():
    assert heatmap_key("a/b") == heatmap_key("a/b")
    assert heatmap_key("a/b") != heatmap_key("a_b")  # same readable part, different hash
    key = heatmap_key("../../etc/passwd")
    assert ".." not in key.split("/") and key.count("/") == 1


def test_object_store_backend():
    store = HeatmapStore("memory://plant-a/heatmaps")
    uri = store.write("evt-9", a_map(), {})
    assert uri.startswith("memory://plant-a/heatmaps/")
    assert fsspec.filesystem("memory").exists(uri.removeprefix("memory://"))
    assert np.allclose(read_heatmap(uri)[0], a_map(), atol=1e-3)
