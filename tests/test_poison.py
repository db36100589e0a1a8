"""No single record may stop a line: a real worker on the real broker, fed the corpus of records
that ever broke or stalled it and a few hundred generated ones (hypothesis), and one record that
kills every worker that touches it (the crash-loop breaker).

The property, for every record: exactly one result or one dead letter, the worker never exits,
and the committed offsets reach the end of every partition."""

from __future__ import annotations

import base64
import http.server
import json
import os
import random
import signal
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from schemas import DeadLetter, InspectionResult
from tests.streaming import committed
from worker.dead_letters import read_original
from worker.embedded_broker import EmbeddedBroker
from worker.feed import Received, producer_for, read_topics
from worker.process import WorkerProcess

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).parent / "corpus" / "hostile_records.json"
PARTITIONS = 3
GENERATED = 240  # hypothesis examples fed to the worker


class RawKey(str):
    """A header key that encodes to bytes that are not UTF-8. kafka-python's producer encodes
    keys with `.encode()`, so this is how a misbehaving producer is played: the broker stores
    the bytes as they come, and the worker's client has to cope."""

    def encode(self, *args: object, **kwargs: object) -> bytes:  # type: ignore[override]
        return str.encode(self, "latin-1")


def new_topic(broker: EmbeddedBroker, partitions: int = PARTITIONS) -> str:
    topic = f"fuzz-{uuid.uuid4().hex[:8]}"
    for name, n in ((topic, partitions), (f"{topic}.results", 1), (f"{topic}.dlq", 1)):
        broker.create_topic(name, n)
    broker.create_topic(f"{topic}.feedback", 1)
    return topic


def corpus_value(entry: dict, root: Path, image: Path) -> bytes | None:
    if entry["value"] is None:
        return None
    text = "".join(s * n for s, n in entry["value"])
    text = text.replace("@@ID@@", f"c-{uuid.uuid4().hex[:10]}")
    text = text.replace("@@URI@@", image.as_uri()).replace("@@ROOT@@", root.as_uri())
    return text.encode("latin-1")


def good_event(image: Path, inline: bool, **extra: object) -> dict:
    ev: dict[str, object] = {
        "schema_version": 1,
        "event_id": f"g-{uuid.uuid4().hex[:12]}",
        "line": "fuzz",
        "station": "cam-1",
        "product_class": "cookie",
        "captured_at": datetime.now(timezone.utc).isoformat(),
    }
    if inline:
        ev["image_b64"] = base64.b64encode(image.read_bytes()).decode()
    else:
        ev["image_uri"] = image.as_uri()
    ev.update(extra)
    return ev


# -- generated records ---------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "schema_version",
    "line",
    "station",
    "product_class",
    "captured_at",
    "image_uri",
    "image_b64",
    "attributes",
]


@st.composite
def mutated_event(draw: st.DrawFn, image: Path) -> bytes:
    """A valid event with some fields dropped, replaced by any JSON value, or added."""
    ev = good_event(image, inline=draw(st.booleans()))
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=3, unique=True)):
        if draw(st.booleans()):
            ev.pop(name, None)
        else:
            ev[name] = draw(json_values)
    if draw(st.booleans()):
        ev[draw(st.text(min_size=1, max_size=10))] = draw(json_values)
    if draw(st.booleans()):
        ev["attributes"] = draw(st.dictionaries(st.text(max_size=10), json_values, max_size=5))
    return json.dumps(ev).encode()


def record_values(image: Path) -> st.SearchStrategy[bytes | None]:
    valid = st.builds(lambda inline: json.dumps(good_event(image, inline)).encode(), st.booleans())
    return st.one_of(
        valid,
        mutated_event(image),
        st.builds(lambda v: json.dumps(v).encode(), json_values),
        st.binary(max_size=200),
        st.none(),
    )


headers_strategy = st.lists(
    st.tuples(
        st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12),
        st.binary(max_size=40),
    ),
    max_size=3,
)


# -- the test ------------------------------------------------------------------------------


