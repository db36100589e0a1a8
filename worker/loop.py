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
from typing import Any, TypeVar

import structlog
from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from model.core.backoff import Backoff
from model.core.clock import utc_now
from model.stores.blobs import BlobStore
from model.stores.records import RecordStore
from schemas import OperatorLabel
from worker.breaker import CrashBreaker
from worker.dead_letters import DeadLetterWriter
from worker.drift import DriftMonitor
from worker.endpoints import Health
from worker.heatmaps import HeatmapStore
from worker.image_source import ImageSource
from worker.intake import RecordLimits
from worker.kafka_io import unreadable_position
from worker.metrics import WorkerMetrics
from worker.pipeline import BatchProcessor, Outgoing, Pending, admit
from worker.publisher import Publisher
from worker.recorder import Recorder
from worker.rejected import Rejected
from worker.router import ModelRouter
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
        self.stopping = threading.Event()
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
        self.limits = RecordLimits(
            max_value_bytes=settings.max_message_bytes,
            max_json_depth=settings.max_json_depth,
            max_number_chars=settings.max_number_chars,
            max_attributes_bytes=settings.max_attributes_bytes,
        )
        dead_letters = DeadLetterWriter(
            settings.dlq_topic,
            settings.instance_id,
            BlobStore(settings.dead_letter_store),
            settings.max_publish_bytes,
            retry=self.retry,
        )
        self.processor = BatchProcessor(
            router,
            heatmaps,
            self.pool,
            settings.results_topic,
            dead_letters,
            retry=self.retry,
            archive=BlobStore(settings.image_archive) if settings.image_archive else None,
            image_wait_s=settings.transient_retry_s + 60,
        )
        self.publisher = Publisher(
            producer,
            settings.publish_give_up_s,
            lambda o, r, spill: self.processor.dead_letter(o.source, r, spill),  # type: ignore[arg-type]
            metrics,
            health,
            self.log,
        )
        self.recorder = Recorder(records, health, metrics, self.log, self.stopping)
        self.drift = DriftMonitor(settings.drift_window, metrics)
        self.breaker = CrashBreaker(
            records, settings.group_id, settings.instance_id, settings.poison_after, self.log
        )
        self.pending: list[Pending] = []
        self.deadline: float | None = None
        self.failed = False  # the loop raised: the listener must not touch the batch
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
        except BaseException:
            # A fault of the loop itself (no record's: those are dead letters). Say so first,
            # with this traceback: closing the consumer below runs the revocation listener,
            # which must not try to finish the batch (it is left uncommitted: redelivered).
            self.log.exception(
                "consume loop failed: exiting, batch in flight left uncommitted (redelivered)",
                records=len(self.pending),
            )
            self.pending, self.deadline = [], None
            self.failed = True
            raise
        finally:
            self.close()

    def _publish_model_state(self) -> None:
        snap = self.router.snapshot
        assert snap is not None
        canaries = {s.model_version for s in snap.classes.values() if s.model_version}
        self.metrics.set_models(snap.active, canaries - {snap.active})

    def close(self) -> None:
        self.router.close()
        try:
            # Leave the group (a fast rebalance) while the pool still runs: the revocation
            # listener may finish a drained batch on it.
            self.consumer.close(autocommit=False)
        except Exception:
            self.log.exception("consumer close failed")
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
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
        polled = self._poll(timeout_ms, room)
        batch: list[Any] = []
        alone: list[Any] = []
        for tp, records in polled.items():
            if self.breaker.is_suspect(tp, records[0].offset):
                # Left behind by a worker that died with it in flight: this one alone.
                alone.append(records[0])
                if len(records) > 1:
                    self.consumer.seek(tp, records[1].offset)  # the rest read again later
            else:
                batch.extend(records)
        if batch:
            self._mark(batch)
            for r in batch:
                self._admit(r)
        for r in alone:
            self._process_alone(r)

    def _poll(self, timeout_ms: int, room: int) -> dict[TopicPartition, list[Any]]:
        """The consumer's poll; a record the client cannot decode (a header key that is not
        UTF-8, a failed checksum) becomes its dead letter and is stepped over, instead of the
        exception that would otherwise be raised again on every poll and every restart."""
        try:
            return self.consumer.poll(timeout_ms=timeout_ms, max_records=room)
        except Exception as exc:
            where = unreadable_position(self.consumer, exc)
            if where is None:
                raise
            tp, offset = where
            self.log.error(
                "unreadable record: dead-lettered",
                topic=tp.topic,
                partition=tp.partition,
                offset=offset,
                error=str(exc)[:300],
            )
            p = Pending(tp.topic, tp.partition, offset, None, None, [])
            p.rejection = Rejected.from_exception("unreadable_record", exc)
            self.consumer.seek(tp, offset + 1)
            self._queue(p)
            return {}

    def _mark(self, records: list[Any]) -> None:
        """In-flight markers for what is pending plus `records`, before any of it is fetched."""
        ranges: dict[TopicPartition, tuple[int, int]] = {}
        for p in [*self.pending, *records]:
            tp = TopicPartition(p.topic, p.partition)
            lo, hi = ranges.get(tp, (p.offset, p.offset))
            ranges[tp] = (min(lo, p.offset), max(hi, p.offset))
        self.breaker.mark_batch(ranges)

    def _admit(self, r: Any) -> None:
        """Parse now, fetch and decode in the pool, into the pending batch."""
        self._queue(
            admit(Pending.of(r), self.source, self.pool, self.s.feedback_topic, self.limits)
        )

    def _queue(self, p: Pending) -> None:
        """Into the pending batch; the first record starts the batch's clock."""
        self.metrics.consumed.inc()
        if self.deadline is None:
            self.deadline = time.monotonic() + self.s.max_wait_ms / 1000
        self.pending.append(p)

    def _process_alone(self, r: Any) -> None:
        """A suspect record in a batch of its own, under its own marker; dead-lettered as
        `poison` once it has been in flight for `poison_after` crashes."""
        if self.pending:
            self.flush()  # what was collected so far goes first, without it
        tp = TopicPartition(r.topic, r.partition)
        crashes = self.breaker.crashes(tp, r.offset)
        if self.breaker.is_poison(tp, r.offset):
            p = Pending.of(r)
            p.rejection = Rejected(
                "poison",
                f"in flight when a worker died {crashes} times (limit {self.s.poison_after}); "
                "not processed again",
            )
            self.metrics.poisoned.inc()
            self.log.error(
                "poison record: dead-lettered without processing",
                topic=r.topic,
                partition=r.partition,
                offset=r.offset,
                crashes=crashes,
            )
            self._queue(p)
        else:
            self.breaker.mark_alone(tp, r.offset)
            self._admit(r)
        self.flush()

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
        outgoing = self.publisher.publish(outgoing)
        t2 = time.perf_counter()
        labels = [p.label for p in batch if p.label is not None]
        durable = self._write_records(outgoing, labels, in_listener)
        t3 = time.perf_counter()
        self.batches += 1
        self._observe(outgoing, process=t1 - t0, publish=t2 - t1, record=t3 - t2)
        if not durable:
            return {}
        next_offsets: dict[TopicPartition, int] = {}
        for p in batch:
            tp = TopicPartition(p.topic, p.partition)
            next_offsets[tp] = max(next_offsets.get(tp, -1), p.offset + 1)
        return {tp: OffsetAndMetadata(o, "", -1) for tp, o in next_offsets.items()}

    def _write_records(
        self, outgoing: list[Outgoing], labels: list[OperatorLabel], in_listener: bool
    ) -> bool:
        """The batch's rows and labels durable in SQL (`worker.recorder`). While the database is
        down, consumption is paused (the loop still polls, so the worker keeps its partitions);
        in the rebalance listener it waits with plain sleeps, at most `LISTENER_DB_WAIT_S`."""
        paused = False
        give_up = time.monotonic() + LISTENER_DB_WAIT_S

        def wait(seconds: float) -> bool:
            nonlocal paused
            if in_listener:
                if time.monotonic() > give_up:
                    return False
                time.sleep(seconds)
            else:
                paused = True
                self._idle_poll(seconds)
            return True

        try:
            return self.recorder.write(outgoing, labels, wait)
        finally:
            if paused:
                self.consumer.resume(*self.consumer.assignment())

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
        """Run fn while it raises OSError (a store that is briefly unavailable), for at most
        `transient_retry_s`; then the record it was for is dead-lettered as
        `transient_retries_exhausted` (kept, replayable), so one store cannot stall the
        partition for good."""
        backoff = Backoff()
        deadline = time.monotonic() + self.s.transient_retry_s
        while True:
            try:
                return fn()
            except OSError as exc:
                if time.monotonic() + backoff.delay > deadline:
                    raise Rejected.from_exception("transient_retries_exhausted", exc) from exc
                self.metrics.retries.labels(stage=stage).inc()
                self.log.warning("transient failure, retrying", stage=stage, error=str(exc))
                self.health.beat()
                time.sleep(backoff.wait())

    def _on_fetch_retry(self, uri: str, exc: Exception) -> None:
        self.metrics.retries.labels(stage="fetch").inc()
        self.log.warning("image fetch failed, retrying", uri=uri, error=str(exc))

    def _observe(self, outgoing: list[Outgoing], **stage_s: float) -> None:
        """The batch in the metrics and one log line (dead letters one line each)."""
        m = self.metrics
        now = utc_now()
        results = [o for o in outgoing if o.kind == "result"]
        m.batch_size.observe(len(results))
        for stage, seconds in stage_s.items():
            m.stage_seconds.labels(stage=stage).observe(seconds)
        for o in outgoing:
            if o.kind == "result":
                r = o.result
                assert r is not None and o.calibration is not None
                m.processed.labels(
                    verdict=o.verdict, line=r.line, product_class=r.product_class
                ).inc()
                self.drift.observe(r.product_class, r.confidence, o.calibration)
                if o.captured_at is not None:
                    m.end_to_end_seconds.observe(max(0.0, (now - o.captured_at).total_seconds()))
            else:
                m.dead_lettered.labels(reason=o.kind).inc()
                self.log.warning("dead-lettered", event_id=o.event_id, reason=o.kind, topic=o.topic)
        self.drift.publish()
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
        w.breaker.forget(revoked)
        if not w.pending or w.failed:
            return
        w.log.info("partitions revoked: finishing batch in flight", records=len(w.pending))
        try:
            offsets = w._process_and_publish(in_listener=True)
        except Exception:
            # Raised here it would surface only as "User rebalance callback throws an error";
            # the batch stays uncommitted and is redelivered to the next owner.
            w.log.exception("finishing the batch on revocation failed: left uncommitted")
            return
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
