"""The README's first command: the worker demo on a fresh machine's embedded defaults."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import httpx
import pytest
from sqlalchemy import func, select

from model.inference.checkpoint import read_meta
from model.stores.records import RecordStore
from schemas.tables import Inspection
from tests.conftest import REPO
from tests.test_end_to_end import run
from worker.embedded_broker import free_port
from worker.heatmaps import read_heatmap

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """One run of the README's first command: (what it printed, its directory)."""
    tmp = tmp_path_factory.mktemp("worker-demo")
    out = run("worker.demo", "--epochs", "3", "--out", str(tmp / "demo"), cwd=tmp)
    return out, tmp / "demo"


def test_worker_demo_streams_the_sample_through_a_real_worker(demo):
    out, where = demo
    summary = json.loads((where / "summary.json").read_text())
    assert summary["results"] == 32 and summary["dead_letters"] == 0
    assert summary["rows"] == 32  # every inspection recorded in the embedded SQLite database
    rows = {
        m["cls"]: m
        for m in re.finditer(
            r"^(?P<cls>fabric|ring)\s+(?P<n>\d+)\s+(?P<caught>\d+)/(?P<bad>\d+)\s+"
            r"(?P<alarms>\d+)/(?P<good>\d+)\s+\d+ ms\s+\d+ ms\s+(?P<cal>yes|provisional|no)$",
            out,
            re.MULTILINE,
        )
    }
    assert set(rows) == {"fabric", "ring"}, out
    calibration = read_meta(where / "model.safetensors").calibration
    for cls, m in rows.items():
        # Its own threshold, said to be provisional when it rests on few normal images.
        assert m["cal"] == ("yes" if calibration[cls].steady else "provisional"), out
        assert int(m["n"]) == 16
        assert int(m["caught"]) >= 6, out  # the sample's defects are plain to see
        assert int(m["alarms"]) <= 2, out
    uris = re.findall(r"(file://\S+\.png)", out)
    assert uris, out
    amap, text = read_heatmap(uris[0])
    assert amap.shape == (224, 224) and text["model_version"].startswith("grad-")
    assert "worker exited with 0" in out


def test_the_review_station_opens_on_what_the_demo_left(demo):
    """`python -m worker.review demo`, as the demo's last line says: sign in with the password
    it prints, and the queue, a class page and the models page show the demo's records."""
    out, where = demo
    summary = json.loads((where / "summary.json").read_text())
    assert f"python -m worker.review demo --out {where}" in out
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.review", "demo", "--out", str(where), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(2)]  # type: ignore[union-attr]
        password = re.search(r"sign in as demo with the password (\S+)", "".join(lines))
        assert password, lines
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=10) as client:
            for _ in range(100):
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            signed = client.post("/login", data={"name": "demo", "password": password[1]})
            assert signed.status_code == 303
            queue = client.get("/").text
            counts = client.get("/counts").text
            assert re.search(r'<strong class="total">(\d+)</strong>', counts)[1] == "32"  # type: ignore[index]
            version = summary["model_version"]
            models = client.get("/models").text
            assert f'<tr class="active">\n    <td><a href="/models/{version}">' in models
            page = client.get("/classes/fabric").text
            assert "Threshold <strong>" in page and "16 parts scored by" in page
            event = re.search(r'href="/inspections/([^"?]+)', queue)[1]  # type: ignore[index]
            assert client.get(f"/media/{event}/image").status_code == 200
            assert client.get(f"/media/{event}/overlay").status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)


def test_screenshots_of_the_four_pages_come_from_the_demo(demo, tmp_path):
    """bench.review_pages, which made the README's pictures, on this run's records."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("no chromium/chromedriver: apt-get install chromium chromium-driver")
    _, where = demo
    run("bench.review_pages", "--demo", str(where), "--out", str(tmp_path), cwd=REPO)
    for page in ("queue", "inspection", "class", "models"):
        img = cv2.imread(str(tmp_path / f"review-{page}.png"))
        assert img is not None and img.shape[1] == 1280 and img.shape[0] >= 700, page
        assert img.std() > 10, f"{page}: a blank page"
    # It labelled a copy: the demo's own records have no labels.
    with RecordStore(f"sqlite:///{where / 'inspections.sqlite3'}") as records:
        t = Inspection.__table__
        with records.engine.connect() as conn:
            labelled = conn.execute(select(func.count()).where(t.c.label.is_not(None))).scalar()
    assert labelled == 0
