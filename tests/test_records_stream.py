"""The worker recording every inspection in a real PostgreSQL, taking operator feedback from its
topic and from the CLI, and riding out a database outage without losing or committing early."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from model.stores.migrations import migrate
from model.stores.records import RecordStore
from schemas import DeadLetter
from tests.databases import PostgresServer, fresh_postgres_database
from tests.streaming import committed
from tests.test_stream import eventually, industrial_events, new_topic, results_of, send_all
from worker.feed import producer_for, read_topics
from worker.process import WorkerProcess

pytestmark = pytest.mark.integration


def label(event_id: str, value: str, by: str = "qa-anna", **extra) -> bytes:
    return json.dumps(
        {"schema_version": 1, "event_id": event_id, "label": value, "by": by, **extra}
    ).encode()


def test_rows_in_postgres_and_feedback_from_topic_and_cli(broker, industrial, tiny_ckpt, tmp_path):
    with fresh_postgres_database() as url:
        migrate(url)
        topic = new_topic(broker)
        events = [ev for ev, _ in industrial_events(industrial, 30, inline_every=5)]
        late = events.pop()  # labelled before it is inspected
        w = WorkerProcess(
            bootstrap=broker.bootstrap,
            topic=topic,
            checkpoint=tiny_ckpt,
            image_roots=[industrial],
            heatmaps=tmp_path / "heatmaps",
            log=tmp_path / "w.log",
            group="g-records",
            database_url=url,
        ).start()
        try:
            w.wait_ready()
            send_all(broker.bootstrap, topic, events)
            read_topics(broker.bootstrap, [f"{topic}.results"], until=len(events), timeout_s=180)
            producer = producer_for(broker.bootstrap)
            fb = f"{topic}.feedback"
            producer.send(fb, value=label(events[0].event_id, "anomalous", note="scratch at 3h"))
            producer.send(fb, value=label(events[1].event_id, "normal"))
            producer.send(fb, value=label(late.event_id, "anomalous", by="qa-ben"))
            producer.send(fb, value=b'{"schema_version": 1, "event_id": "x", "label": "maybe"}')
            producer.flush()
            cli = subprocess.run(
                [sys.executable, "-m", "model.label", events[2].event_id, "--anomalous",
                 "--by", "qa-carl", "--database-url", url],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert cli.returncode == 0, cli.stderr
            eventually(lambda: w.metric("grad_rows_recorded_total") >= len(events) + 3, 60)
            send_all(broker.bootstrap, topic, [late])  # the label was waiting for it
            eventually(lambda: w.metric("grad_rows_recorded_total") >= len(events) + 4, 60)
            dlq = read_topics(broker.bootstrap, [f"{topic}.dlq"], until=1, timeout_s=30)
            producer.close()
        finally:
            assert w.stop() == 0

        assert [DeadLetter.from_headers(r.headers).reason for r in dlq] == ["invalid_label"]
        results = results_of(
            read_topics(broker.bootstrap, [f"{topic}.results"], until=10**6, timeout_s=3)
        )
        with RecordStore(url) as records:
            assert records.count() == len(events) + 1
            for r in results:
                row = records.get(r.event_id)
                assert row is not None and row.model_version == r.model_version
                assert row.heatmap_uri == r.heatmap_uri
            first, second, third = (records.get(e.event_id) for e in events[:3])
            assert (first.label, first.labelled_by, first.label_note) == (
                "anomalous",
                "qa-anna",
                "scratch at 3h",
            )
            assert (second.label, second.labelled_by) == ("normal", "qa-anna")
            assert (third.label, third.labelled_by) == ("anomalous", "qa-carl")
            assert records.get(late.event_id).label == "anomalous"
            assert records.get(late.event_id).labelled_by == "qa-ben"
            assert records.get(events[3].event_id).label is None
            assert records.pending_labels() == {}


@pytest.mark.slow
def test_database_outage_pauses_commits_and_loses_no_row(broker, industrial, tiny_ckpt, tmp_path):
    server = PostgresServer()
    try:
        server.start()
        migrate(server.url)
        topic = new_topic(broker)
        events = [ev for ev, _ in industrial_events(industrial, 60, inline_every=6)]
        w = WorkerProcess(
            bootstrap=broker.bootstrap,
            topic=topic,
            checkpoint=tiny_ckpt,
            image_roots=[industrial],
            heatmaps=tmp_path / "heatmaps",
            log=tmp_path / "w.log",
            group="g-outage-db",
            database_url=server.url,
        ).start()
        feeder = threading.Thread(target=send_all, args=(broker.bootstrap, topic, events, 6.0))
        try:
            w.wait_ready()
            feeder.start()
            read_topics(broker.bootstrap, [f"{topic}.results"], until=10, timeout_s=120)
            server.stop()
            eventually(lambda: w.metric("grad_database_up") == 0, 30)
            code, body = w.get("/readyz")
            assert code == 503 and "database" in body
            frozen = committed(broker.bootstrap, "g-outage-db", topic, 4)
            time.sleep(5)
            assert committed(broker.bootstrap, "g-outage-db", topic, 4) == frozen, (
                "offsets moved while the rows could not be written"
            )
            server.start()
            eventually(lambda: w.metric("grad_database_up") == 1, 60)
            feeder.join()
            read_topics(broker.bootstrap, [f"{topic}.results"], until=len(events), timeout_s=300)
            deadline = time.monotonic() + 60
            while (done := committed(broker.bootstrap, "g-outage-db", topic, 4)) and sum(
                max(o, 0) for o in done.values()
            ) != len(events):
                assert time.monotonic() < deadline, (done, frozen)
                time.sleep(0.5)
        finally:
            feeder.join()
            assert w.stop() == 0
        with RecordStore(server.url) as records:
            assert records.count() == len(events)
            assert all(records.get(e.event_id) is not None for e in events)
    finally:
        server.close()