def test_fuzz_and_the_hostile_corpus_never_stop_the_worker(
    broker, sample_data, tiny_ckpt, tmp_path, report_figure
):
    topic = new_topic(broker)
    root = tmp_path / "root"
    root.mkdir()
    os.mkfifo(root / "fifo.png")  # a FIFO with no writer: opening it would block for ever
    image = sorted((sample_data / "fabric" / "test" / "good").iterdir())[0]
    (root / "good.png").write_bytes(image.read_bytes())
    image = root / "good.png"
    producer = producer_for(broker.bootstrap)
    sent: list[tuple[object, bytes | None, dict]] = []  # (future, value, corpus entry or {})

    corpus = json.loads(CORPUS.read_text())["records"]
    for i, entry in enumerate(corpus):
        value = corpus_value(entry, root, image)
        headers = [
            (RawKey(k) if entry.get("raw_header_keys") else k, v.encode())
            for k, v in entry.get("headers", [])
        ]
        fut = producer.send(topic, key=b"k%d" % i, value=value, headers=headers or None)
        sent.append((fut, value, entry))

    t0 = time.monotonic()
    # A new seed every run (that is what fuzzing is for), named in the figures and in every
    # failure, so a failing run can be replayed: GRAD_TEST_FUZZ_SEED=<seed>.
    fuzz_seed = int(os.environ.get("GRAD_TEST_FUZZ_SEED") or random.SystemRandom().randrange(2**32))

    @seed(fuzz_seed)
    @settings(
        max_examples=GENERATED,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        value=record_values(image),
        key=st.none() | st.binary(max_size=20),
        headers=headers_strategy,
    )
    def feed(value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        if value is None and key is None:
            key = b""  # the client refuses a record with neither (a tombstone needs a key)
        sent.append(
            (producer.send(topic, key=key, value=value, headers=headers or None), value, {})
        )

    feed()
    producer.flush()
    positions = [(fut.get(10), value, entry) for fut, value, entry in sent]  # type: ignore[attr-defined]
    producer.close()
    generated_s = time.monotonic() - t0

    w = WorkerProcess(
        broker.bootstrap,
        topic,
        tiny_ckpt,
        [root, sample_data],
        tmp_path / "heatmaps",
        tmp_path / "worker.log",
        extra_env={
            "WORKER_MAX_PUBLISH_BYTES": "100000",
            "WORKER_MAX_ATTRIBUTES_BYTES": "40000",
            "WORKER_DEAD_LETTER_STORE": str(tmp_path / "dead-letters"),
        },
    ).start()
    t1 = time.monotonic()
    try:
        w.wait_ready()
        outputs = [f"{topic}.results", f"{topic}.dlq"]
        read_topics(broker.bootstrap, outputs, until=len(sent), timeout_s=300)
        done = lambda: committed(broker.bootstrap, "grad-test", topic, PARTITIONS)  # noqa: E731
        last = {}
        for md, _, _ in positions:
            last[md.partition] = max(last.get(md.partition, -1), md.offset)
        deadline = time.monotonic() + 60
        while any(done()[p] < o + 1 for p, o in last.items()):
            assert time.monotonic() < deadline, ("offsets stopped moving", done(), last)
            time.sleep(0.5)
        time.sleep(1)
        got = read_topics(broker.bootstrap, outputs, until=10**6, timeout_s=3)
        assert w.proc is not None and w.proc.poll() is None, "the worker exited\n" + w.tail()
        assert w.get("/livez")[0] == 200
    finally:
        assert w.stop() == 0, w.tail()
    worker_s = time.monotonic() - t1

    # Exactly one output per record: dead letters name their source, results their event.
    by_position: dict[tuple[int, int], list[Received]] = {}
    for r in got:
        if r.topic.endswith(".dlq"):
            dl = DeadLetter.from_headers(r.headers)
            assert dl.source_topic == topic
            by_position.setdefault((dl.source_partition, dl.source_offset), []).append(r)
    results = [
        InspectionResult.model_validate_json(r.value) for r in got if r.topic.endswith(".results")
    ]
    result_ids = [r.event_id for r in results]
    assert len(result_ids) == len(set(result_ids)), "a duplicate result"
    n_results = 0
    for md, value, entry in positions:
        dead = by_position.get((md.partition, md.offset), [])
        ev_id = _event_id(value)
        scored = ev_id is not None and ev_id in result_ids and not dead
        assert len(dead) + scored == 1, (md, value[:200] if value else value, len(dead), scored)
        n_results += scored
        if entry:
            assert dead, entry["name"]
            dl = DeadLetter.from_headers(dead[0].headers)
            assert dl.reason == entry["expect"], (entry["name"], dl.reason, dl.detail)
            assert bool(dl.original_uri) == (len(value or b"") > 100_000), entry["name"]
        if dead and DeadLetter.from_headers(dead[0].headers).original_uri:
            # Too large for the dead-letter topic: the whole original is in the store.
            dl = DeadLetter.from_headers(dead[0].headers)
            assert dead[0].value == b"" and dl.original_bytes
            stored = Path(str(dl.original_uri).removeprefix("file://")).read_bytes()
            original = read_original(stored)
            assert original["value"] == value and original["offset"] == md.offset
        elif dead and entry.get("expect") != "unreadable_record":
            assert dead[0].value == (value or b""), entry  # the original, unchanged
    assert len(got) == len(positions), "an extra output"
    assert n_results > 20  # the generator produced valid events too
    report_figure(
        f"fuzz: {len(corpus)} corpus + {GENERATED} generated records "
        f"({n_results} scored, {len(positions) - n_results} dead-lettered) "
        f"generated in {generated_s:.1f} s, worker done in {worker_s:.1f} s (seed {fuzz_seed})"
    )


def _event_id(value: bytes | None) -> str | None:
    try:
        data = json.loads(value or b"")
        return data.get("event_id") if isinstance(data, dict) else None
    except (ValueError, RecursionError):
        return None


# -- the crash-loop breaker ----------------------------------------------------------------


class _Store(http.server.ThreadingHTTPServer):
    """An object store over HTTP whose one object hangs: fetching it keeps the record in
    flight as long as the test likes, so the test can kill the worker exactly then."""

    daemon_threads = True

    def __init__(self, image: bytes) -> None:
        self.image = image
        self.hangs = 0
        self.release = threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Store

    def _serve(self, body: bool) -> None:
        if self.path.endswith("/hang.png"):
            self.server.hangs += 1
            self.server.release.wait(120)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.server.image)))
        self.end_headers()
        if body:
            self.wfile.write(self.server.image)

    def do_HEAD(self) -> None:
        self._serve(False)

    def do_GET(self) -> None:
        self._serve(True)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.slow
