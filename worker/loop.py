"""The consume loop: poll, micro-batch, process, publish, commit.

Delivery is at-least-once and nothing is dropped:
- a batch's offsets are committed only after every one of its records has its result or dead
  letter acknowledged by the broker (producer flushed, every send confirmed);
- every side effect is keyed by the event id (heatmap key, result record), so a redelivered
  record rewrites the same things;
- a partition being revoked in a rebalance first gets its batch in flight finished and
  committed; SIGTERM does the same for everything, then the consumer leaves the group.

Batching follows Triton's dynamic batching: a batch closes when it holds `max_batch` records or
`max_wait_ms` after its first record arrived, whichever comes first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, TypeVar

import structlog
from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from model.blob_store import BlobStore
from model.records import RecordStore, RecordStoreUnavailable
from schemas import OperatorLabel
from schemas.records import InspectionRecord
from worker.endpoints import Health
from worker.heatmaps import HeatmapStore
from worker.image_source import ImageSource
from worker.metrics import WorkerMetrics
from worker.models import ModelRouter
from worker.pipeline import BatchProcessor, Outgoing, Pending, admit
from worker.settings import WorkerSettings

T = TypeVar("T")
IDLE_POLL_MS = 500  # how often an idle loop looks at the stop flag and beats
LISTENER_DB_WAIT_S = 30.0  # a revocation waits this long for the database, then lets go


class Worker:
    def __init__(
        self,
        settings: WorkerSettings,
        router: ModelRouter,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        heatmaps: HeatmapStore,
        metrics: WorkerMetrics,
        health: Health,
        records: RecordStore | None = None,
    ) -> None:
        self.s = settings
        self.consumer = consumer
        self.producer = producer
        self.metrics = metrics
        self.health = health
        self.log = structlog.get_logger("worker").bind(worker=settings.instance_id)
        self.pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        self.source = ImageSource(
            settings.image_roots,
            settings.max_image_bytes,
            settings.max_pixels,
            settings.transient_retry_s,
            on_retry=self._on_fetch_retry,
        )
        assert settings.results_topic and settings.dlq_topic  # filled in by the settings
        self.router = router
        self.records = records
        self.processor = BatchProcessor(
            router,
            heatmaps,
            self.pool,
            settings.results_topic,
            settings.dlq_topic,
            settings.instance_id,
            retry=self.retry,
            archive=BlobStore(settings.image_archive) if settings.image_archive else None,
        )
        self.pending: list[Pending] = []
        self.deadline: float | None = None
        self.stopping = threading.Event()
        self.batches = 0
        health.model_loaded = True
        self._publish_model_state()

    # -- control -----------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop fetching; the batch in flight is finished and committed (signal-safe)."""
        self.stopping.set()

    def run(self) -> None:
        topics = [self.s.topic] + ([self.s.feedback_topic] if self.s.feedback_topic else [])
        self.consumer.subscribe(topics, listener=_Rebalance(self))
        self.log.info("consuming", topic=self.s.topic, group=self.s.group_id)
        try:
            while not self.stopping.is_set():
                self.health.beat()
                if not self.pending and self.router.refresh_if_needed():
                    self._publish_model_state()  # between batches: a clean switch
                self.health.state_store_ok = self.router.store_ok
                self.metrics.state_store_up.set(1 if self.router.store_ok else 0)
                self._poll_once()
                if self._batch_due():
                    self.flush()
            if self.pending:
                self.log.info("draining batch in flight", records=len(self.pending))
                self.flush()
        finally:
            self.close()

    def _publish_model_state(self) -> None:
        snap = self.router.snapshot
        assert snap is not None
        canaries = {s.model_version for s in snap.classes.values() if s.model_version}
        self.metrics.set_models(snap.active, canaries - {snap.active})

    def close(self) -> None:
        self.router.close()
        self.pool.shutdown(wait=True, cancel_futures=True)
        try:
            self.consumer.close(autocommit=False)  # leave the group: a fast rebalance
        finally:
            self.producer.close(timeout=10)
        self.health.partitions = 0
        self.log.info("closed", batches=self.batches)

    # -- batching ----------------------------------------------------------------------------

    def _poll_once(self) -> None:
        if self.pending:
            assert self.deadline is not None
            timeout_ms = max(0, int((self.deadline - time.monotonic()) * 1000))
        else:
            timeout_ms = IDLE_POLL_MS
        room = self.s.max_batch - len(self.pending)
        polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=room)
        for records in polled.values():
            for r in records:
                self.metrics.consumed.inc()
                if self.deadline is None:
                    self.deadline = time.monotonic() + self.s.max_wait_ms / 1000
                p = Pending(r.topic, r.partition, r.offset, r.key, r.value, list(r.headers or []))
                self.pending.append(admit(p, self.source, self.pool, self.s.feedback_topic))

    def _batch_due(self) -> bool:
        if not self.pending:
            return False
        assert self.deadline is not None
        return (
            len(self.pending) >= self.s.max_batch
            or time.monotonic() >= self.deadline
            or self.stopping.is_set()
        )

    # -- one batch ---------------------------------------------------------------------------

    def flush(self) -> None:
        """Process, publish, record and commit the pending batch."""
        offsets = self._process_and_publish()
        if offsets:
            self._commit(offsets)

    def _process_and_publish(
        self, in_listener: bool = False
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """Results and dead letters of the pending batch acknowledged by the broker, and its
        inspection rows and labels durable in SQL; returns the offsets that may now be
        committed (none if the rows could not be written: the batch is then redelivered).
        In the rebalance listener (`in_listener`, the consumer's I/O thread) it must not call
        the consumer, so it waits for the database with plain sleeps and gives up sooner."""
        batch, self.pending, self.deadline = self.pending, [], None
        if not batch:
            return {}
        t0 = time.perf_counter()
        outgoing = self.processor.process(batch)
        t1 = time.perf_counter()
        self._publish(outgoing)
        t2 = time.perf_counter()
        labels = [p.label for p in batch if p.label is not None]
        durable = self._write_records(outgoing, labels, in_listener)
        t3 = time.perf_counter()
        self.batches += 1
        self._record(outgoing, process=t1 - t0, publish=t2 - t1, record=t3 - t2)
        if not durable:
            return {}
        next_offsets: dict[TopicPartition, int] = {}
        for p in batch:
            tp = TopicPartition(p.topic, p.partition)
            next_offsets[tp] = max(next_offsets.get(tp, -1), p.offset + 1)
        return {tp: OffsetAndMetadata(o, "", -1) for tp, o in next_offsets.items()}

    def _publish(self, outgoing: list[Outgoing]) -> None:
        """Send every record and wait for the broker's acknowledgement; resend what failed."""
        remaining = outgoing
        delay = 0.2
        while remaining:
            futures = []
            failed: list[Outgoing] = []
            for o in remaining:
                try:
                    futures.append(
                        (
                            o,
                            self.producer.send(
                                o.topic, key=o.key, value=o.value, headers=o.headers
                            ),
                        )
                    )
                except KafkaError as exc:
                    self.log.warning("send failed", event_id=o.event_id, error=str(exc))
                    failed.append(o)
            try:
                self.producer.flush(timeout=30)
            except KafkaError as exc:
                self.log.warning("flush timed out", error=str(exc))
            for o, fut in futures:
                try:
                    fut.get(timeout=30)
                except KafkaError as exc:
                    self.log.warning("publish failed", event_id=o.event_id, error=str(exc))
                    failed.append(o)
            remaining = failed
            if remaining:
                # The broker is unreachable or refusing: keep the batch, keep trying. Nothing is
                # committed meanwhile, so even a crash here loses nothing.
                self.metrics.retries.labels(stage="publish").inc()
                self.health.beat()
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _write_records(
        self, outgoing: list[Outgoing], labels: list[OperatorLabel], in_listener: bool
    ) -> bool:
        """Upsert the batch's inspection rows, then apply its labels; retry while the database
        is unreachable. Consumption is paused meanwhile (the loop still polls, so the worker
        keeps its partitions), and nothing is committed until the rows are durable."""
        if self.records is None:
            return True
        rows = [InspectionRecord.from_result(o.result, o.image_uri) for o in outgoing if o.result]
        if not rows and not labels:
            return True
        delay, paused = 0.5, False
        give_up = time.monotonic() + LISTENER_DB_WAIT_S
        while True:
            try:
                if rows:
                    self.records.upsert_inspections(rows)
                for lab in labels:
                    outcome = self.records.label(
                        lab.event_id, lab.label, lab.by, lab.note, lab.labelled_at
                    )
                    self.log.info(
                        "label " + outcome, event_id=lab.event_id, label=lab.label, by=lab.by
                    )
                break
            except RecordStoreUnavailable as exc:
                if self.health.database_ok:
                    self.log.warning(
                        "database unreachable: consumption paused, nothing committed",
                        error=str(exc),
                    )
                self.health.database_ok = False
                self.metrics.database_up.set(0)
                self.metrics.retries.labels(stage="database").inc()
                self.health.beat()
                if self.stopping.is_set():
                    # Shutting down: leave the batch uncommitted (redelivered, not lost) rather
                    # than wait out the drain timeout for a database that is not coming back.
                    self.log.warning("stopping with the database down: batch left uncommitted")
                    return False
                if in_listener:
                    if time.monotonic() > give_up:
                        return False
                    time.sleep(delay)
                else:
                    paused = True
                    self._idle_poll(delay)
                delay = min(delay * 2, 10.0)
        if paused:
            self.consumer.resume(*self.consumer.assignment())
        if not self.health.database_ok:
            self.log.info("database back: consumption resumed")
        self.health.database_ok = True
        self.metrics.database_up.set(1)
        self.metrics.recorded.labels(kind="inspection").inc(len(rows))
        self.metrics.recorded.labels(kind="label").inc(len(labels))
        return True

    def _idle_poll(self, seconds: float) -> None:
        """Stay in the group without taking new work: poll with every partition paused. A
        rebalance inside the poll may assign fresh, unpaused partitions; anything they return
        is rewound (seek) so it is read again after the outage, never skipped."""
        self.consumer.pause(*self.consumer.assignment())
        polled = self.consumer.poll(timeout_ms=int(seconds * 1000))
        for tp, records in polled.items():
            self.consumer.seek(tp, min(r.offset for r in records))
            self.consumer.pause(tp)

    def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        try:
            self.consumer.commit(offsets)
            self.metrics.commits.labels(outcome="ok").inc()
        except CommitFailedError as exc:
            self._commit_rejected(exc)

    def _commit_rejected(self, exc: Exception) -> None:
        # The group moved these partitions on while the batch ran (e.g. a poll interval
        # overrun). Their results are already out; the new owner redoes them, idempotently.
        self.metrics.commits.labels(outcome="rejected").inc()
        self.log.warning("commit rejected by the group", error=str(exc))

    def retry(self, stage: str, fn: Callable[[], T]) -> T:
        """Run fn until it stops raising OSError (a store that is briefly unavailable)."""
        delay = 0.2
        while True:
            try:
                return fn()
            except OSError as exc:
                self.metrics.retries.labels(stage=stage).inc()
                self.log.warning("transient failure, retrying", stage=stage, error=str(exc))
                self.health.beat()
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _on_fetch_retry(self, uri: str, exc: Exception) -> None:
        self.metrics.retries.labels(stage="fetch").inc()
        self.log.warning("image fetch failed, retrying", uri=uri, error=str(exc))

    def _record(self, outgoing: list[Outgoing], **stage_s: float) -> None:
        m = self.metrics
        now = datetime.now(timezone.utc)
        results = [o for o in outgoing if o.kind == "result"]
        m.batch_size.observe(len(results))
        for stage, seconds in stage_s.items():
            m.stage_seconds.labels(stage=stage).observe(seconds)
        for o in outgoing:
            if o.kind == "result":
                m.processed.labels(verdict=o.verdict).inc()
                if o.captured_at is not None:
                    m.end_to_end_seconds.observe(max(0.0, (now - o.captured_at).total_seconds()))
            else:
                m.dead_lettered.labels(reason=o.kind).inc()
                self.log.warning("dead-lettered", event_id=o.event_id, reason=o.kind, topic=o.topic)
        self.log.info(
            "batch done",
            results=len(results),
            dead_letters=len(outgoing) - len(results),
            event_ids=[o.event_id for o in results],
            **{f"{k}_ms": round(v * 1000, 1) for k, v in stage_s.items()},
        )


class _Rebalance(AsyncConsumerRebalanceListener):
    """Runs on the consumer's I/O thread (kafka-python 3), so it must not call the consumer's
    blocking API: the batch is processed and published inline (that touches only the decode
    pool and the producer), and its offsets committed with the awaited async commit, before the
    partitions are given up."""

    def __init__(self, worker: Worker) -> None:
        self.w = worker

    async def on_partitions_revoked(self, revoked: Any) -> None:
        w = self.w
        w.health.partitions = 0
        w.metrics.partitions.set(0)
        if not w.pending:
            return
        w.log.info("partitions revoked: finishing batch in flight", records=len(w.pending))
        offsets = w._process_and_publish(in_listener=True)
        if not offsets:
            return
        try:
            await w.consumer.commit_async(offsets)
            w.metrics.commits.labels(outcome="ok").inc()
        except KafkaError as exc:
            w._commit_rejected(exc)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.w.health.partitions = len(assigned)
        self.w.metrics.partitions.set(len(assigned))
        self.w.log.info("partitions assigned", partitions=sorted(tp.partition for tp in assigned))
