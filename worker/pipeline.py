"""From consumed records to outgoing records: parse, fetch and decode, score, heatmap.

Kafka-free: the loop (`worker.loop`) feeds it records and publishes what it returns, so every
decision about a record (result or dead letter, and why) is made here and tested without a
broker. Each record yields exactly one outgoing record.

The per-record boundary: every step that handles one record (parsing in `admit`, fetching and
decoding in the pool, its share of the forward pass, its heatmap, building its result) runs
inside a `try` that turns whatever it raises into that record's `Rejected`, and so into its dead
letter (`processing_error` with the exception's type and message, when nothing more specific
applies). A forward pass that raises for a batch is retried image by image, so one image cannot
take its batch with it. Only the steps that belong to the whole batch (grouping, bookkeeping)
run outside it: an error there is the program's, and stops the worker loudly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import numpy as np

from model.core.clock import utc_now
from model.inference.inspector import Verdict
from model.stores.blobs import BlobStore, event_key, image_suffix
from schemas import ClassCalibration, InspectionEvent, InspectionResult, OperatorLabel
from schemas.events import StageTimings
from worker.dead_letters import DeadLetterWriter
from worker.heatmaps import HeatmapStore
from worker.image_source import ImageSource
from worker.intake import RecordLimits, parse_event, parse_label
from worker.rejected import Rejected
from worker.router import ModelRouter

T = TypeVar("T")


@dataclass
class Pending:
    """A consumed record on its way through a batch."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    consumed_at: float = field(default_factory=time.monotonic)
    event: InspectionEvent | None = None
    rejection: Rejected | None = None
    image: Future[np.ndarray] | None = None
    fetch_ms: float = 0.0
    label: OperatorLabel | None = None  # a feedback record instead of an inspection event
    inline_bytes: bytes | None = None

    @classmethod
    def of(cls, record: Any) -> Pending:
        """A consumed record (kafka-python's ConsumerRecord) as it enters a batch."""
        return cls(
            record.topic,
            record.partition,
            record.offset,
            record.key,
            record.value,
            list(record.headers or []),
        )


@dataclass(frozen=True)
class Outgoing:
    """One record to publish: a result or a dead letter."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    event_id: str | None
    kind: str  # "result" or the dead-letter reason
    captured_at: datetime | None = None
    verdict: str | None = None
    result: InspectionResult | None = None  # what is recorded in SQL, for a result
    calibration: ClassCalibration | None = None  # what the result was judged against
    image_uri: str | None = None
    source: Pending | None = None  # the consumed record (to dead-letter it after all)
    spilled: bool = False  # a dead letter whose original is in the dead-letter store


def record_size(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> int:
    """Bytes a record takes on the wire, generously: what the publish limit is checked on."""
    overhead = 96 + sum(16 + len(k.encode()) + len(v or b"") for k, v in headers)
    return overhead + len(key or b"") + len(value)


def _timed_load(source: ImageSource, event: InspectionEvent, p: Pending) -> np.ndarray:
    """Fetch and decode in the pool; any failure is this record's `Rejected`."""
    t0 = time.perf_counter()
    try:
        data = source.fetch(event)
        img = source.decode(data)
        if event.image_b64 is not None:
            p.inline_bytes = data  # archived with the results, so retraining can read it back
        return img
    except Rejected:
        raise
    except Exception as exc:  # MemoryError, a codec's own error: the record's, not the loop's
        raise Rejected.from_exception("processing_error", exc) from exc
    finally:
        p.fetch_ms = (time.perf_counter() - t0) * 1000


def admit(
    p: Pending,
    source: ImageSource,
    pool: Executor,
    feedback_topic: str | None = None,
    limits: RecordLimits | None = None,
) -> Pending:
    """Parse now; start fetching and decoding in the pool, off the polling thread. Whatever
    parsing raises is the record's rejection (its dead letter), never the caller's exception."""
    try:
        if p.topic == feedback_topic:
            p.label = parse_label(p.value, limits)
            return p
        p.event = parse_event(p.value, limits)
    except Rejected as r:
        p.rejection = r
        return p
    except Exception as exc:
        p.rejection = Rejected.from_exception("processing_error", exc)
        return p
    p.image = pool.submit(_timed_load, source, p.event, p)
    return p


