"""The crash-loop breaker: a record that kills the worker is dead-lettered, not retried for ever.

Some failures cannot be caught: the kernel kills the process for memory while it decodes an
image, a native library segfaults. The record was not committed, so the next owner of the
partition reads it again and dies again. To break that loop the worker writes an in-flight
marker (partition, first and last offset, crash count) to the inspection database *before* it
fetches, decodes or scores polled records (`schemas.tables.InFlight`). The marker outlives the
process that wrote it, and any member of the group that takes the partition next reads it.

A worker given a partition checks the marker against its starting position (the committed
offset): inside the marked range means its predecessor died with those records in flight. It
then takes the suspect records one at a time, each under a marker of its own, so a further
crash names exactly one record; once a record has been in flight for `poison_after` crashes it
is dead-lettered as `poison` without being processed again, and the records behind it are
scored. A graceful stop, a revocation and every committed batch leave nothing suspect: the
committed offset is then past the marked range.

A member that lost its session while its batch ran (it did not die) looks the same to the next
owner; that costs one batch processed record by record, and counts one crash, far below the
default of three.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from kafka.structs import TopicPartition

from model.stores.records import RecordStore
from model.stores.sql import RecordStoreUnavailable


@dataclass(frozen=True)
class Marker:
    first: int
    last: int
    crashes: int
    suspect_last: int


@dataclass
class Suspicion:
    """What a partition's new owner inferred from the marker its predecessor left."""

    last: int  # records up to this offset are processed one at a time
    crashes: dict[int, int]  # offset -> crashes it was already in flight for


def suspicion(marker: Marker | None, start: int) -> Suspicion | None:
    """Pure rule: given the marker and the offset the partition starts from, which records are
    suspect and how many crashes each has seen (the one in flight: the marker's count plus the
    crash that just happened; the others of a crashed batch: one)."""
    if marker is None:
        return None
    last = max(marker.last, marker.suspect_last)
    if not marker.first <= start <= last:
        return None  # committed past the marker: the previous owner finished
    crashes = {start: marker.crashes + 1} if start <= marker.last else {}
    return Suspicion(last=last, crashes=crashes)


class CrashBreaker:
    def __init__(
        self,
        store: RecordStore | None,
        group: str,
        worker: str,
        poison_after: int,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self.store = store  # None: recording is off, and so is the breaker
        self.group = group
        self.worker = worker
        self.poison_after = poison_after
        self.log = log
        self.checked: set[TopicPartition] = set()
        self.suspects: dict[TopicPartition, Suspicion] = {}

    def forget(self, tps: object) -> None:
        """Partitions revoked: their markers are read afresh if they come back."""
        for tp in list(tps):  # type: ignore[call-overload]
            self.checked.discard(tp)
            self.suspects.pop(tp, None)

    def is_suspect(self, tp: TopicPartition, offset: int) -> bool:
        """Whether this record must be processed alone (reads the marker on first sight)."""
        if self.store is None:
            return False
        if tp not in self.checked:
            self.checked.add(tp)
            found = suspicion(self._read(tp), offset)
            if found is not None:
                self.suspects[tp] = found
                self.log.warning(
                    "partition resumed inside a crashed batch: records one at a time",
                    topic=tp.topic,
                    partition=tp.partition,
                    first=offset,
                    last=found.last,
                    crashes=found.crashes.get(offset, 1),
                )
        s = self.suspects.get(tp)
        if s is None:
            return False
        if offset > s.last:
            del self.suspects[tp]
            return False
        return True

    def crashes(self, tp: TopicPartition, offset: int) -> int:
        """Crashes a suspect record was in flight for (at least the batch crash)."""
        s = self.suspects.get(tp)
        return 0 if s is None else s.crashes.get(offset, 1)

    def is_poison(self, tp: TopicPartition, offset: int) -> bool:
        return self.crashes(tp, offset) >= self.poison_after

    def mark_batch(self, ranges: dict[TopicPartition, tuple[int, int]]) -> None:
        """Before fetching: these ranges are in flight, for the first time."""
        self._write([(tp, first, last, 0, -1) for tp, (first, last) in ranges.items()])

    def mark_alone(self, tp: TopicPartition, offset: int) -> None:
        s = self.suspects.get(tp)
        self._write([(tp, offset, offset, self.crashes(tp, offset), s.last if s else -1)])

    def _write(self, rows: list[tuple[TopicPartition, int, int, int, int]]) -> None:
        if self.store is None or not rows:
            return
        markers = [
            {
                "topic": tp.topic,
                "partition": tp.partition,
                "first_offset": first,
                "last_offset": last,
                "crashes": crashes,
                "suspect_last": suspect_last,
            }
            for tp, first, last, crashes, suspect_last in rows
        ]
        try:
            self.store.mark_in_flight(self.group, markers, self.worker)
        except RecordStoreUnavailable as exc:
            # Best effort while the database is down: the batch still cannot be committed
            # before its rows are written, so only the breaker's memory is missing meanwhile.
            self.log.warning("in-flight marker not written (database unreachable)", error=str(exc))

    def _read(self, tp: TopicPartition) -> Marker | None:
        assert self.store is not None
        try:
            row = self.store.in_flight(self.group, tp.topic, tp.partition)
        except RecordStoreUnavailable as exc:
            self.log.warning("in-flight marker not read (database unreachable)", error=str(exc))
            return None
        if row is None:
            return None
        return Marker(row["first_offset"], row["last_offset"], row["crashes"], row["suspect_last"])
