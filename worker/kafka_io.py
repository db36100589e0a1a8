"""Kafka clients built from the settings: the one place that knows kafka-python's options."""

from __future__ import annotations

from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import CorruptRecordError, KafkaError

from worker.settings import WorkerSettings


def client_options(s: WorkerSettings) -> dict[str, Any]:
    """Connection and security options shared by the consumer and the producer."""
    opts: dict[str, Any] = {
        "bootstrap_servers": s.bootstrap_servers,
        "security_protocol": s.security_protocol,
        "client_id": f"grad-worker-{s.instance_id}",
    }
    if s.security_protocol in ("SSL", "SASL_SSL"):
        opts.update(
            ssl_cafile=str(s.ssl_cafile) if s.ssl_cafile else None,
            ssl_certfile=str(s.ssl_certfile) if s.ssl_certfile else None,
            ssl_keyfile=str(s.ssl_keyfile) if s.ssl_keyfile else None,
            ssl_check_hostname=s.ssl_check_hostname,
        )
    if s.security_protocol.startswith("SASL"):
        assert s.sasl_password is not None  # checked by the settings
        opts.update(
            sasl_mechanism=s.sasl_mechanism,
            sasl_plain_username=s.sasl_username,
            sasl_plain_password=s.sasl_password.get_secret_value(),
        )
    return opts


def build_consumer(s: WorkerSettings) -> KafkaConsumer:
    """A group member that commits by hand, only after a batch's side effects are durable."""
    return KafkaConsumer(
        group_id=s.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=s.session_timeout_ms,
        heartbeat_interval_ms=s.heartbeat_interval_ms,
        max_poll_interval_ms=s.max_poll_interval_ms,
        max_poll_records=s.max_batch,
        max_partition_fetch_bytes=s.max_message_bytes,
        fetch_max_bytes=max(s.max_message_bytes, 52_428_800),
        **client_options(s),
    )


def build_producer(s: WorkerSettings) -> KafkaProducer:
    """Results and dead letters: acknowledged by all in-sync replicas, retried by the client."""
    return KafkaProducer(
        acks="all",
        retries=10,
        linger_ms=5,
        max_request_size=s.max_publish_bytes + 64 * 1024,  # the binding check is our own
        **client_options(s),
    )


def unreadable_position(consumer: KafkaConsumer, exc: BaseException) -> tuple[Any, int] | None:
    """Where the record lies that made `poll` raise `exc` while decoding it, or None when the
    exception is not a record-decoding one.

    kafka-python (3.x) decodes records lazily inside `poll`; a record it cannot decode (a
    header key that is not UTF-8, a failed checksum) raises there, and again on every later
    poll and after every restart, since the position stays on it. The partition being decoded
    and the offset of the failing record stay on the fetcher (`_next_partition_records`):
    private, so a test pins this against the installed version.
    """
    if isinstance(exc, KafkaError) and not isinstance(exc, CorruptRecordError):
        return None  # the connection's or the group's problem, not a record's
    part = getattr(getattr(consumer, "_fetcher", None), "_next_partition_records", None)
    tp = getattr(part, "topic_partition", None)
    offset = getattr(part, "next_fetch_offset", None)
    if tp is None or offset is None:
        return None
    return tp, int(offset)
