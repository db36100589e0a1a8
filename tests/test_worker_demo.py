"""The README's first command: the worker demo on a fresh machine's embedded defaults."""

from __future__ import annotations

import json
import re

import pytest

from tests.test_end_to_end import run
from worker.heatmaps import read_heatmap

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_worker_demo_streams_the_sample_through_a_real_worker(tmp_path):
    out = run("worker.demo", "--epochs", "3", "--out", str(tmp_path / "demo"), cwd=tmp_path)
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["results"] == 32 and summary["dead_letters"] == 0
    assert summary["rows"] == 32  # every inspection recorded in the embedded SQLite database
    rows = {
        m["cls"]: m
        for m in re.finditer(
            r"^(?P<cls>fabric|ring)\s+(?P<n>\d+)\s+(?P<caught>\d+)/(?P<bad>\d+)\s+"
            r"(?P<alarms>\d+)/(?P<good>\d+)\s+\d+ ms\s+\d+ ms\s+(?P<cal>yes|no)$",
            out,
            re.MULTILINE,
        )
    }
    assert set(rows) == {"fabric", "ring"}, out
    for m in rows.values():
        assert m["cal"] == "yes" and int(m["n"]) == 16
        assert int(m["caught"]) >= 6, out  # the sample's defects are plain to see
        assert int(m["alarms"]) <= 2, out
    uris = re.findall(r"(file://\S+\.png)", out)
    assert uris, out
    amap, text = read_heatmap(uris[0])
    assert amap.shape == (224, 224) and text["model_version"].startswith("grad-")
    assert "worker exited with 0" in out
