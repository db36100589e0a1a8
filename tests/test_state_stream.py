"""The worker with its shared state in a real Redis, through the real broker: promotions and
canaries reach a running worker between batches, and a Redis outage loses nothing."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import pytest

from model.inference.checkpoint import read_meta
from model.stores.state import RedisStateStore
from schemas import ClassCalibration, ClassState
from tests.test_stream import eventually, industrial_events, new_topic, results_of, send_all
from worker.feed import read_topics
from worker.process import WorkerProcess

pytestmark = pytest.mark.integration


def start_worker(broker, topic, ckpt, industrial, redis_url, prefix, tmp_path) -> WorkerProcess:
    w = WorkerProcess(
        bootstrap=broker.bootstrap,
        topic=topic,
        checkpoint=ckpt,
        image_roots=[industrial],
        heatmaps=tmp_path / "heatmaps",
        log=tmp_path / "worker.log",
        group=f"g-{prefix}",
        extra_env={"WORKER_REDIS_URL": redis_url, "WORKER_STATE_PREFIX": prefix},
    ).start()
    w.wait_ready()
    return w


def all_results(broker, topic, n):
    read_topics(broker.bootstrap, [f"{topic}.results"], until=n, timeout_s=300)
    time.sleep(1)
    return results_of(read_topics(broker.bootstrap, [f"{topic}.results"], until=10**6, timeout_s=3))


def test_promotion_switches_a_running_worker_between_batches(
    broker, industrial, tiny_ckpt, tiny_ckpt_b, own_redis, tmp_path
):
    topic = new_topic(broker)
    v_a, v_b = read_meta(tiny_ckpt).version, read_meta(tiny_ckpt_b).version
    assert v_a != v_b
    w = start_worker(broker, topic, tiny_ckpt, industrial, own_redis.url, "promo", tmp_path)
    store = RedisStateStore(own_redis.url, "promo")
    assert store.active_version() == v_a  # an empty store is seeded from the checkpoint
    events = [ev for ev, _ in industrial_events(industrial, 80, inline_every=7)]
    feeder = threading.Thread(target=send_all, args=(broker.bootstrap, topic, events, 8.0))
    try:
        feeder.start()
        read_topics(broker.bootstrap, [f"{topic}.results"], until=25, timeout_s=120)
        store.put_model(v_b, tiny_ckpt_b.read_bytes())
        store.set_active(v_b)
        feeder.join()
        results = all_results(broker, topic, len(events))
        _, metrics = w.get("/metrics")
    finally:
        feeder.join()
        assert w.stop() == 0

    assert sorted(r.event_id for r in results) == sorted(e.event_id for e in events)
    order = [r.model_version for r in sorted(results, key=lambda r: r.processed_at)]
    switch = order.index(v_b)
    assert 25 <= switch < len(order) and set(order[:switch]) == {v_a}
    assert set(order[switch:]) == {v_b}, "an event was scored by the old model after the switch"
    assert f'grad_model_info{{role="active",version="{v_b}"}} 1.0' in metrics


def test_canary_and_recalibration_per_class(
    broker, industrial, tiny_ckpt, tiny_ckpt_b, own_redis, tmp_path
):
    topic = new_topic(broker)
    v_a, v_b = read_meta(tiny_ckpt).version, read_meta(tiny_ckpt_b).version
    w = start_worker(broker, topic, tiny_ckpt, industrial, own_redis.url, "canary", tmp_path)
    store = RedisStateStore(own_redis.url, "canary")
    now = datetime.now(timezone.utc).isoformat()
    cal = ClassCalibration(
        threshold=1e6,
        scale=1.0,
        target_fpr=0.01,
        n_images=30,
        mean=1.0,
        std=0.1,
        median=1.0,
        q99=1.2,
        max=1.3,
        method="empirical",
    )
    store.put_model(v_b, tiny_ckpt_b.read_bytes())
    store.set_class_state("cookie", ClassState(model_version=v_b, updated_at=now))
    store.set_class_state("hazelnut", ClassState(calibration=cal, updated_at=now))
    time.sleep(2)  # applied before the next batch
    events = [ev for ev, _ in industrial_events(industrial, 24)]
    try:
        send_all(broker.bootstrap, topic, events)
        results = all_results(broker, topic, len(events))
    finally:
        assert w.stop() == 0
    assert len(results) == len(events)
    for r in results:
        assert r.model_version == (v_b if r.product_class == "cookie" else v_a), r.product_class
        if r.product_class == "hazelnut":
            assert r.threshold == 1e6 and r.calibrated and not r.is_anomalous


def test_redis_outage_mid_stream_loses_nothing_and_shows(
    broker, industrial, tiny_ckpt, own_redis, tmp_path
):
    topic = new_topic(broker)
    w = start_worker(broker, topic, tiny_ckpt, industrial, own_redis.url, "outage", tmp_path)
    events = [ev for ev, _ in industrial_events(industrial, 70, inline_every=9)]
    feeder = threading.Thread(target=send_all, args=(broker.bootstrap, topic, events, 6.0))
    try:
        feeder.start()
        read_topics(broker.bootstrap, [f"{topic}.results"], until=15, timeout_s=120)
        own_redis.stop()
        eventually(lambda: w.metric("grad_state_store_up") == 0, 20)
        code, body = w.get("/readyz")
        assert code == 503 and "state store" in body
        assert w.get("/livez")[0] == 200  # alive: restarting would not bring Redis back
        read_topics(broker.bootstrap, [f"{topic}.results"], until=40, timeout_s=120)  # still going
        own_redis.start()  # empty, as a cache restarted without persistence
        eventually(lambda: w.metric("grad_state_store_up") == 1, 30)
        eventually(lambda: RedisStateStore(own_redis.url, "outage").active_version() is not None)
        feeder.join()
        results = all_results(broker, topic, len(events))
    finally:
        feeder.join()
        assert w.stop() == 0
    assert sorted(r.event_id for r in results) == sorted(e.event_id for e in events)
    assert RedisStateStore(own_redis.url, "outage").active_version() == read_meta(tiny_ckpt).version
