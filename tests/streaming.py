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


def wait_processed(worker, n: int, stall_s: float = 120.0, metric: str = "") -> None:
    """Wait until `worker` has handled `n` records (results plus dead letters), however long
    that takes while it keeps making progress; fail only when the count stops moving for
    `stall_s`. A loaded machine slows the worker down, it must not fail the test."""
    import time

    def count() -> float:
        if metric:
            return worker.metric(metric)
        return worker.metric("grad_events_processed_total") + worker.metric(
            "grad_events_dead_lettered_total"
        )

    last, since = -1.0, time.monotonic()
    while (now := count()) < n:
        if now != last:
            last, since = now, time.monotonic()
        assert worker.proc is not None and worker.proc.poll() is None, worker.tail()
        assert time.monotonic() - since < stall_s, f"stalled at {now} of {n}\n{worker.tail()}"
        time.sleep(0.5)
