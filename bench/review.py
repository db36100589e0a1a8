"""The review station on a million inspections: response times of its pages in PostgreSQL.

    python -m bench.review [--rows 1000000] [--postgres URL] [--requests 40]

Makes a fresh database on the PostgreSQL server at `--postgres` (default GRAD_TEST_POSTGRES_URL,
as `.ci/services` exports it), runs the migrations (so the queue's index is the one production
gets), fills `inspections` with `--rows` rows through COPY (ten lines, forty stations, eight
classes, three model versions, a quarter labelled, scores spread around the threshold), runs
VACUUM ANALYZE, starts `python -m worker.review` on it as an operator does and times, over HTTP with
a signed-in reviewer, the queue's first page (with its counts), pages deep in it (following the
cursor), the queue filtered by class, by verdict and by line and station, an inspection page,
a class page over 7 and 30 days (the newest model active; three versions and every class
calibrated in the registry), the class index and the models page. Prints p50 and
p95 per page and the queue query's plan, writes JSON (default runs/bench/review.json), and drops
the database.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from http.cookiejar import CookieJar
from pathlib import Path

import numpy as np
import psycopg
from sqlalchemy import create_engine, pool, text
from sqlalchemy.engine import make_url

from model.metrics.calibration import calibrate
from model.stores.migrations import migrate
from model.stores.records import RecordStore
from worker.embedded_broker import free_port
from worker.review import classes as k
from worker.review import queue as q
from worker.review.accounts import add_user

CLASSES = [f"class-{i}" for i in range(8)]
LINES = [f"line-{i}" for i in range(10)]
VERSIONS = ["grad-00000000000000a1", "grad-00000000000000b2", "grad-00000000000000c3"]
PASSWORD = "bench-reviewer-pw"
# Rows two seconds apart, the newest a minute ago: a million of them are the last 23 days of
# a busy plant, so the class pages' windows (7 and 30 days) find them.
STEP = timedelta(seconds=2)


@contextmanager
def fresh_database(server: str) -> Iterator[str]:
    base = make_url(server)
    name = f"grad_bench_review_{uuid.uuid4().hex[:8]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT", poolclass=pool.NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def rows_csv(n: int, seed: int = 0) -> Iterator[str]:
    """Tab-separated rows for COPY, in chunks, ending a minute ago."""
    rng = random.Random(seed)
    t0 = datetime.now(timezone.utc) - timedelta(minutes=1) - n * STEP
    buf = io.StringIO()
    for i in range(n):
        line = rng.choice(LINES)
        confidence = min(
            max(rng.betavariate(0.6, 3.0) if rng.random() < 0.93 else rng.uniform(0.5, 1.0), 0.0),
            1.0,
        )
        at = t0 + i * STEP
        labelled = rng.random() < 0.25
        fields = [
            f"ev-{i:08d}",
            line,
            f"{line}-cam-{rng.randrange(4)}",
            rng.choice(CLASSES),
            at.isoformat(),
            (at + timedelta(milliseconds=150)).isoformat(),
            f"s3://bench/images/{i:08d}.png",
            f"s3://bench/heatmaps/{i:08d}.png",
            repr(confidence * 2),
            "1.0",
            repr(confidence),
            "t" if confidence > 0.5 else "f",
            "t",
            rng.choice(VERSIONS),
            ("normal" if confidence < 0.5 else "anomalous") if labelled else "\\N",
            "bench" if labelled else "\\N",
            (at + timedelta(hours=1)).isoformat() if labelled else "\\N",
            "\\N",
        ]
        buf.write("\t".join(fields) + "\n")
        if i % 50_000 == 49_999:
            yield buf.getvalue()
            buf = io.StringIO()
    yield buf.getvalue()


COLUMNS = (
    "event_id, line, station, product_class, captured_at, processed_at, image_uri, heatmap_uri,"
    " score, threshold, confidence, is_anomalous, calibrated, model_version, label, labelled_by,"
    " labelled_at, label_note"
)


def fill(url: str, n: int) -> float:
    start = time.perf_counter()
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with (
        psycopg.connect(dsn) as conn,
        conn.cursor() as cur,
        cur.copy(f"COPY inspections ({COLUMNS}) FROM STDIN") as copy,
    ):
        for chunk in rows_csv(n):
            copy.write(chunk)
    # What autovacuum does to a table soon after a bulk insert (PostgreSQL 13+ vacuums on
    # inserts too): statistics, and the visibility map that lets index-only scans skip the heap.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE inspections")
    return time.perf_counter() - start


def register_models(url: str) -> None:
    """The three versions in the registry, the newest active, each class calibrated under each
    on normal scores shaped like the rows' (what the class page compares with)."""
    rng = np.random.default_rng(1)
    with RecordStore(url) as records:
        for i, version in enumerate(VERSIONS):
            records.record_model_version(version, f"s3://bench/models/{version}.safetensors",
                                         parent_version=VERSIONS[i - 1] if i else None)  # fmt: skip
            for c in CLASSES:
                records.record_calibration(version, c, calibrate(2 * rng.beta(0.6, 3.0, 400)))
        records.set_active(VERSIONS[-1], by="bench")


