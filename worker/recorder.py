"""Making a batch durable in SQL: its inspection rows (what retraining and audits read back)
and the operator labels that arrived with it.

The consume loop commits a batch's offsets only after this returns True, so a row is never
lost: while the database is unreachable the write is retried (with backoff, the worker staying
in its group through `wait`), and when it gives up (shutting down, or a rebalance that cannot
wait) the batch is left uncommitted and redelivered; its rows are upserted by event id, so the
redelivery rewrites them rather than duplicating them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

from model.core.backoff import Backoff
from model.stores.records import RecordStore
from model.stores.sql import RecordStoreUnavailable
from schemas import OperatorLabel
from schemas.records import InspectionRecord
from worker.endpoints import Health
from worker.metrics import WorkerMetrics
from worker.pipeline import Outgoing

# Waits `seconds` while the database is down, keeping the worker alive meanwhile; False: stop
# waiting (the batch is then left uncommitted).
Wait = Callable[[float], bool]


class Recorder:
    def __init__(
        self,
        records: RecordStore | None,
        health: Health,
        metrics: WorkerMetrics,
        log: structlog.typing.FilteringBoundLogger,
        stopping: threading.Event,
    ) -> None:
        self.records = records
        self.health = health
        self.metrics = metrics
        self.log = log
        self.stopping = stopping

    def write(self, outgoing: list[Outgoing], labels: list[OperatorLabel], wait: Wait) -> bool:
        """Upsert the batch's inspection rows, then apply its labels, retrying while the
        database is unreachable. True when they are durable (or recording is off)."""
        if self.records is None:
            return True
        rows = [InspectionRecord.from_result(o.result, o.image_uri) for o in outgoing if o.result]
        if not rows and not labels:
            return True
        backoff = Backoff(first=0.5)
        while True:
            try:
                self._write(self.records, rows, labels)
                break
            except RecordStoreUnavailable as exc:
                self._down(exc)
                if self.stopping.is_set():
                    # Shutting down: leave the batch uncommitted (redelivered, not lost) rather
                    # than wait out the drain timeout for a database that is not coming back.
                    self.log.warning("stopping with the database down: batch left uncommitted")
                    return False
                if not wait(backoff.wait()):
                    return False
        self._up()
        self.metrics.recorded.labels(kind="inspection").inc(len(rows))
        self.metrics.recorded.labels(kind="label").inc(len(labels))
        return True

    def _write(
        self, records: RecordStore, rows: list[InspectionRecord], labels: list[OperatorLabel]
    ) -> None:
        if rows:
            records.upsert_inspections(rows)
        for lab in labels:
            outcome = records.label(lab.event_id, lab.label, lab.by, lab.note, lab.labelled_at)
            self.log.info("label " + outcome, event_id=lab.event_id, label=lab.label, by=lab.by)

    def _down(self, exc: Exception) -> None:
        if self.health.database_ok:
            self.log.warning(
                "database unreachable: consumption paused, nothing committed", error=str(exc)
            )
        self.health.database_ok = False
        self.metrics.database_up.set(0)
        self.metrics.retries.labels(stage="database").inc()
        self.health.beat()

    def _up(self) -> None:
        if not self.health.database_ok:
            self.log.info("database back: consumption resumed")
        self.health.database_ok = True
        self.metrics.database_up.set(1)
