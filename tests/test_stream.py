"""The worker end to end through a real Kafka-protocol broker (tansu, started here), with real
images: every valid event gets exactly one result, every malformed record one dead letter, scores
equal offline scoring, nothing is lost when a worker is killed or stopped mid-stream."""

from __future__ import annotations

import base64
import itertools
import json
import signal
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import cv2
import fsspec
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from model.data.images import read_image
from model.inference.inspector import Inspector
from model.metrics.drift import drift
from model.stores.records import RecordStore
from schemas import DeadLetter, InspectionEvent, InspectionResult
from schemas.model_state import STEADY_COUNT
from tests.streaming import committed, wait_processed
from worker.embedded_broker import EmbeddedBroker
from worker.feed import Received, inspection_images, make_event, producer_for, read_topics
from worker.heatmaps import LEVELS, read_heatmap
from worker.process import WorkerProcess

pytestmark = pytest.mark.integration

PARTITIONS = 4


def eventually(cond, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def new_topic(broker: EmbeddedBroker, partitions: int = PARTITIONS) -> str:
    topic = f"line-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, partitions)
    broker.create_topic(f"{topic}.results", partitions)
    broker.create_topic(f"{topic}.dlq", 1)
    broker.create_topic(f"{topic}.feedback", 1)
    return topic


def industrial_events(
    data: Path, n: int, inline_every: int = 4
) -> list[tuple[InspectionEvent, Path]]:
    """n events cycling over the classes (several stations, so several partitions)."""
    by_class: dict[str, list[Path]] = {}
    for cls, img, _ in inspection_images(data):
        by_class.setdefault(cls, []).append(img)
    cycles = {c: itertools.cycle(imgs) for c, imgs in by_class.items()}
    order = itertools.cycle(sorted(by_class))
    out = []
    for i in range(n):
        cls = next(order)
        img = next(cycles[cls])
        ev = make_event(
            img,
            cls,
            station=f"cam-{i % 6}",
            inline=(i % inline_every == 0),
            event_id=f"evt-{i:04d}-{uuid.uuid4().hex[:6]}",
        )
        out.append((ev, img))
    return out


def send_all(
    bootstrap: str, topic: str, events: list[InspectionEvent], rate_hz: float = 0.0
) -> None:
    producer = producer_for(bootstrap)
    t0 = time.monotonic()
    for i, ev in enumerate(events):
        if rate_hz:
            time.sleep(max(0.0, t0 + i / rate_hz - time.monotonic()))
        producer.send(topic, key=ev.station.encode(), value=ev.model_dump_json().encode())
    producer.flush()
    producer.close()


def results_of(received: list[Received]) -> list[InspectionResult]:
    return [
        InspectionResult.model_validate_json(r.value)
        for r in received
        if r.topic.endswith(".results")
    ]


def malformed_records(root: Path, outside: Path) -> list[tuple[bytes | None, str]]:
    """(value, expected dead-letter reason): twenty ways an event can be wrong."""

    def ev(**kw) -> bytes:
        base = {
            "schema_version": 1,
            "event_id": f"bad-{uuid.uuid4().hex[:8]}",
            "line": "l",
            "station": "cam-9",
            "product_class": "cookie",
            "captured_at": datetime.now(timezone.utc).isoformat(),
            "image_uri": (root / "missing.png").as_uri(),
        }
        base.update(kw)
        return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()

    bomb = cv2.imencode(
        ".png", np.zeros((12000, 12000), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9]
    )[1]
    return [
        (b"{not json", "invalid_json"),
        (b"\x89PNG\r\n\x1a\n binary junk", "invalid_json"),
        (b'"just a string"', "invalid_json"),
        (None, "invalid_json"),
        (ev(schema_version=2), "unknown_schema_version"),
        (ev(schema_version=...), "unknown_schema_version"),
        (ev(station=...), "invalid_event"),
        (ev(event_id=...), "invalid_event"),
        (ev(captured_at="yesterday"), "invalid_event"),
        (ev(image_uri=..., image_b64=None), "invalid_event"),
        (ev(image_b64="AAAA"), "invalid_event"),
        (ev(event_id="../../../etc/passwd"), "invalid_event"),
        (ev(image_uri=..., image_b64="@@@not base64@@@"), "undecodable_image"),
        (
            ev(image_uri=..., image_b64=base64.b64encode(b"GIF89a nothing").decode()),
            "undecodable_image",
        ),
        (ev(image_uri=..., image_b64=base64.b64encode(bomb.tobytes()).decode()), "image_too_large"),
        (ev(image_uri="file:///etc/passwd"), "uri_not_allowed"),
        (ev(image_uri=(outside / "secret.png").as_uri()), "uri_not_allowed"),
        (ev(image_uri=f"file://{root}/../../../../etc/hostname"), "uri_not_allowed"),
        (ev(image_uri="s3://some-bucket/a.png"), "uri_not_allowed"),
        (ev(), "image_not_found"),
    ]


def offline(inspector: Inspector, images: list[Path], classes: list[str]):
    res = inspector.inspect([read_image(p) for p in images], classes)
    return res.scores, res.maps


def test_200_events_and_20_malformed(broker, industrial, sample_data, tiny_ckpt, tmp_path):
    topic = new_topic(broker)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"secret")
    events = industrial_events(industrial, 200)
    # A few of a class the model is calibrated for, the rest uncalibrated classes.
    fabric = sorted((sample_data / "fabric" / "test" / "good").iterdir())[:4]
    events += [(make_event(p, "fabric", station="cam-7"), p) for p in fabric]
    inline_ids = {ev.event_id for ev, _ in events if ev.image_b64 is not None}
    by_id_event = {ev.event_id: ev for ev, _ in events}
    bad = malformed_records(industrial, outside)
    assert len(bad) == 20

    producer = producer_for(broker.bootstrap)
    sent = {}
    for i, (ev, _) in enumerate(events):
        fut = producer.send(topic, key=ev.station.encode(), value=ev.model_dump_json().encode())
        sent[ev.event_id] = fut
        if i % 10 == 0 and i // 10 < len(
            bad
        ):  # malformed records spread through the stream and its partitions
            value, _reason = bad[i // 10]
            producer.send(
                topic, key=f"cam-{i % 6}".encode(), value=value, headers=[("trace", b"t-%d" % i)]
            )
    producer.flush()
    last_offsets: dict[int, int] = {}
    for fut in sent.values():
        md = fut.get()
        last_offsets[md.partition] = max(last_offsets.get(md.partition, -1), md.offset)
    producer.close()

    w = WorkerProcess(
        broker.bootstrap,
        topic,
        tiny_ckpt,
        [industrial, sample_data],
        tmp_path / "heatmaps",
        tmp_path / "worker.log",
    ).start()
    try:
        w.wait_ready()
        outputs = [f"{topic}.results", f"{topic}.dlq"]
        read_topics(broker.bootstrap, outputs, until=len(events) + len(bad), timeout_s=300)
        time.sleep(1.0)  # then read everything: anything beyond the expected count is a duplicate
        got = read_topics(broker.bootstrap, outputs, until=10**6, timeout_s=3)
        assert w.metric("grad_events_consumed_total") == len(events) + len(bad)
        assert w.metric("grad_events_dead_lettered_total") == len(bad)
        assert w.get("/livez")[0] == 200 and w.get("/readyz")[0] == 200
        metrics_text = w.get("/metrics")[1]
    finally:
        assert w.stop() == 0, w.tail()

    results = results_of(got)
    ids = [r.event_id for r in results]
    assert sorted(ids) == sorted(ev.event_id for ev, _ in events), "exactly one result per event"

    dead = [r for r in got if r.topic.endswith(".dlq")]
    assert len(dead) == len(bad)
    by_value = {r.value: DeadLetter.from_headers(r.headers) for r in dead}
    for value, reason in bad:
        dl = by_value[value if value is not None else b""]
        assert dl.reason == reason, (value[:80] if value else value, dl.detail)
        assert dl.source_topic == topic
    assert sorted(dict(r.headers)["trace"] for r in dead) == sorted(
        b"t-%d" % i for i in range(0, 200, 10)
    )

    # Scores equal offline scoring of the same files through the inference API.
    inspector = Inspector.from_checkpoint(tiny_ckpt, "cpu")
    by_id = {r.event_id: r for r in results}
    paths = [p for _, p in events]
    classes = [ev.product_class for ev, _ in events]
    scores, maps = [], []
    for i in range(0, len(paths), 16):
        s, m = offline(inspector, paths[i : i + 16], classes[i : i + 16])
        scores.append(s)
        maps.append(m)
    scores_np, maps_np = np.concatenate(scores), np.concatenate(maps)
    worker_scores = np.array([by_id[ev.event_id].score for ev, _ in events])
    # Same bytes, same code path; only the batch composition differs (float summation order).
    np.testing.assert_allclose(worker_scores, scores_np, rtol=1e-5)
    for (ev, _), amap in list(zip(events, maps_np, strict=True))[::10]:
        r = by_id[ev.event_id]
        back, text = read_heatmap(r.heatmap_uri)
        step = (amap.max() - amap.min()) / LEVELS
        assert np.abs(back - amap).max() <= step + 1e-4 * amap.max()
        assert text["event_id"] == ev.event_id and text["model_version"] == r.model_version
    calibrated = {r.product_class: r.calibrated for r in results}
    assert calibrated["fabric"] is True and calibrated["cookie"] is False
    # The sample's classes hold out fewer than STEADY_COUNT normals: provisional thresholds,
    # said in every result; the global fallback is never steady.
    assert inspector.meta.calibration["fabric"].n_images < STEADY_COUNT
    assert not any(r.threshold_steady for r in results)
    assert all(r.model_version == inspector.version for r in results)
    assert all(
        0 <= r.confidence <= 1 and r.is_anomalous == (r.score > r.threshold) for r in results
    )

    per_class_metrics_match(metrics_text, results, inspector)

    # Every scored event is recorded once in SQL (the embedded default, SQLite), as published.
    with RecordStore(f"sqlite:///{tmp_path / 'inspections.sqlite3'}") as records:
        assert records.count() == len(events)
        for r in results[::7]:
            row = records.get(r.event_id)
            assert row is not None and row.model_version == r.model_version
            assert row.heatmap_uri == r.heatmap_uri and row.score == pytest.approx(r.score)
            assert row.threshold_steady is r.threshold_steady is False
            if r.event_id in inline_ids:  # archived: retraining can read it back
                assert row.image_uri.startswith(f"file://{tmp_path / 'archive'}")
                with fsspec.open(row.image_uri, "rb") as f:
                    assert f.read() == base64.b64decode(by_id_event[r.event_id].image_b64)
            else:
                assert row.image_uri == by_id_event[r.event_id].image_uri

    # Offsets: every input record (valid or not) is committed.
    done = committed(broker.bootstrap, "grad-test", topic, PARTITIONS)
    for p, last in last_offsets.items():
        assert done[p] >= last + 1, (p, done, last_offsets)


def per_class_metrics_match(text: str, results: list[InspectionResult], inspector) -> None:
    """Results by line and class, and each class's drift figure: the KS distance of its passed
    parts from the calibration it was judged against, as worker.drift computes it."""
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    for cls in {r.product_class for r in results}:
        mine = [r for r in results if r.product_class == cls]
        for line in {r.line for r in mine}:
            for verdict, flag in (("anomalous", True), ("normal", False)):
                n = sum(r.line == line and r.is_anomalous is flag for r in mine)
                key = (("line", line), ("product_class", cls), ("verdict", verdict))
                assert samples.get(("grad_events_processed_total", key), 0) == n
        conf = np.array([r.confidence for r in mine])
        cal, _ = inspector.calibration_for(cls)
        d = drift(conf, cal)
        key = (("product_class", cls),)
        assert samples[("grad_score_drift_parts", key)] == (conf < 0.5).sum() == d.recent
        assert samples[("grad_score_drift", key)] == pytest.approx(d.statistic, abs=1e-9)


def _deterministic(r: InspectionResult) -> dict:
    """A result without the fields that record when it was made (they differ on a redelivery)."""
    return r.model_dump(exclude={"processed_at", "timings", "captured_at"})


@pytest.mark.slow
def test_two_workers_split_partitions_and_a_sigkill_loses_nothing(
    broker, industrial, tiny_ckpt, tmp_path
):
    topic = new_topic(broker)
    events = [ev for ev, _ in industrial_events(industrial, 160, inline_every=5)]
    common = dict(
        bootstrap=broker.bootstrap,
        topic=topic,
        checkpoint=tiny_ckpt,
        image_roots=[industrial],
        heatmaps=tmp_path / "heatmaps",
        group="grad-pair",
    )
    a = WorkerProcess(log=tmp_path / "a.log", **common).start()
    b = WorkerProcess(log=tmp_path / "b.log", **common)
    feeder = threading.Thread(target=send_all, args=(broker.bootstrap, topic, events, 8.0))
    try:
        a.wait_ready()
        feeder.start()
        outputs = [f"{topic}.results"]
        read_topics(broker.bootstrap, outputs, until=20, timeout_s=120)
        b.start()  # joins mid-stream: a's partitions are revoked with a batch possibly in flight
        b.wait_ready()
        eventually(
            lambda: (
                a.metric("grad_assigned_partitions") + b.metric("grad_assigned_partitions")
                == PARTITIONS + 1  # the input topic's partitions and the feedback topic's one
                and b.metric("grad_assigned_partitions") > 0
            )
        )
        read_topics(broker.bootstrap, outputs, until=70, timeout_s=120)
        a.signal(signal.SIGKILL)  # no drain, no commit, no goodbye to the group
        a.proc.wait(10)
        feeder.join()
        got = read_topics(broker.bootstrap, outputs, until=len(events), timeout_s=240)
        time.sleep(2)
        got = read_topics(broker.bootstrap, outputs, until=10**6, timeout_s=3)
        assert b.metric("grad_assigned_partitions") == PARTITIONS + 1  # input + feedback
    finally:
        feeder.join()
        for w in (a, b):
            if w.proc is not None:
                w.stop()

    results = results_of(got)
    assert {r.event_id for r in results} == {ev.event_id for ev in events}, "an event was lost"
    seen: dict[str, dict] = {}
    for r in results:
        d = _deterministic(r)
        assert seen.setdefault(r.event_id, d) == d, f"duplicate of {r.event_id} differs"
    duplicates = len(results) - len(seen)
    print(f"{duplicates} redelivered duplicates after SIGKILL")


def test_sigterm_finishes_the_batch_in_flight_and_a_restart_resumes(
    broker, industrial, tiny_ckpt, tmp_path
):
    topic = new_topic(broker)
    events = [ev for ev, _ in industrial_events(industrial, 60, inline_every=6)]
    kw = dict(
        bootstrap=broker.bootstrap,
        topic=topic,
        checkpoint=tiny_ckpt,
        image_roots=[industrial],
        heatmaps=tmp_path / "heatmaps",
        group="grad-term",
        max_batch=8,
        max_wait_ms=2000,
    )
    w = WorkerProcess(log=tmp_path / "first.log", **kw).start()
    w.wait_ready()
    send_all(broker.bootstrap, topic, events)
    read_topics(broker.bootstrap, [f"{topic}.results"], until=12, timeout_s=120)
    w.signal(signal.SIGTERM)
    assert w.proc.wait(60) == 0, w.tail()
    first = results_of(
        read_topics(broker.bootstrap, [f"{topic}.results"], until=10**6, timeout_s=3)
    )
    # Everything published was committed and nothing committed is unpublished: the batch in
    # flight at the signal was completed, not abandoned half way.
    done = committed(broker.bootstrap, "grad-term", topic, PARTITIONS)
    assert sum(max(o, 0) for o in done.values()) == len(first), (done, len(first))
    assert 12 <= len(first) < len(events)
    log = [e.get("event") for e in w.log_events()]
    assert "stopping" in log and "closed" in log

    w2 = WorkerProcess(log=tmp_path / "second.log", **kw).start()
    try:
        got = read_topics(broker.bootstrap, [f"{topic}.results"], until=len(events), timeout_s=240)
        time.sleep(1)
        got = read_topics(broker.bootstrap, [f"{topic}.results"], until=10**6, timeout_s=3)
    finally:
        assert w2.stop() == 0
    ids = [r.event_id for r in results_of(got)]
    assert sorted(ids) == sorted(ev.event_id for ev in events), (
        "lost or duplicated across a graceful restart"
    )


@pytest.mark.slow
def test_revocation_finishes_and_commits_the_batch_in_flight(
    broker, industrial, tiny_ckpt, tmp_path
):
    """A rebalance takes partitions from a worker holding a half-collected batch: it scores,
    publishes and commits that batch before letting go, so the new owner does not redo it.

    That guarantee holds only while the member keeps its group session: the batch is finished
    inside the revocation callback, on the client's I/O thread, so no heartbeat goes out
    meanwhile. A batch that outlives the session timeout (a loaded machine) is fenced off; its
    commit is rejected and the new owner redoes it, idempotently (at least once, nothing lost).
    So this test gives the group a session long enough for a slow machine, and if the commit
    was rejected all the same it checks the weaker guarantee instead, saying so."""
    topic = new_topic(broker)
    events = [ev for ev, _ in industrial_events(industrial, 20, inline_every=5)]
    kw = dict(
        bootstrap=broker.bootstrap,
        topic=topic,
        checkpoint=tiny_ckpt,
        image_roots=[industrial],
        heatmaps=tmp_path / "heatmaps",
        group="grad-revoke",
        extra_env={"WORKER_SESSION_TIMEOUT_MS": "30000", "WORKER_HEARTBEAT_INTERVAL_MS": "3000"},
    )
    # A batch that waits long for more: it is still open when the second worker joins.
    a = WorkerProcess(log=tmp_path / "a.log", max_batch=64, max_wait_ms=60_000, **kw).start()
    b = WorkerProcess(log=tmp_path / "b.log", **kw)
    try:
        a.wait_ready()
        send_all(broker.bootstrap, topic, events)
        eventually(lambda: a.metric("grad_events_consumed_total") == len(events))
        assert a.metric("grad_events_processed_total") == 0  # held in the open batch
        b.start()
        b.wait_ready()
        wait_processed(a, len(events))
        read_topics(broker.bootstrap, [f"{topic}.results"], until=len(events), timeout_s=60)
        time.sleep(3)  # b would redo the batch now if a had not committed it
        got = read_topics(broker.bootstrap, [f"{topic}.results"], until=10**6, timeout_s=3)
        kept_session = "commit rejected by the group" not in [
            e.get("event") for e in a.log_events()
        ]
        if kept_session:
            assert a.metric("grad_events_processed_total") == len(events)
            assert b.metric("grad_events_processed_total") == 0
        else:
            print("a lost its session while finishing the batch: b redid it (at least once)")
    finally:
        for w in (a, b):
            if w.proc is not None:
                w.stop()
    ids = [r.event_id for r in results_of(got)]
    assert set(ids) == {ev.event_id for ev in events}
    if kept_session:
        assert sorted(ids) == sorted(ev.event_id for ev in events)  # none twice
    assert "partitions revoked: finishing batch in flight" in [
        e.get("event") for e in a.log_events()
    ]
    done = committed(broker.bootstrap, "grad-revoke", topic, PARTITIONS)
    assert sum(max(o, 0) for o in done.values()) == len(events)
