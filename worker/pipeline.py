"""From consumed records to outgoing records: parse, fetch and decode, score, heatmap.

Kafka-free: the loop (`worker.loop`) feeds it records and publishes what it returns, so every
decision about a record (result or dead letter, and why) is made here and tested without a
broker. Each record yields exactly one outgoing record.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

import numpy as np
from pydantic import ValidationError

from model.blob_store import BlobStore, event_key, image_suffix
from model.inference import Verdict
from schemas import (
    EVENT_SCHEMA_VERSION,
    DeadLetter,
    InspectionEvent,
    InspectionResult,
    OperatorLabel,
)
from schemas.events import StageTimings
from worker.heatmaps import HeatmapStore
from worker.image_source import ImageSource, Rejected
from worker.models import ModelRouter

M = TypeVar("M", InspectionEvent, OperatorLabel)


def _parse(value: bytes | None, model: type[M], invalid: str) -> M:
    if value is None:
        raise Rejected("invalid_json", "record has no value (tombstone)")
    try:
        data = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Rejected("invalid_json", str(exc)) from exc
    if not isinstance(data, dict):
        raise Rejected("invalid_json", f"expected a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if version != EVENT_SCHEMA_VERSION:
        raise Rejected(
            "unknown_schema_version",
            f"schema_version {version!r}; this worker reads {EVENT_SCHEMA_VERSION}",
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors()
        )
        raise Rejected(invalid, errors) from exc


def parse_event(value: bytes | None) -> InspectionEvent:
    """The event in a record's value, or `Rejected` saying what is wrong with it."""
    return _parse(value, InspectionEvent, "invalid_event")


def parse_label(value: bytes | None) -> OperatorLabel:
    """An operator label from the feedback topic, or `Rejected`."""
    return _parse(value, OperatorLabel, "invalid_label")


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
    image_uri: str | None = None


def _timed_load(source: ImageSource, event: InspectionEvent, p: Pending) -> np.ndarray:
    t0 = time.perf_counter()
    try:
        data = source.fetch(event)
        img = source.decode(data)
        if event.image_b64 is not None:
            p.inline_bytes = data  # archived with the results, so retraining can read it back
        return img
    finally:
        p.fetch_ms = (time.perf_counter() - t0) * 1000


def admit(
    p: Pending, source: ImageSource, pool: Executor, feedback_topic: str | None = None
) -> Pending:
    """Parse now; start fetching and decoding in the pool, off the polling thread."""
    try:
        if p.topic == feedback_topic:
            p.label = parse_label(p.value)
            return p
        p.event = parse_event(p.value)
    except Rejected as r:
        p.rejection = r
        return p
    p.image = pool.submit(_timed_load, source, p.event, p)
    return p


