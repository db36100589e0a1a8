"""Feed images to a line topic and read what comes back: the demo, the benchmarks and the tests
use this, and so can an operator commissioning a line.

    python -m worker.feed --bootstrap HOST:PORT --topic line-3 --data DIR [--inline]

sends every test image of an MVTec-layout directory as an inspection event (URIs by default, so
the worker needs `--image-root DIR`).
"""

from __future__ import annotations

import argparse
import base64
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer

from model.core.clock import utc_now
from schemas import EVENT_SCHEMA_VERSION, InspectionEvent


def make_event(
    image: Path,
    product_class: str,
    *,
    line: str = "line-3",
    station: str = "cam-1",
    inline: bool = False,
    event_id: str | None = None,
    attributes: dict[str, Any] | None = None,
) -> InspectionEvent:
    """An event for an image file: a file:// URI, or the bytes inline."""
    image = Path(image).resolve()
    return InspectionEvent(
        schema_version=EVENT_SCHEMA_VERSION,
        event_id=event_id or f"{line}-{uuid.uuid4().hex}",
        line=line,
        station=station,
        product_class=product_class,
        captured_at=utc_now(),
        image_b64=base64.b64encode(image.read_bytes()).decode() if inline else None,
        image_uri=None if inline else image.as_uri(),
        attributes=attributes or {},
    )


def producer_for(bootstrap: str, max_bytes: int = 16 * 1024 * 1024) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=max_bytes
    )


def send_event(producer: KafkaProducer, topic: str, event: InspectionEvent) -> None:
    """Keyed by station, so one camera's images stay in order."""
    event = event.model_copy(update={"captured_at": utc_now()})
    producer.send(topic, key=event.station.encode(), value=event.model_dump_json().encode())


@dataclass(frozen=True)
class Received:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def read_topics(
    bootstrap: str, topics: list[str], until: int, timeout_s: float = 120.0
) -> list[Received]:
    """Read records from the start of `topics` until `until` have arrived or time runs out.

    Reads by assignment, not by group: a reader must not disturb the worker's group, and the
    test broker answers group joins slowly. Reads to a count, not to end offsets, which the
    test broker reports inside batches.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=32 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    try:
        from kafka.structs import TopicPartition

        parts = []
        for t in topics:
            deadline = time.monotonic() + 10
            while not consumer.partitions_for_topic(t) and time.monotonic() < deadline:
                time.sleep(0.1)
            parts += [TopicPartition(t, p) for p in consumer.partitions_for_topic(t) or []]
        consumer.assign(parts)
        consumer.seek_to_beginning()
        got: list[Received] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < until and time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=200).values():
                got += [
                    Received(r.topic, r.partition, r.offset, r.key, r.value, list(r.headers or []))
                    for r in recs
                ]
        return got
    finally:
        consumer.close(autocommit=False)


def inspection_images(data: Path) -> Iterator[tuple[str, Path, bool]]:
    """(class, image, is_defective) for every test image of an MVTec-layout directory."""
    for class_dir in sorted(p for p in Path(data).iterdir() if (p / "test").is_dir()):
        for kind in sorted(p for p in (class_dir / "test").iterdir() if p.is_dir()):
            for img in sorted(kind.iterdir()):
                if img.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
                    yield class_dir.name, img, kind.name != "good"


def feed(
    producer: KafkaProducer, topic: str, events: Iterable[InspectionEvent], rate_hz: float = 0
) -> int:
    """Send events, at `rate_hz` if given (a steady offered load), else as fast as possible."""
    n = 0
    t0 = time.monotonic()
    for ev in events:
        if rate_hz > 0:
            delay = t0 + n / rate_hz - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        send_event(producer, topic, ev)
        n += 1
    producer.flush()
    return n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m worker.feed", description=__doc__.split("\n")[0])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--data", type=Path, required=True, help="MVTec-layout directory")
    ap.add_argument("--inline", action="store_true", help="send bytes inline, not URIs")
    ap.add_argument("--rate", type=float, default=0.0, help="events per second (0: flat out)")
    args = ap.parse_args(argv)
    producer = producer_for(args.bootstrap)
    events = (
        make_event(img, cls, line=args.topic, inline=args.inline)
        for cls, img, _ in inspection_images(args.data)
    )
    n = feed(producer, args.topic, events, args.rate)
    producer.close()
    print(f"sent {n} events to {args.topic}")


if __name__ == "__main__":
    main()
