"""Helpers for the streaming tests (the worker processes themselves: worker.process)."""

from __future__ import annotations

from kafka import KafkaConsumer
from kafka.structs import TopicPartition


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offset per partition (-1 where none)."""
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: (c.committed(TopicPartition(topic, p)) or -1) for p in range(partitions)}
    finally:
        c.close(autocommit=False)
