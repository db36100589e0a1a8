"""The retraining loop end to end, with real services: a worker (real process, real broker,
Redis, PostgreSQL) scores a stream of hazelnut, which its model knows, and transistor, which it
does not; operators label results on the feedback topic; `python -m model.retrain --since 1h`
trains, gates and promotes while the stream keeps flowing; the running worker switches version
between two batches without losing an event, and transistor results come out calibrated; then
`python -m model.promote` rolls the running worker back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from model.inference.checkpoint import read_meta
from model.stores.migrations import migrate
from model.stores.records import RecordStore
from model.stores.state import RedisStateStore
from tests.databases import fresh_postgres_database
from tests.retraining import defect_images, good_images, hazelnut_only
from tests.streaming import wait_processed
from tests.test_stream import eventually, new_topic, results_of, send_all
from worker.feed import make_event, producer_for, read_topics
from worker.process import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def events_for(images: list[tuple[str, Path]], tag: str, inline: set[int] = frozenset()):
    return [
        make_event(img, cls, station=f"cam-{i % 4}", inline=i in inline,
                   event_id=f"{tag}-{i:03d}-{uuid.uuid4().hex[:6]}")
        for i, (cls, img) in enumerate(images)
    ]  # fmt: skip


def labels(events, value: str) -> list[bytes]:
    return [
        json.dumps(
            {"schema_version": 1, "event_id": e.event_id, "label": value, "by": "qa-anna"}
        ).encode()
        for e in events
    ]


def window() -> tuple[datetime, datetime]:
    now = datetime.now(timezone.utc)
    return now - timedelta(hours=1), now + timedelta(minutes=1)


def serving(w: WorkerProcess, version: str) -> bool:
    return f'grad_model_info{{role="active",version="{version}"}} 1.0' in w.get("/metrics")[1]


def test_retrain_promotes_into_a_running_worker_and_rollback_restores(
    broker, industrial, own_redis, tmp_path, tmp_path_factory
):
    cache = tmp_path_factory.getbasetemp() / "retrain-features"
    m0_ckpt, m0 = hazelnut_only(industrial, tmp_path_factory.getbasetemp(), cache)
    assert set(m0.calibration) == {"hazelnut"}
    env = {
        **os.environ,
        "GRAD_REDIS_URL": own_redis.url,
        "GRAD_STATE_PREFIX": "rt",
        "GRAD_ARTIFACT_STORE": str(tmp_path / "models"),
        # The worker archives inline images there (WorkerProcess): readable back, like the rest.
        "GRAD_IMAGE_ROOTS": f"{industrial},{tmp_path / 'archive'}",
        "GRAD_CACHE_DIR": str(cache),
        "GRAD_DEVICE": "cpu",
        "GRAD_RETRAIN_EPOCHS": "6",
        "GRAD_RETRAIN_BATCH_SIZE": "8",
        "GRAD_RETRAIN_DIR": str(tmp_path / "runs"),
        "GRAD_PROMOTED_BY": "retrain-cron",
    }
    with fresh_postgres_database() as url:
        migrate(url)
        env["GRAD_DATABASE_URL"] = url
        topic = new_topic(broker)
        w = WorkerProcess(
            bootstrap=broker.bootstrap,
            topic=topic,
            checkpoint=m0_ckpt,
            image_roots=[industrial],
            heatmaps=tmp_path / "heatmaps",
            log=tmp_path / "worker.log",
            group="g-retrain",
            database_url=url,
            artifacts=tmp_path / "models",
            extra_env={"WORKER_REDIS_URL": own_redis.url, "WORKER_STATE_PREFIX": "rt"},
        ).start()
        feeding = threading.Event()
        feeder = None
        try:
            w.wait_ready()
            # 1. The line runs: 30 good images and 8 defects of each class, all recorded.
            goods = [("hazelnut", p) for p in good_images(industrial, "hazelnut")[:30]]
            goods += [("transistor", p) for p in good_images(industrial, "transistor")[:30]]
            defects = [("hazelnut", p) for p in defect_images(industrial, "hazelnut")]
            defects += [("transistor", p) for p in defect_images(industrial, "transistor")]
            good_events = events_for(goods, "good", inline={0, 31})
            defect_events = events_for(defects, "defect")
            first = good_events + defect_events
            send_all(broker.bootstrap, topic, first)
            wait_processed(w, len(first))
            read_topics(broker.bootstrap, [f"{topic}.results"], until=len(first), timeout_s=60)
            # 2. Quality engineers label them on the feedback topic.
            producer = producer_for(broker.bootstrap)
            for value in [*labels(good_events, "normal"), *labels(defect_events, "anomalous")]:
                producer.send(f"{topic}.feedback", value=value)
            producer.flush()
            producer.close()
            with RecordStore(url) as records:

                def labelled() -> int:
                    counts = records.window_counts(*window()).values()
                    return sum(c["labelled_normal"] + c["labelled_anomalous"] for c in counts)

                eventually(lambda: labelled() == len(first), 120)

            # 3. The stream goes on while the retrain runs.
            # Classes alternate, so the events after the switch hold transistor ones however
            # early or late the switch falls (in blocks, a fast retrain could switch inside a
            # run of hazelnut and leave the transistor check below with nothing to look at).
            more = [
                pair
                for h, t in zip(
                    good_images(industrial, "hazelnut")[30:],
                    good_images(industrial, "transistor")[30:],
                    strict=False,
                )
                for pair in (("hazelnut", h), ("transistor", t))
            ]
            sent: list = []

            def feed() -> None:
                producer = producer_for(broker.bootstrap)
                i = 0
                while not feeding.is_set():
                    cls, img = more[i % len(more)]
                    ev = make_event(img, cls, station=f"cam-{i % 4}", event_id=f"live-{i:04d}")
                    producer.send(
                        topic, key=ev.station.encode(), value=ev.model_dump_json().encode()
                    )
                    sent.append(ev)
                    i += 1
                    time.sleep(0.5)
                producer.flush()
                producer.close()

            feeder = threading.Thread(target=feed)
            feeder.start()
            t0 = time.monotonic()
            retrain = subprocess.run(
                [sys.executable, "-m", "model.retrain", "--since", "1h"],
                env=env, capture_output=True, text=True, timeout=900,
            )  # fmt: skip
            retrain_s = time.monotonic() - t0
            assert retrain.returncode == 0, retrain.stdout + retrain.stderr
            assert "PROMOTE:" in retrain.stdout, retrain.stdout
            report = json.loads(next((tmp_path / "runs").glob("*/report.json")).read_text())
            v1 = report["candidate"]
            eventually(lambda: serving(w, v1), 180)
            n_switch = len(sent)
            eventually(lambda: len(sent) >= n_switch + 15, 120)  # more events after the switch
            feeding.set()
            feeder.join()
            total = len(first) + len(sent)
            # The worker may be far behind the feed on a loaded machine: wait for it to catch up
            # (it keeps making progress), not for a fixed time.
            wait_processed(w, total)
            got = results_of(
                read_topics(broker.bootstrap, [f"{topic}.results"], until=total, timeout_s=60)
            )

            # 4. Rollback: the previous version serves the running worker again.
            rolled = subprocess.run(
                [sys.executable, "-m", "model.promote", m0.version],
                env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert rolled.returncode == 0, rolled.stderr
            eventually(lambda: serving(w, m0.version), 180)
            rest = good_images(industrial, "transistor")[30:36]
            after = events_for([("transistor", p) for p in rest], "after")
            send_all(broker.bootstrap, topic, after)
            wait_processed(w, total + len(after))
            everything = results_of(
                read_topics(
                    broker.bootstrap, [f"{topic}.results"], until=total + len(after), timeout_s=120
                )
            )
        finally:
            feeding.set()
            if feeder is not None:
                feeder.join()
            assert w.stop() == 0, w.tail()

        print(f"retrain took {retrain_s:.0f} s; {len(sent)} events streamed meanwhile")
        # Every event scored once; the live stream switched between batches, never back.
        by_id = {r.event_id: r for r in got}
        assert len(got) == len(by_id) == total
        assert set(by_id) == {e.event_id for e in first + sent}
        live = sorted((by_id[e.event_id] for e in sent), key=lambda r: r.processed_at)
        order = [r.model_version for r in live]
        switch = order.index(v1)
        assert switch > 0 and set(order[:switch]) == {m0.version}, order
        assert set(order[switch:]) == {v1}, "an event was scored by the old model after the switch"
        # transistor was unknown: uncalibrated before, calibrated by the retrain after.
        v1_meta = read_meta(next((tmp_path / "runs").glob("*/candidate.safetensors")))
        assert v1_meta.version == v1 and set(v1_meta.calibration) == {"hazelnut", "transistor"}
        for r in got:
            if r.product_class == "transistor":
                new = r.model_version == v1
                assert r.calibrated is new, r
                if new:
                    assert r.threshold == pytest.approx(v1_meta.calibration["transistor"].threshold)
        assert any(r.product_class == "transistor" and r.model_version == v1 for r in live)
        # Rolled back: transistor is uncalibrated again under the previous version.
        tail = [r for r in everything if r.event_id.startswith("after-")]
        assert len(tail) == len(after)
        assert {(r.model_version, r.calibrated) for r in tail} == {(m0.version, False)}

        assert RedisStateStore(own_redis.url, "rt").active_version() == m0.version
        with RecordStore(url) as records:
            assert records.active_version() == m0.version
            rows = {v.version: v for v in records.model_versions()}
            assert rows[v1].status == "retired" and rows[v1].parent_version == m0.version
            # 30 labelled normal each, one of them sent inline and read back from the archive.
            assert rows[v1].images_per_class == {"hazelnut": 30, "transistor": 30}
            assert rows[v1].gate_decision["promote"] is True
            assert rows[v1].promoted_by == "retrain-cron"
            assert set(records.calibrations(v1)) == {"hazelnut", "transistor"}
            recorded = records.get(live[-1].event_id)
            assert recorded is not None and recorded.model_version == v1
        assert report["selection"]["transistor"]["unavailable"] == {}
