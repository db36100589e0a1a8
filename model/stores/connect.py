"""The stores a model-management program works on, opened from its `StoreSettings`: the SQL
record, the workers' state store (only when one is configured: these programs never invent an
in-process one, which no worker would see) and the artifact store.

One place opens them and one closes them, so `model.retrain`, `model.promote` and the review
station reach the same stores the same way. Nothing is contacted until first used.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType

from model.stores.artifacts import ArtifactStore
from model.stores.records import RecordStore
from model.stores.settings import StoreSettings
from model.stores.state import RedisStateStore, StateStore


@dataclass
class Stores:
    records: RecordStore
    state: StateStore | None
    artifacts: ArtifactStore

    def close(self) -> None:
        self.records.close()
        if self.state is not None:
            self.state.close()

    def __enter__(self) -> Stores:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def connect(settings: StoreSettings) -> Stores:
    """Open the record, the state store (None when `redis_url` is unset) and the artifacts."""
    url = settings.redis()
    return Stores(
        records=RecordStore(settings.database_url.get_secret_value()),
        state=RedisStateStore(url, settings.state_prefix) if url else None,
        artifacts=ArtifactStore(settings.artifact_store),
    )
