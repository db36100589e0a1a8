"""Dead letters: the original record unchanged, or, when it does not fit, kept in a store.

A dead letter's value is the original record's value byte for byte, its key the original key,
its headers the original headers plus `dlq.*` (`schemas.DeadLetter`), so a replay tool can
re-publish it untouched. A record can be larger than the dead-letter topic accepts (the worker
reads up to 16 MiB, a Kafka cluster's default record limit is about 1 MB): then the whole
original (key, value, headers, and where it came from) is written to `dead_letter_store` as one
JSON document, and the dead letter that is published carries an empty value, the `dlq.*` headers
and `dlq.original_uri` / `dlq.original_bytes` naming that document. Nothing is dropped either way.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from model.core.clock import utc_now
from model.stores.blobs import BlobStore, event_key
from schemas import DeadLetter
from worker.rejected import Rejected

if TYPE_CHECKING:
    from worker.pipeline import Outgoing, Pending

KEY_KEPT_BYTES = 1024  # a spilled dead letter keeps the original key up to this size


def original_document(p: Pending) -> bytes:
    """The whole consumed record as JSON (bytes as base64): what a spilled dead letter names."""

    def b64(b: bytes | None) -> str | None:
        return None if b is None else base64.b64encode(b).decode()

    return json.dumps(
        {
            "topic": p.topic,
            "partition": p.partition,
            "offset": p.offset,
            "key_b64": b64(p.key),
            "value_b64": b64(p.value),
            "headers": [[k, b64(v)] for k, v in p.headers],
        }
    ).encode()


def read_original(data: bytes) -> dict[str, Any]:
    """A spilled original back as `{topic, partition, offset, key, value, headers}` (bytes)."""
    doc = json.loads(data)

    def unb64(s: str | None) -> bytes | None:
        return None if s is None else base64.b64decode(s)

    return {
        "topic": doc["topic"],
        "partition": doc["partition"],
        "offset": doc["offset"],
        "key": unb64(doc["key_b64"]),
        "value": unb64(doc["value_b64"]),
        "headers": [(k, unb64(v)) for k, v in doc["headers"]],
    }


class DeadLetterWriter:
    def __init__(
        self,
        dlq_topic: str,
        instance_id: str,
        store: BlobStore,
        max_publish_bytes: int,
        retry: Callable[[str, Callable[[], Any]], Any],
    ) -> None:
        self.dlq_topic = dlq_topic
        self.instance_id = instance_id
        self.store = store
        self.max_publish_bytes = max_publish_bytes
        self.retry = retry  # bounded: raises Rejected when the store stays unreachable

    def write(self, p: Pending, r: Rejected, spill: bool = False) -> Outgoing:
        """The dead letter of `p`; spilled to the store when it does not fit (or when `spill`:
        the broker refused the whole form)."""
        from worker.pipeline import Outgoing, record_size

        dl = DeadLetter(
            reason=r.reason,  # type: ignore[arg-type]
            detail=r.detail[:2000],
            source_topic=p.topic,
            source_partition=p.partition,
            source_offset=p.offset,
            event_id=p.event.event_id if p.event is not None else None,
            worker=self.instance_id,
            failed_at=utc_now(),
            error_type=r.error_type,
        )
        original = [(k, v) for k, v in p.headers if not k.startswith("dlq.")]
        value = p.value if p.value is not None else b""
        headers = original + dl.to_headers()
        if not spill and record_size(p.key, value, headers) <= self.max_publish_bytes:
            return Outgoing(self.dlq_topic, p.key, value, headers, dl.event_id, r.reason, source=p)
        doc = original_document(p)
        key = event_key(f"{p.topic}/{p.partition}/{p.offset}", ".json")
        try:
            uri = self.retry("dead_letter_store", lambda: self.store.put(key, doc))
        except Rejected:
            # The store stayed unreachable for transient_retry_s: publish what fits rather than
            # stall the partition. The original is still in the source topic, at the position
            # the headers name, until the topic's retention removes it.
            uri = f"unavailable: see {p.topic}/{p.partition}@{p.offset}"
        dl = dl.model_copy(update={"original_uri": uri, "original_bytes": len(doc)})
        short_key = p.key if p.key is not None and len(p.key) <= KEY_KEPT_BYTES else None
        return Outgoing(
            self.dlq_topic,
            short_key,
            b"",
            dl.to_headers(),
            dl.event_id,
            r.reason,
            source=p,
            spilled=True,
        )
