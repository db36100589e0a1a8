"""Screenshots of the review station's four pages, from the records `python -m worker.demo`
leaves (the generated sample, never the licensed images), for the README.

    python -m worker.demo
    python -m bench.review_pages [--demo runs/worker-demo] [--out bench/figures]

Works on a copy of the demo's database and model store (the demo's own stay as they were):
labels parts as a reviewer would (one class's passed parts normal but one, which is labelled
anomalous, and two of its flagged parts normal, so the class page has mistakes to show; the
other class's passed parts normal), runs the real `python -m model.retrain` on those labels
for one epoch (a second version, with its lineage and gate report, for the models page),
serves the station on the copy in this process, signs in, and saves review-queue.png,
review-inspection.png, review-class.png and review-models.png, taken with Debian's headless
Chromium through Selenium.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from sqlalchemy import select

from model.stores.records import RecordStore
from schemas.tables import Inspection
from worker.embedded_broker import free_port
from worker.review.app import create_app
from worker.review.demo import DEMO_USER, demo_account, demo_settings

PAGES = ("queue", "inspection", "class", "models")


def chromium(width: int = 1280, height: int = 900) -> Any:
    """Headless Debian Chromium under Selenium (no browser download: the system's binaries)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (binary and driver_path):
        raise RuntimeError("no chromium/chromedriver: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.implicitly_wait(5)
    return driver


@contextmanager
def station(demo: Path, work: Path) -> Iterator[tuple[str, str, tuple[str, str, str]]]:
    """The station on a labelled, retrained copy of the demo's records (its heatmaps and images
    linked, not copied): the base URL, the demo user's password, and what `label_some` says."""
    copy = work / "demo"
    copy.mkdir()
    for name in ("summary.json", "inspections.sqlite3"):
        shutil.copy(demo / name, copy / name)
    for name in ("heatmaps", "archive"):
        if (demo / name).exists():
            (copy / name).symlink_to((demo / name).resolve())
    shutil.copytree(demo / "models", copy / "models")
    labelled = label_some(copy / "inspections.sqlite3")
    retrain(copy)
    settings = demo_settings(copy, free_port())
    password = demo_account(settings)
    config = uvicorn.Config(create_app(settings), port=settings.port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{settings.port}"
    _wait(base + "/readyz")
    try:
        yield base, password, labelled
    finally:
        server.should_exit = True
        thread.join(10)


def _wait(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer")
        time.sleep(0.2)


def label_some(db: Path) -> tuple[str, str, str]:
    """A reviewer's first labels; returns (the class shown, the inspection shown: its
    highest-scoring flagged part, the model version that scored them)."""
    t = Inspection.__table__
    with RecordStore(f"sqlite:///{db}") as records:
        with records.engine.connect() as conn:
            rows = conn.execute(
                select(t.c.event_id, t.c.product_class, t.c.score, t.c.is_anomalous,
                       t.c.model_version)
            ).all()  # fmt: skip
        classes = sorted({r.product_class for r in rows})
        for cls in classes:
            mine = sorted((r for r in rows if r.product_class == cls), key=lambda r: r.score)
            passed = [r.event_id for r in mine if not r.is_anomalous]
            for e in passed[:-1]:
                records.label(e, "normal", by="demo-reviewer")
            if cls == classes[0]:
                records.label(passed[-1], "anomalous", by="demo-reviewer", note="a hairline crack")
                for e in [r.event_id for r in mine if r.is_anomalous][:2]:
                    records.label(e, "normal", by="demo-reviewer", note="dust on the lens")
        shown = [r for r in rows if r.product_class == classes[0]]
        flagged = max(shown, key=lambda r: r.score)
    return classes[0], flagged.event_id, flagged.model_version


def retrain(copy: Path) -> None:
    """`python -m model.retrain` on the copy, as an operator runs it (one epoch: the pictures
    need a second version and its gate report, not a better model)."""
    data = json.loads((copy / "summary.json").read_text())["data"]
    subprocess.run(
        [
            sys.executable, "-m", "model.retrain", "--since", "30d", "--epochs", "1",
            "--min-per-class", "4", "--device", "cpu", "--by", "demo-reviewer",
            "--database-url", f"sqlite:///{copy / 'inspections.sqlite3'}",
            "--artifact-store", str(copy / "models"), "--image-root", data,
            "--image-root", str(copy / "archive"), "--out", str(copy / "retrain"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip


def shoot(base: str, password: str, shown: tuple[str, str, str], out: Path) -> list[Path]:
    cls, event_id, version = shown
    from selenium.webdriver.common.by import By

    driver = chromium()
    try:
        driver.get(base + "/login")
        driver.find_element(By.NAME, "name").send_keys(DEMO_USER)
        driver.find_element(By.NAME, "password").send_keys(password)
        driver.find_element(By.CSS_SELECTOR, "form.login button").click()
        driver.find_element(By.CSS_SELECTOR, "p.counts strong.total")  # fetched by the page
        paths = {
            "queue": "/",
            "inspection": f"/inspections/{event_id}",
            "class": f"/classes/{cls}?model_version={version}",
            "models": "/models",
        }
        saved = []
        for name in PAGES:
            driver.get(base + paths[name])
            driver.find_element(By.TAG_NAME, "main")
            if name == "queue":
                driver.find_element(By.CSS_SELECTOR, "p.counts strong.total")
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(1280, min(max(int(height), 700), 1500))  # the whole page
            time.sleep(0.5)  # the overlay image and fonts settle
            path = out / f"review-{name}.png"
            driver.save_screenshot(str(path))
            saved.append(path)
        return saved
    finally:
        driver.quit()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m bench.review_pages", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--demo", type=Path, default=Path("runs/worker-demo"))
    ap.add_argument("--out", type=Path, default=Path("bench/figures"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, station(args.demo.resolve(), Path(tmp)) as served:
        base, password, shown = served
        for path in shoot(base, password, shown, args.out):
            print(f"saved {path}")


if __name__ == "__main__":
    main()