def class_plan(url: str) -> str:
    """The class page's distribution query for one class under the active model, 7 days."""
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            until = datetime.now(timezone.utc)
            w = k.ClassWindow(CLASSES[0], VERSIONS[-1], until - timedelta(days=7), until)
            b = k._bin(conn).label("b")
            query = k.select(b, k.func.count()).where(w.where()).group_by(b)
            sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
            return "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN ANALYZE {sql}"))
    finally:
        engine.dispose()


def queue_plan(url: str) -> str:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            query = (
                q.select(q.T, q._priority)
                .where(q.T.c.label.is_(None))
                .order_by(q._priority, q.T.c.event_id)
                .limit(51)
            )
            sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
            return "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN ANALYZE {sql}"))
    finally:
        engine.dispose()


class Station:
    """`python -m worker.review` on the benchmark's database, and a signed-in reviewer."""

    def __init__(self, url: str, workdir: Path) -> None:
        users = workdir / "users.json"
        add_user(users, "bench", PASSWORD, "reviewer")
        self.base = f"http://127.0.0.1:{free_port()}"
        env = {
            **os.environ,
            "REVIEW_DATABASE_URL": url,
            "REVIEW_USERS_FILE": str(users),
            "REVIEW_PORT": self.base.rsplit(":", 1)[1],
            "REVIEW_SESSION_SECRET": uuid.uuid4().hex,
            "REVIEW_SECURE_COOKIES": "false",
        }
        self.log = (workdir / "review.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker.review"], env=env, stdout=self.log, stderr=self.log
        )
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        self._wait()
        body = urllib.parse.urlencode({"name": "bench", "password": PASSWORD}).encode()
        self.opener.open(self.base + "/login", body, timeout=30).read()

    def _wait(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.base + "/readyz", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("the review station did not start")

    def get(self, path: str) -> tuple[float, str]:
        start = time.perf_counter()
        with self.opener.open(self.base + path, timeout=60) as r:
            body = r.read().decode()
        return time.perf_counter() - start, body

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def next_cursor(html: str) -> str | None:
    m = re.search(r"after=([^\"&]+)", html)
    return urllib.parse.unquote(m[1]) if m else None


def time_pages(station: Station, requests: int) -> dict[str, list[float]]:
    """Seconds per request for each page kind, interleaved so that no kind gets a warmer
    database than another."""
    times: dict[str, list[float]] = {}
    cursor: str | None = None
    first_ids: list[str] = []
    for i in range(requests):
        kinds = {
            "queue, first page": "/",
            "queue counts (fetched by the page)": "/counts",
            "queue, class filter": f"/?product_class={CLASSES[i % len(CLASSES)]}",
            "queue, flagged only": "/?verdict=anomalous",
            "queue, line + station": f"/?line=line-{i % 10}&station=line-{i % 10}-cam-1",
            "labelled, newest model": f"/?label_state=labelled&model_version={VERSIONS[-1]}",
        }
        if cursor:
            kinds["queue, next page (deep)"] = "/?" + urllib.parse.urlencode({"after": cursor})
        if first_ids:
            kinds["inspection page"] = f"/inspections/{first_ids[i % len(first_ids)]}"
        # A class under the active model: 1/24 of the rows, in the window.
        kinds["class page, 7 days"] = f"/classes/{CLASSES[i % len(CLASSES)]}?days=7"
        kinds["class page, 30 days"] = f"/classes/{CLASSES[i % len(CLASSES)]}?days=30"
        kinds["class index, 7 days"] = "/classes?days=7"
        kinds["models page"] = "/models"
        for kind, path in kinds.items():
            seconds, body = station.get(path)
            times.setdefault(kind, []).append(seconds)
            if kind == "queue, first page" and not first_ids:
                first_ids = re.findall(r'class="open" href="/inspections/([^"?]+)', body)
            if kind in ("queue, first page", "queue, next page (deep)"):
                cursor = next_cursor(body) or cursor
    return times


def summary(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    out = {}
    for kind, ts in times.items():
        ms = sorted(t * 1000 for t in ts[1:] or ts)  # the first of each kind warms up
        out[kind] = {
            "n": len(ms),
            "p50_ms": statistics.median(ms),
            "p95_ms": ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))],
        }
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.review", description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--requests", type=int, default=40, help="requests per page kind")
    ap.add_argument(
        "--postgres",
        default=os.environ.get(
            "GRAD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1/test"
        ),
    )
    ap.add_argument("--out", type=Path, default=Path("runs/bench/review.json"))
    args = ap.parse_args(argv)
    with fresh_database(args.postgres) as url, tempfile.TemporaryDirectory() as tmp:
        migrate(url)
        fill_s = fill(url, args.rows)
        register_models(url)
        print(f"{args.rows} rows copied and analysed in {fill_s:.1f} s", file=sys.stderr)
        plan = queue_plan(url)
        plan_class = class_plan(url)
        station = Station(url, Path(tmp))
        try:
            times = time_pages(station, args.requests)
        finally:
            station.close()
    result = {
        "rows": args.rows,
        "fill_s": fill_s,
        "pages": summary(times),
        "queue_plan": plan,
        "class_plan": plan_class,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"| page ({args.rows:,} inspections, PostgreSQL) | p50 ms | p95 ms |")
    print("|---|---|---|")
    for kind, s in result["pages"].items():
        print(f"| {kind} | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} |")
    print("\nqueue query plan (first page):\n" + plan)
    print("\nclass page, distribution query plan (7 days):\n" + plan_class)


if __name__ == "__main__":
    main()
