"""Publishing a batch's outgoing records until the broker has acknowledged every one.

Two kinds of refusal, handled apart:
- **the record's own** (`MessageSizeTooLargeError`, `InvalidRecordError`, `CorruptRecordError`,
  or the client raising on it, say for a header it cannot encode): retrying cannot cure it. It
  is retried for `publish_give_up_s` (a topic's limit may be being raised), then a result is
  replaced by the dead letter of its original record (`unpublishable`) and a dead letter by its
  spilled form (the original kept in the dead-letter store, an empty value published);
- **the moment's** (broker down, no leader, a time-out, an authorisation the operator must
  fix): retried for ever with backoff. Nothing is committed meanwhile, so nothing is lost, and
  the stall is visible: a log line per attempt with the reason, `grad_publish_failing` at 1 and
  `/readyz` saying "publishing failing".

If even a spilled dead letter is refused as the record's own, nothing smaller exists to send:
it is retried as the moment's refusal, loudly.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog
from kafka import KafkaProducer
from kafka.errors import (
    CorruptRecordError,
    InvalidRecordError,
    KafkaError,
    MessageSizeTooLargeError,
)

from model.core.backoff import Backoff
from worker.endpoints import Health
from worker.metrics import WorkerMetrics
from worker.pipeline import Outgoing
from worker.rejected import Rejected

RECORD_ERRORS = (MessageSizeTooLargeError, InvalidRecordError, CorruptRecordError)
FLUSH_TIMEOUT_S = 30.0


def is_records_fault(exc: BaseException) -> bool:
    """Whether the broker or the client refused this record itself (not the moment)."""
    return isinstance(exc, RECORD_ERRORS) or not isinstance(exc, KafkaError)


class Publisher:
    def __init__(
        self,
        producer: KafkaProducer,
        give_up_s: float,
        dead_letter: Callable[[Outgoing, Rejected, bool], Outgoing],
        metrics: WorkerMetrics,
        health: Health,
        log: structlog.typing.FilteringBoundLogger,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.producer = producer
        self.give_up_s = give_up_s
        # dead_letter(outgoing, rejection, spill): the replacement for an unpublishable record
        self.dead_letter = dead_letter
        self.metrics = metrics
        self.health = health
        self.log = log
        self.sleep = sleep

    def publish(self, outgoing: list[Outgoing]) -> list[Outgoing]:
        """Send every record and wait for the broker's acknowledgement; resend what failed.
        Returns what was published in the end (a refused result replaced by its dead letter)."""
        final = list(outgoing)
        remaining = list(range(len(final)))
        refused_since: dict[int, float] = {}  # index -> first refusal as the record's own
        backoff, attempt = Backoff(), 0
        while remaining:
            attempt += 1
            failures = self._attempt([final[i] for i in remaining])
            failed: list[int] = []
            now = time.monotonic()
            for i, exc in zip(remaining, failures, strict=True):
                if exc is None:
                    continue
                o = final[i]
                if is_records_fault(exc) and not o.spilled:
                    since = refused_since.setdefault(i, now)
                    if now - since >= self.give_up_s and o.source is not None:
                        final[i] = self._replace(o, exc)
                        refused_since.pop(i)
                failed.append(i)
            remaining = failed
            self.health.publish_failing = bool(remaining)
            self.metrics.publish_failing.set(1 if remaining else 0)
            if remaining:
                # Nothing is committed meanwhile, so even a crash here loses nothing.
                self.metrics.retries.labels(stage="publish").inc()
                self.log.warning(
                    "publish failed, retrying",
                    attempt=attempt,
                    records=len(remaining),
                    reasons=sorted({type(e).__name__ for e in failures if e is not None}),
                    retry_in_s=backoff.delay,
                )
                self.health.beat()
                self.sleep(backoff.wait())
        return final

    def _replace(self, o: Outgoing, exc: BaseException) -> Outgoing:
        assert o.source is not None
        r = Rejected.from_exception("unpublishable", exc)
        if o.kind == "result":
            self.log.error(
                "result refused by the broker: dead-lettered", event_id=o.event_id, error=r.detail
            )
            return self.dead_letter(o, r, False)
        self.log.error(
            "dead letter refused by the broker: original moved to the store",
            event_id=o.event_id,
            error=r.detail,
        )
        return self.dead_letter(o, Rejected(o.kind, r.detail, r.error_type), True)

    def _attempt(self, batch: list[Outgoing]) -> list[BaseException | None]:
        """One send of each record; the exception each one failed with, or None."""
        futures = []
        errors: list[BaseException | None] = [None] * len(batch)
        for k, o in enumerate(batch):
            try:
                futures.append(
                    (k, self.producer.send(o.topic, key=o.key, value=o.value, headers=o.headers))
                )
            except Exception as exc:
                self._log_failure(o, exc)
                errors[k] = exc
        try:
            self.producer.flush(timeout=FLUSH_TIMEOUT_S)
        except KafkaError as exc:
            self.log.warning("flush timed out", error=str(exc))
        for k, fut in futures:
            try:
                fut.get(timeout=FLUSH_TIMEOUT_S)
            except Exception as exc:
                self._log_failure(batch[k], exc)
                errors[k] = exc
        return errors

    def _log_failure(self, o: Outgoing, exc: BaseException) -> None:
        self.log.warning(
            "publish failed",
            event_id=o.event_id,
            topic=o.topic,
            error_type=type(exc).__name__,
            error=str(exc)[:500],
            records_fault=is_records_fault(exc),
        )
