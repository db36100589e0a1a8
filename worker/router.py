"""Which loaded model scores which product class, kept in step with the shared state store.

The consume loop calls `refresh_if_needed()` between batches, never during one, so a promotion
or a recalibration takes effect on a batch boundary: no event is scored twice or by a model
half swapped in, and every result names the version that actually scored it.

When the state store is unreachable the router keeps the state it has (workers go on scoring
with the models they hold), reports the outage, and catches up when the store answers again.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from model.inference.checkpoint import from_bytes
from model.inference.inspector import Inspector, ServeOptions
from model.stores.artifacts import ArtifactStore, read_bytes
from model.stores.checkpoints import ModelNotFound, find_model_bytes
from model.stores.state import CorruptArtifact, StateStore, StateStoreUnavailable
from schemas import ClassCalibration, ClassState, StateChange

RETRY_S = 2.0  # between attempts to re-read the state while the store is unreachable


@dataclass(frozen=True)
class Route:
    version: str
    calibration: ClassCalibration | None  # override from the state store, if any


@dataclass
class Snapshot:
    active: str
    classes: dict[str, ClassState] = field(default_factory=dict)


class ModelRouter:
    def __init__(
        self,
        store: StateStore,
        artifacts: ArtifactStore,
        device: str,
        backbone_weights: Path | None = None,
        refresh_s: float = 30.0,
        serve: ServeOptions | None = None,
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.device = device
        self.backbone_weights = backbone_weights
        self.serve = serve or ServeOptions()  # the runtime every loaded model is served by
        self.refresh_s = refresh_s
        self.inspectors: dict[str, Inspector] = {}
        self.blobs: dict[str, bytes] = {}  # to re-seed a store that lost its data
        self.snapshot: Snapshot | None = None
        self.store_ok = True
        self.changed = threading.Event()
        self.last_refresh = 0.0
        self.log = structlog.get_logger("worker.router")
        self._unsubscribe = None

    # -- start-up ----------------------------------------------------------------------------

    def start(self, seed_checkpoint: str | Path | None) -> None:
        """Load the active model; with an empty store, seed it from `seed_checkpoint`. With the
        store unreachable, serve `seed_checkpoint` alone until the store answers."""
        try:
            if self.store.active_version() is None:
                if seed_checkpoint is None:
                    raise RuntimeError("no active model in the state store and no checkpoint given")
                self._seed(seed_checkpoint)
            self.refresh()
        except StateStoreUnavailable as exc:
            if seed_checkpoint is None:
                raise RuntimeError(
                    f"state store unreachable and no checkpoint given: {exc}"
                ) from exc
            self.log.warning("state store unreachable at start: serving the given checkpoint")
            blob = read_bytes(seed_checkpoint)
            inspector = Inspector.from_checkpoint(
                blob, self.device, self.backbone_weights, serve=self.serve
            )
            self.inspectors = {inspector.version: inspector}
            self.blobs = {inspector.version: blob}
            self.snapshot = Snapshot(inspector.version)
            self.store_ok = False
        if self.snapshot is None:
            raise RuntimeError("could not load the active model")
        self._unsubscribe = self.store.subscribe(self._on_change)

    def _seed(self, checkpoint: str | Path) -> None:
        blob = read_bytes(checkpoint)
        _, meta = from_bytes(blob)  # verified before it is shared with the fleet
        self.artifacts.put(meta.version, blob)
        self.store.put_model(meta.version, blob)
        if self.store.active_version() is None:  # another worker may have seeded meanwhile
            self.store.set_active(meta.version)
        self.log.info("seeded the state store", version=meta.version, source=str(checkpoint))

    def _on_change(self, change: StateChange | None) -> None:
        self.changed.set()

    def close(self) -> None:
        if self._unsubscribe:
            self._unsubscribe()

    # -- keeping in step ---------------------------------------------------------------------

    def refresh_if_needed(self) -> bool:
        """Re-read the state if a change was announced (or periodically, in case an
        announcement was missed). Returns True when what serves some class changed."""
        since = time.monotonic() - self.last_refresh
        retry = not self.store_ok and since > RETRY_S  # reconnect attempts, spaced out
        if self.changed.is_set() or since > self.refresh_s or retry:
            return self.refresh()
        return False

    def refresh(self) -> bool:
        self.changed.clear()
        self.last_refresh = time.monotonic()
        try:
            active = self.store.active_version()
            classes = self.store.class_states()
        except StateStoreUnavailable as exc:
            if self.store_ok:
                self.log.warning(
                    "state store unavailable: serving with the state held", error=str(exc)
                )
            self.store_ok = False
            return False
        if not self.store_ok:
            self.log.info("state store back")
        self.store_ok = True
        if active is None:
            if self.snapshot is not None:  # the store lost its data (a restart without
                self._reseed()  # persistence): give the fleet back the state held here
            return False
        wanted = {active} | {c.model_version for c in classes.values() if c.model_version}
        loaded = dict(self.inspectors)
        for version in sorted(wanted - set(loaded)):
            try:
                loaded[version] = self._load(version)
            except (
                CorruptArtifact,
                ModelNotFound,
                ValueError,
                OSError,
                StateStoreUnavailable,
            ) as exc:
                self.log.error("cannot load model", version=version, error=str(exc))
        if active not in loaded:
            return False  # keep serving what we have
        # A class whose canary version failed to load stays on the active model.
        classes = {
            c: s
            if not s.model_version or s.model_version in loaded
            else s.model_copy(update={"model_version": None})
            for c, s in classes.items()
        }
        new = Snapshot(active, classes)
        changed = self.snapshot is None or self.snapshot != new
        in_use = {active} | {s.model_version for s in classes.values() if s.model_version}
        self.inspectors = {v: i for v, i in loaded.items() if v in in_use}
        self.blobs = {v: b for v, b in self.blobs.items() if v in in_use}
        self.snapshot = new
        if changed:
            self.log.info(
                "serving",
                active=active,
                canaries={c: s.model_version for c, s in classes.items() if s.model_version},
            )
        return changed

    def _reseed(self) -> None:
        assert self.snapshot is not None
        try:
            for version, blob in self.blobs.items():
                self.store.put_model(version, blob)
            if self.store.active_version() is None:
                self.store.set_active(self.snapshot.active)
            self.log.warning("state store was empty: re-seeded", active=self.snapshot.active)
        except StateStoreUnavailable:
            self.store_ok = False

    def _load(self, version: str) -> Inspector:
        # A flushed state store is refilled from the artifact store as versions are loaded.
        blob = find_model_bytes(version, self.store, self.artifacts, reseed=True)
        inspector = Inspector.from_checkpoint(
            blob, self.device, self.backbone_weights, expect=version, serve=self.serve
        )
        self.blobs[version] = blob
        self.log.info(
            "model loaded",
            version=version,
            device=str(inspector.device),
            runtime=inspector.runtime.name,
            precision=inspector.runtime.precision,
        )
        return inspector

    # -- routing -----------------------------------------------------------------------------

    def route(self, product_class: str) -> Route:
        assert self.snapshot is not None
        state = self.snapshot.classes.get(product_class)
        version = (state.model_version if state else None) or self.snapshot.active
        return Route(version, state.calibration if state else None)

    def inspector(self, version: str) -> Inspector:
        return self.inspectors[version]

    @property
    def active(self) -> str:
        assert self.snapshot is not None
        return self.snapshot.active
