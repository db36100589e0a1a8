"""Shared model state: which model version is active, what serves each class, and the model
artifacts themselves, so that a fleet of workers starts fast and switches models together.

Redis in production (`RedisStateStore`); the same interface in process (`LocalStateStore`) for
the embedded default. Redis is a cache and a coordination channel, never the only copy: the
artifact store (a directory or an fsspec URL) and the SQL model registry hold the truth, and a
worker seeds an empty Redis from them.

Layout in Redis (prefix `grad:` by default):
- `grad:active` -> the active model version;
- `grad:model:<version>` -> hash {blob: checkpoint bytes (safetensors + JSON, never pickle),
  sha256, size}; the hash and size are checked before the bytes are parsed;
- `grad:class:<product_class>` -> JSON `ClassState` (serving version, calibration override);
- channel `grad:changes` -> JSON `StateChange` after every promotion or class change.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable
from typing import Protocol

import redis

from model.core.backoff import Backoff
from model.core.clock import utc_now
from schemas import ClassState, StateChange


class StateStoreUnavailable(Exception):
    """The state store cannot be reached now; callers keep the state they have and retry."""


class CorruptArtifact(Exception):
    """Stored model bytes do not match their recorded size or hash."""


def now_iso() -> str:
    return utc_now().isoformat()


def blob_digest(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


class StateStore(Protocol):
    def active_version(self) -> str | None: ...
    def set_active(self, version: str) -> None: ...
    def put_model(self, version: str, blob: bytes) -> None: ...
    def get_model(self, version: str) -> bytes | None: ...
    def class_states(self) -> dict[str, ClassState]: ...
    def set_class_state(self, product_class: str, state: ClassState) -> None: ...
    def subscribe(self, on_change: Callable[[StateChange | None], None]) -> Callable[[], None]: ...
    def close(self) -> None: ...


class LocalStateStore:
    """The state store in process: one worker, no Redis (the embedded default)."""

    def __init__(self) -> None:
        self._active: str | None = None
        self._models: dict[str, bytes] = {}
        self._classes: dict[str, ClassState] = {}
        self._listeners: list[Callable[[StateChange | None], None]] = []
        self._lock = threading.Lock()

    def active_version(self) -> str | None:
        return self._active

    def set_active(self, version: str) -> None:
        if version not in self._models:
            raise KeyError(f"model {version} is not stored; put_model first")
        self._active = version
        self._announce(StateChange(kind="promotion", model_version=version, at=now_iso()))

    def put_model(self, version: str, blob: bytes) -> None:
        self._models[version] = blob

    def get_model(self, version: str) -> bytes | None:
        return self._models.get(version)

    def class_states(self) -> dict[str, ClassState]:
        return dict(self._classes)

    def set_class_state(self, product_class: str, state: ClassState) -> None:
        self._classes[product_class] = state
        self._announce(
            StateChange(
                kind="class",
                product_class=product_class,
                model_version=state.model_version,
                at=now_iso(),
            )
        )

    def subscribe(self, on_change: Callable[[StateChange | None], None]) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(on_change)
        return lambda: self._listeners.remove(on_change)

    def _announce(self, change: StateChange) -> None:
        for listener in list(self._listeners):
            listener(change)

    def close(self) -> None:
        self._listeners.clear()


class RedisStateStore:
    def __init__(self, url: str, prefix: str = "grad", timeout_s: float = 2.0) -> None:
        self.prefix = prefix
        self.r = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self.channel = f"{prefix}:changes"
        self._stop = threading.Event()

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _call(self, fn: Callable[[], object]) -> object:
        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StateStoreUnavailable(str(exc)) from exc

    def active_version(self) -> str | None:
        v = self._call(lambda: self.r.get(self._k("active")))
        return v.decode() if isinstance(v, bytes) else None

    def set_active(self, version: str) -> None:
        if not self._call(lambda: self.r.exists(self._k("model", version))):
            raise KeyError(f"model {version} is not stored; put_model first")
        change = StateChange(kind="promotion", model_version=version, at=now_iso())

        def tx() -> None:
            pipe = self.r.pipeline(transaction=True)
            pipe.set(self._k("active"), version)
            pipe.publish(self.channel, change.model_dump_json())
            pipe.execute()

        self._call(tx)

    def put_model(self, version: str, blob: bytes) -> None:
        mapping = {"blob": blob, "sha256": blob_digest(blob), "size": str(len(blob))}
        self._call(lambda: self.r.hset(self._k("model", version), mapping=mapping))

    def get_model(self, version: str) -> bytes | None:
        fields = self._call(lambda: self.r.hgetall(self._k("model", version)))
        assert isinstance(fields, dict)
        if not fields:
            return None
        blob, size, digest = fields.get(b"blob"), fields.get(b"size"), fields.get(b"sha256")
        if blob is None or size is None or digest is None:
            raise CorruptArtifact(f"model {version} in Redis is incomplete")
        if len(blob) != int(size) or blob_digest(blob) != digest.decode():
            raise CorruptArtifact(f"model {version} in Redis fails its size or sha256 check")
        return blob

    def class_states(self) -> dict[str, ClassState]:
        def read() -> dict[str, ClassState]:
            keys = list(self.r.scan_iter(match=self._k("class", "*"), count=500))
            values = self.r.mget(keys) if keys else []
            prefix = len(self._k("class", ""))
            return {
                k.decode()[prefix:]: ClassState.model_validate_json(v)
                for k, v in zip(keys, values, strict=True)
                if v is not None
            }

        out = self._call(read)
        assert isinstance(out, dict)
        return out

    def set_class_state(self, product_class: str, state: ClassState) -> None:
        change = StateChange(
            kind="class",
            product_class=product_class,
            model_version=state.model_version,
            at=now_iso(),
        )

        def tx() -> None:
            pipe = self.r.pipeline(transaction=True)
            pipe.set(self._k("class", product_class), state.model_dump_json())
            pipe.publish(self.channel, change.model_dump_json())
            pipe.execute()

        self._call(tx)

    def subscribe(self, on_change: Callable[[StateChange | None], None]) -> Callable[[], None]:
        """Call `on_change` for every announced change, from a background thread that
        reconnects with backoff. `on_change(None)` when the connection drops and again after it
        is back (changes may have been missed): the listener should re-read everything."""
        stop = threading.Event()

        def listen() -> None:
            backoff = Backoff()
            connected_before = False
            while not stop.is_set():
                pubsub = self.r.pubsub(ignore_subscribe_messages=True)
                try:
                    pubsub.subscribe(self.channel)
                    if connected_before:
                        on_change(None)
                    connected_before = True
                    backoff.reset()
                    while not stop.is_set():
                        msg = pubsub.get_message(timeout=0.5)
                        if msg and msg.get("type") == "message":
                            try:
                                on_change(StateChange.model_validate_json(msg["data"]))
                            except ValueError:
                                on_change(None)  # unreadable announcement: re-read all
                except (redis.ConnectionError, redis.TimeoutError, OSError):
                    if backoff.fresh:
                        on_change(None)  # connection lost: let the listener notice now
                    stop.wait(backoff.wait())
                finally:
                    with contextlib.suppress(redis.RedisError, OSError):
                        pubsub.close()

        t = threading.Thread(target=listen, name="state-changes", daemon=True)
        t.start()

        def unsubscribe() -> None:
            stop.set()
            t.join(timeout=5)

        return unsubscribe

    def ping(self) -> bool:
        try:
            return bool(self.r.ping())
        except (redis.ConnectionError, redis.TimeoutError):
            return False

    def close(self) -> None:
        self.r.close()


def open_state_store(url: str | None, prefix: str = "grad") -> StateStore:
    """Redis when a URL is given, the in-process store otherwise."""
    return RedisStateStore(url, prefix) if url else LocalStateStore()