class BatchProcessor:
    """Turns a batch of admitted records into results and dead letters (one each)."""

    def __init__(
        self,
        router: ModelRouter,
        heatmaps: HeatmapStore,
        pool: Executor,
        results_topic: str,
        dlq_topic: str,
        instance_id: str,
        retry: Callable[[str, Callable[[], Any]], Any],
        archive: BlobStore | None = None,
    ) -> None:
        self.router = router
        self.heatmaps = heatmaps
        self.pool = pool
        self.results_topic = results_topic
        self.dlq_topic = dlq_topic
        self.instance_id = instance_id
        self.retry = retry  # retry(stage, fn): runs fn until it stops raising a transient error
        self.archive = archive  # where inline images are kept (they have no URI of their own)

    def process(self, batch: list[Pending]) -> list[Outgoing]:
        """One outgoing record per inspection event or rejected record; labels have none (the
        loop records them)."""
        t_start = time.monotonic()
        images: list[np.ndarray] = []
        scored: list[int] = []
        for i, p in enumerate(batch):
            if p.image is not None:
                try:
                    images.append(p.image.result())
                    scored.append(i)
                except Rejected as r:
                    p.rejection = r
        out: dict[int, Outgoing] = {
            i: self.dead_letter(p, p.rejection)
            for i, p in enumerate(batch)
            if p.rejection is not None
        }
        if scored:
            results = self._score([batch[i] for i in scored], images, t_start)
            out.update(zip(scored, results, strict=True))
        return [out[i] for i in range(len(batch)) if i in out]

    def _score(
        self, scored: list[Pending], images: list[np.ndarray], t_start: float
    ) -> list[Outgoing]:
        events = [p.event for p in scored if p.event is not None]
        assert len(events) == len(scored)
        n = len(events)
        # One forward pass per model version in use (one, except while a class is on a canary).
        routes = [self.router.route(ev.product_class) for ev in events]
        groups: dict[str, list[int]] = {}
        for k, route in enumerate(routes):
            groups.setdefault(route.version, []).append(k)
        verdicts: list[Verdict] = [None] * n  # type: ignore[list-item]
        maps: list[np.ndarray] = [None] * n  # type: ignore[list-item]
        group_size = [0] * n
        t0 = time.perf_counter()
        for version, idx in groups.items():
            overrides = {
                events[k].product_class: cal for k in idx if (cal := routes[k].calibration)
            }
            res = self.router.inspector(version).inspect(
                [images[k] for k in idx], [events[k].product_class for k in idx], overrides
            )
            for j, k in enumerate(idx):
                verdicts[k], maps[k], group_size[k] = res.verdicts[j], res.maps[j], len(idx)
        infer_ms = (time.perf_counter() - t0) * 1000

        t0 = time.perf_counter()

        def store(k: int) -> tuple[str, str | None]:
            ev = events[k]
            heatmap = self.retry(
                "heatmap",
                lambda: self.heatmaps.write(
                    ev.event_id,
                    maps[k],
                    {"score": repr(verdicts[k].score), "model_version": routes[k].version},
                ),
            )
            image_uri = ev.image_uri
            data = scored[k].inline_bytes
            if image_uri is None and data is not None and self.archive is not None:
                key = event_key(ev.event_id, image_suffix(data))
                image_uri = self.retry("archive", lambda: self.archive.put(key, data))
            return heatmap, image_uri

        stored = list(self.pool.map(store, range(n)))
        uris = [h for h, _ in stored]
        heatmap_ms = (time.perf_counter() - t0) * 1000

        now = datetime.now(timezone.utc)
        outgoing = []
        for k, (p, ev, v, uri) in enumerate(zip(scored, events, verdicts, uris, strict=True)):
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
                heatmap_uri=uri,
                model_version=routes[k].version,
                processed_at=now,
                timings=StageTimings(
                    queue_ms=(t_start - p.consumed_at) * 1000,
                    fetch_decode_ms=p.fetch_ms,
                    infer_ms=infer_ms,
                    heatmap_ms=heatmap_ms,
                    batch_size=group_size[k],
                ),
                attributes=ev.attributes,
            )
            outgoing.append(
                Outgoing(
                    topic=self.results_topic,
                    key=p.key if p.key is not None else ev.event_id.encode(),
                    value=result.model_dump_json().encode(),
                    headers=[("event_id", ev.event_id.encode())],
                    event_id=ev.event_id,
                    kind="result",
                    captured_at=ev.captured_at,
                    verdict="anomalous" if v.is_anomalous else "normal",
                    result=result,
                    image_uri=stored[k][1],
                )
            )
        return outgoing

    def dead_letter(self, p: Pending, r: Rejected) -> Outgoing:
        dl = DeadLetter(
            reason=r.reason,  # type: ignore[arg-type]
            detail=r.detail[:2000],
            source_topic=p.topic,
            source_partition=p.partition,
            source_offset=p.offset,
            event_id=p.event.event_id if p.event is not None else None,
            worker=self.instance_id,
            failed_at=datetime.now(timezone.utc),
        )
        original = [(k, v) for k, v in p.headers if not k.startswith("dlq.")]
        return Outgoing(
            topic=self.dlq_topic,
            key=p.key,
            value=p.value if p.value is not None else b"",
            headers=original + dl.to_headers(),
            event_id=dl.event_id,
            kind=r.reason,
        )