def _guard(fn: Callable[[], T]) -> T:
    """Run one record's step; what it raises becomes the record's `Rejected`."""
    try:
        return fn()
    except Rejected:
        raise
    except Exception as exc:
        raise Rejected.from_exception("processing_error", exc) from exc


@dataclass
class _Scored:
    """One image's share of the forward pass."""

    verdict: Verdict
    amap: np.ndarray
    version: str
    group_size: int


class BatchProcessor:
    """Turns a batch of admitted records into results and dead letters (one each)."""

    def __init__(
        self,
        router: ModelRouter,
        heatmaps: HeatmapStore,
        pool: Executor,
        results_topic: str,
        dead_letters: DeadLetterWriter,
        retry: Callable[[str, Callable[[], Any]], Any],
        archive: BlobStore | None = None,
        image_wait_s: float | None = None,
    ) -> None:
        self.router = router
        self.heatmaps = heatmaps
        self.pool = pool
        self.results_topic = results_topic
        self.dead_letters = dead_letters
        # retry(stage, fn): runs fn while it raises a transient error, for a bounded time, then
        # raises `Rejected("transient_retries_exhausted")`.
        self.retry = retry
        self.archive = archive  # where inline images are kept (they have no URI of their own)
        # How long a batch waits for one image's fetch and decode. A store that never answers
        # (a hung connection) would otherwise hold the partition for good; the loop stops
        # beating meanwhile, so under an orchestrator liveness restarts the worker first and
        # the crash-loop breaker takes over.
        self.image_wait_s = image_wait_s

    def process(self, batch: list[Pending]) -> list[Outgoing]:
        """One outgoing record per inspection event or rejected record; labels have none (the
        loop records them)."""
        t_start = time.monotonic()
        images: dict[int, np.ndarray] = {}
        for i, p in enumerate(batch):
            if p.image is not None:
                try:
                    images[i] = p.image.result(timeout=self.image_wait_s)
                except Rejected as r:
                    p.rejection = r
                except FutureTimeout:
                    p.rejection = Rejected(
                        "transient_retries_exhausted",
                        f"fetching and decoding the image took over {self.image_wait_s:.0f} s",
                    )
                except Exception as exc:  # the pool itself failed on this record
                    p.rejection = Rejected.from_exception("processing_error", exc)
        out: dict[int, Outgoing] = {}
        if images:
            idx = list(images)
            t0 = time.perf_counter()
            scored = self._infer([batch[i] for i in idx], [images[i] for i in idx])
            infer_ms = (time.perf_counter() - t0) * 1000
            t0 = time.perf_counter()
            stored = list(self.pool.map(self._store, [batch[i] for i in idx], scored))
            heatmap_ms = (time.perf_counter() - t0) * 1000
            now = utc_now()
            for i, sc, st in zip(idx, scored, stored, strict=True):
                p = batch[i]
                try:
                    if isinstance(sc, Rejected):
                        raise sc
                    if isinstance(st, Rejected):
                        raise st
                    timings = (t_start - p.consumed_at, p.fetch_ms, infer_ms, heatmap_ms)
                    out[i] = _guard(
                        lambda p=p, sc=sc, st=st, tm=timings: self._result(p, sc, st, now, tm)
                    )
                except Rejected as r:
                    p.rejection = r
        for i, p in enumerate(batch):
            if p.rejection is not None:
                out[i] = self.dead_letter(p, p.rejection)
        return [out[i] for i in range(len(batch)) if i in out]

    def dead_letter(self, p: Pending, r: Rejected, spill: bool = False) -> Outgoing:
        return self.dead_letters.write(p, r, spill=spill)

    # -- the forward pass --------------------------------------------------------------------

    def _infer(self, scored: list[Pending], images: list[np.ndarray]) -> list[_Scored | Rejected]:
        """One forward pass per model version in use (one, except while a class is on a
        canary); a pass that raises is retried image by image, so only the image that cannot
        be scored is rejected."""
        events = [p.event for p in scored]
        assert all(ev is not None for ev in events)
        classes = [ev.product_class for ev in events if ev is not None]
        routes = [self.router.route(c) for c in classes]
        groups: dict[str, list[int]] = {}
        for k, route in enumerate(routes):
            groups.setdefault(route.version, []).append(k)
        out: list[_Scored | Rejected] = [Rejected("processing_error", "not scored")] * len(events)
        for version, idx in groups.items():
            try:
                res = self._pass(
                    version,
                    [images[k] for k in idx],
                    [classes[k] for k in idx],
                    [routes[k] for k in idx],
                )
                for j, k in enumerate(idx):
                    out[k] = _Scored(res.verdicts[j], res.maps[j], version, len(idx))
            except Exception:
                for k in idx:
                    try:
                        res = self._pass(version, [images[k]], [classes[k]], [routes[k]])
                        out[k] = _Scored(res.verdicts[0], res.maps[0], version, 1)
                    except Exception as exc:
                        out[k] = Rejected.from_exception("processing_error", exc)
        return out

    def _pass(self, version: str, images: list[np.ndarray], classes: list[str], routes: list):
        overrides = {c: cal for c, r in zip(classes, routes, strict=True) if (cal := r.calibration)}
        res = self.router.inspector(version).inspect(images, classes, overrides)
        for v in res.verdicts:
            if not math.isfinite(v.score):
                raise FloatingPointError(f"the model scored {v.score} (not a finite number)")
        return res

    # -- per record --------------------------------------------------------------------------

    def _store(self, p: Pending, sc: _Scored | Rejected) -> tuple[str, str | None] | Rejected:
        """Heatmap (and, for an inline image, the image itself) in the stores; runs in the
        pool, so it returns its rejection instead of raising it."""
        if isinstance(sc, Rejected):
            return sc
        ev = p.event
        assert ev is not None
        try:
            return _guard(lambda: self._write_blobs(p, ev, sc))
        except Rejected as r:
            return r

    def _write_blobs(self, p: Pending, ev: InspectionEvent, sc: _Scored) -> tuple[str, str | None]:
        heatmap = self.retry(
            "heatmap",
            lambda: self.heatmaps.write(
                ev.event_id,
                sc.amap,
                {"score": repr(sc.verdict.score), "model_version": sc.version},
            ),
        )
        image_uri = ev.image_uri
        data = p.inline_bytes
        if image_uri is None and data is not None and self.archive is not None:
            key = event_key(ev.event_id, image_suffix(data))
            archive = self.archive
            image_uri = self.retry("archive", lambda: archive.put(key, data))
        return heatmap, image_uri

    def _result(
        self,
        p: Pending,
        sc: _Scored,
        stored: tuple[str, str | None],
        now: datetime,
        timings: tuple[float, float, float, float],
    ) -> Outgoing:
        ev, v = p.event, sc.verdict
        assert ev is not None
        queue_s, fetch_ms, infer_ms, heatmap_ms = timings
        result = InspectionResult(
            event_id=ev.event_id,
            line=ev.line,
            station=ev.station,
            product_class=ev.product_class,
            captured_at=ev.captured_at,
            score=v.score,
            threshold=v.threshold,
            confidence=v.confidence,
            is_anomalous=v.is_anomalous,
            calibrated=v.calibrated,
            threshold_steady=v.threshold_steady,
            heatmap_uri=stored[0],
            model_version=sc.version,
            processed_at=now,
            timings=StageTimings(
                queue_ms=queue_s * 1000,
                fetch_decode_ms=fetch_ms,
                infer_ms=infer_ms,
                heatmap_ms=heatmap_ms,
                batch_size=sc.group_size,
            ),
            attributes=ev.attributes,
        )
        key = p.key if p.key is not None else ev.event_id.encode()
        value = result.model_dump_json().encode()
        headers = [("event_id", ev.event_id.encode())]
        size = record_size(key, value, headers)
        limit = self.dead_letters.max_publish_bytes  # one publish limit for every output
        if size > limit:
            raise Rejected(
                "result_too_large",
                f"its result is {size} bytes, above the publish limit {limit}",
            )
        return Outgoing(
            topic=self.results_topic,
            key=key,
            value=value,
            headers=headers,
            event_id=ev.event_id,
            kind="result",
            captured_at=ev.captured_at,
            verdict="anomalous" if v.is_anomalous else "normal",
            result=result,
            calibration=v.calibration,
            image_uri=stored[1],
            source=p,
        )
