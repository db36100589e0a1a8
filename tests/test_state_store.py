"""The shared state store against a real Redis, and its in-process twin."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis

from model.stores.state import (
    CorruptArtifact,
    LocalStateStore,
    RedisStateStore,
    StateStoreUnavailable,
)
from schemas import ClassCalibration, ClassState, StateChange

CAL = ClassCalibration(
    threshold=12.5,
    scale=1.0,
    target_fpr=0.01,
    n_images=20,
    mean=10,
    std=1,
    median=10,
    q99=12,
    max=12.4,
    method="lognormal",
)


@pytest.fixture(params=["redis", "local"])
def store(request, own_redis):
    if request.param == "local":
        yield LocalStateStore()
    else:
        s = RedisStateStore(own_redis.url, prefix=f"t{uuid.uuid4().hex[:6]}")
        yield s
        s.close()


def collect(store) -> tuple[list[StateChange | None], threading.Event]:
    seen: list[StateChange | None] = []
    got = threading.Event()

    def on_change(c):
        seen.append(c)
        got.set()

    store.unsubscribe = store.subscribe(on_change)
    time.sleep(0.3)  # the subscription is live before anything is announced
    return seen, got


def test_models_round_trip_and_promotion_is_announced(store):
    assert store.active_version() is None
    with pytest.raises(KeyError):
        store.set_active("grad-0000")  # no bytes stored for it: refuse to point at nothing
    store.put_model("grad-aaaa", b"checkpoint-bytes")
    assert store.get_model("grad-aaaa") == b"checkpoint-bytes"
    assert store.get_model("grad-bbbb") is None
    seen, got = collect(store)
    store.set_active("grad-aaaa")
    assert got.wait(5)
    assert store.active_version() == "grad-aaaa"
    assert seen[-1] is not None and seen[-1].kind == "promotion"
    assert seen[-1].model_version == "grad-aaaa"
    store.unsubscribe()


def test_class_state_round_trip_and_announcement(store):
    seen, got = collect(store)
    state = ClassState(
        model_version="grad-cccc", calibration=CAL, updated_at="2026-11-29T10:00:00Z"
    )
    store.set_class_state("cookie", state)
    assert got.wait(5)
    assert store.class_states() == {"cookie": state}
    assert seen[-1].kind == "class" and seen[-1].product_class == "cookie"
    store.unsubscribe()


def test_corrupt_model_bytes_are_refused(own_redis):
    s = RedisStateStore(own_redis.url, prefix="corrupt")
    s.put_model("grad-dddd", b"good bytes")
    raw = redis.Redis.from_url(own_redis.url)
    raw.hset("corrupt:model:grad-dddd", "blob", b"evil bytes")  # same size, other content
    with pytest.raises(CorruptArtifact):
        s.get_model("grad-dddd")
    raw.hset("corrupt:model:grad-dddd", "blob", b"short")
    with pytest.raises(CorruptArtifact):
        s.get_model("grad-dddd")


def test_outage_raises_unavailable_and_the_subscription_recovers(own_redis):
    s = RedisStateStore(own_redis.url, prefix="outage", timeout_s=0.5)
    seen, got = collect(s)
    own_redis.stop()
    with pytest.raises(StateStoreUnavailable):
        s.active_version()
    own_redis.start()
    # Told when the connection drops, and again once it is back (changes may have been missed).
    deadline = time.monotonic() + 15
    while seen.count(None) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert seen.count(None) == 2
    got.clear()
    s.put_model("grad-eeee", b"x")
    s.set_active("grad-eeee")
    assert got.wait(5) and seen[-1] is not None and seen[-1].model_version == "grad-eeee"
    s.unsubscribe()