def test_a_record_that_kills_every_worker_is_dead_lettered_as_poison(
    broker, sample_data, tiny_ckpt, tmp_path, report_figure
):
    pytest.importorskip("aiohttp", reason="fsspec's HTTP store needs aiohttp (the dev extra)")
    topic = new_topic(broker, partitions=1)
    image = sorted((sample_data / "fabric" / "test" / "good").iterdir())[0]
    store = _Store(image.read_bytes())
    threading.Thread(target=store.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{store.server_address[1]}/images/"
    producer = producer_for(broker.bootstrap)
    events = [good_event(image, inline=False) for _ in range(6)]
    for ev in events[3:]:
        ev["image_uri"] = base + "ok.png"  # the records behind it come from the store too
    poison = good_event(image, inline=False, image_uri=base + "hang.png")
    records = [*events[:3], poison, *events[3:]]
    for ev in records:
        producer.send(topic, key=b"cam-1", value=json.dumps(ev).encode())
    producer.flush()
    producer.close()

    kw = dict(
        bootstrap=broker.bootstrap,
        topic=topic,
        checkpoint=tiny_ckpt,
        image_roots=[sample_data, base],
        heatmaps=tmp_path / "heatmaps",
        group="grad-poison",
        extra_env={"WORKER_POISON_AFTER": "3"},
    )
    kills, t0 = 0, time.monotonic()
    try:
        for attempt in range(3):  # the batch crash, then the record alone, twice
            w = WorkerProcess(log=tmp_path / f"w{attempt}.log", **kw).start()
            deadline = time.monotonic() + 120
            while store.hangs <= attempt:  # it is fetching the record: kill it right there
                assert w.proc is not None and w.proc.poll() is None, w.tail()
                assert time.monotonic() < deadline, "the record was never fetched\n" + w.tail()
                time.sleep(0.05)
            w.signal(signal.SIGKILL)
            w.proc.wait(10)  # type: ignore[union-attr]
            kills += 1
        last = WorkerProcess(log=tmp_path / "last.log", **kw).start()
        try:
            last.wait_ready()
            got = read_topics(
                broker.bootstrap, [f"{topic}.results", f"{topic}.dlq"], until=7, timeout_s=120
            )
            assert last.metric("grad_poison_records_total") == 1
        finally:
            assert last.stop() == 0, last.tail()
    finally:
        store.release.set()
        store.shutdown()
    assert kills == 3 and store.hangs == 3, "the poison record was fetched again"
    dead = [r for r in got if r.topic.endswith(".dlq")]
    assert len(dead) == 1
    dl = DeadLetter.from_headers(dead[0].headers)
    assert dl.reason == "poison" and dl.source_offset == 3, dl
    assert json.loads(dead[0].value)["event_id"] == poison["event_id"]  # the original, unchanged
    scored = {
        InspectionResult.model_validate_json(r.value).event_id
        for r in got
        if r.topic.endswith(".results")
    }
    assert scored == {ev["event_id"] for ev in events}, "a record behind the poison was not scored"
    second = WorkerProcess(log=tmp_path / "w1.log", **kw)  # read its log only
    assert "partition resumed inside a crashed batch: records one at a time" in [
        e.get("event") for e in second.log_events()
    ]
    final = committed(broker.bootstrap, "grad-poison", topic, 1)
    assert final[0] == len(records)
    report_figure(
        f"crash-loop breaker: {kills} SIGKILLs on one record, then dead-lettered as poison "
        f"and the {len(events)} records around it scored, in {time.monotonic() - t0:.0f} s"
    )
