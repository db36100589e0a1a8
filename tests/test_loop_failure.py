"""A fault of the loop itself (not of a record) stops the worker loudly, with its own traceback:
closing the consumer runs the revocation listener, whose error used to replace the real one
("User rebalance callback throws an error")."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pytest
from structlog.testing import capture_logs

from worker.endpoints import Health
from worker.feed import producer_for
from worker.heatmaps import HeatmapStore
from worker.kafka_io import build_consumer, build_producer
from worker.loop import Worker
from worker.metrics import WorkerMetrics
from worker.settings import WorkerSettings

pytestmark = pytest.mark.integration


def test_a_bug_in_the_loop_is_raised_and_logged_as_itself(broker, router, sample_data, tmp_path):
    topic = f"loop-{uuid.uuid4().hex[:8]}"
    for name in (topic, f"{topic}.results", f"{topic}.dlq", f"{topic}.feedback"):
        broker.create_topic(name, 1)
    image = sorted((sample_data / "fabric" / "test" / "good").iterdir())[0]
    event = {
        "schema_version": 1,
        "event_id": "e-1",
        "line": "l",
        "station": "s",
        "product_class": "fabric",
        "captured_at": datetime.now(timezone.utc).isoformat(),
        "image_uri": image.as_uri(),
    }
    producer = producer_for(broker.bootstrap)
    producer.send(topic, value=json.dumps(event).encode())
    producer.flush()
    producer.close()
    settings = WorkerSettings(
        topic=topic,
        bootstrap_servers=[broker.bootstrap],
        group_id=f"g-{topic}",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        image_roots=[str(sample_data)],
        heatmap_store=str(tmp_path / "heatmaps"),
        image_archive=str(tmp_path / "archive"),
        dead_letter_store=str(tmp_path / "dl"),
        max_wait_ms=10_000,  # the batch is still open when the first poll returns
    )
    with capture_logs() as logs:
        w = Worker(
            settings,
            router,
            build_consumer(settings),
            build_producer(settings),
            HeatmapStore(settings.heatmap_store),
            WorkerMetrics(),
            Health(60),
        )

        def broken(batch):
            raise RuntimeError("a bug in the batch bookkeeping")

        w.processor.process = broken  # type: ignore[method-assign]
        w.s = settings.model_copy(update={"max_batch": 1})  # due as soon as it arrives
        with pytest.raises(RuntimeError, match="a bug in the batch bookkeeping"):
            w.run()
    events = [e["event"] for e in logs]
    assert "consume loop failed: exiting, batch in flight left uncommitted (redelivered)" in events
    failed = next(e for e in logs if e["event"].startswith("consume loop failed"))
    assert failed["log_level"] == "error" and failed.get("exc_info")
    assert not any("rebalance" in e["event"] for e in logs)
    assert "closed" in events
