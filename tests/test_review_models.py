"""The review station's models pages on a real registry (SQLite) and the workers' real state
store (a Redis of the test's own): lineage, which version is active, canaries and overrides,
calibrations, gate reports, the rollback command; read-only; a state store that is down."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from model.metrics.calibration import calibrate
from model.stores.records import RecordStore
from model.stores.state import RedisStateStore
from schemas import ClassState
from tests.databases import free_port
from tests.review import ReviewData, make_review_data
from tests.test_review import client_for

V1, V2, V3 = "grad-00000000000000a1", "grad-00000000000000a2", "grad-00000000000000a3"
T = datetime(2026, 11, 20, 6, 0, tzinfo=timezone.utc)
REASON = "recall fell on <b>screw</b>"


@pytest.fixture
def registry(tmp_path: Path, sample_data: Path, own_redis) -> tuple[ReviewData, str]:
    data = make_review_data(tmp_path, sample_data)
    cal = calibrate(20 * np.exp(0.2 * np.random.default_rng(2).standard_normal(60)))
    with RecordStore(data.url) as r:
        r.record_model_version(V1, "file:///models/a1", created_at=T)
        r.set_active(V1, by="bootstrap", at=T)
        r.record_model_version(
            V2,
            "file:///models/a2",
            parent_version=V1,
            created_at=T + timedelta(days=7),
            images_per_class={"screw": 300, "nut": 200},
            gate_decision={"gate_pass": True, "promote": True, "against": V1, "reasons": []},
            metrics={"screw": {"image_auroc": 0.991}},
        )
        r.record_calibration(V2, "screw", cal, at=T + timedelta(days=7))
        r.set_active(V2, by="model.retrain", at=T + timedelta(days=7, minutes=5))
        r.record_model_version(
            V3,
            "file:///models/a3",
            parent_version=V2,
            created_at=T + timedelta(days=14),
            gate_decision={
                "gate_pass": False,
                "promote": False,
                "against": V2,
                "reasons": [REASON],
            },
        )
        r.record_calibration(V3, "screw", cal, at=T + timedelta(days=14))
    store = RedisStateStore(own_redis.url, "reviewmodels")
    store.put_model(V2, b"bytes of v2")
    store.set_active(V2)
    now = datetime.now(timezone.utc).isoformat()
    store.set_class_state("screw", ClassState(model_version=V3, updated_at=now))
    store.set_class_state("nut", ClassState(calibration=cal, updated_at=now))
    return data, own_redis.url


def client(registry, **overrides):
    data, redis_url = registry
    return client_for(data, redis_url=redis_url, state_prefix="reviewmodels", **overrides)


def test_the_index_shows_lineage_status_what_is_served_and_how_to_roll_back(registry) -> None:
    html = client(registry).get("/models").text
    rows = html.split("<tbody>", 1)[1]
    assert rows.index(V3) < rows.index(V2) < rows.rindex(V1)  # newest first
    for version, status in ((V1, "retired"), (V2, "active"), (V3, "candidate")):
        assert f'<tr class="{status}">\n    <td><a href="/models/{version}">' in html
    assert f'<code class="serving">{V2}</code>' in html
    assert f'<span class="canary">screw on <a href="/models/{V3}">{V3}</a></span>' in html
    assert "calibration overrides for nut" in html
    assert f'<code class="command">python -m model.promote {V1} --by YOUR-NAME</code>' in html
    assert "500 images, 2 classes" in html


def test_a_version_shows_its_lineage_calibrations_and_gate_report(registry) -> None:
    c = client(registry)
    html = c.get(f"/models/{V2}").text
    lineage = html.split('class="lineage">', 1)[1].split("</dd>", 1)[0]
    assert (
        lineage.index(V2) < lineage.index(V1)
        and f'fine-tuned into <a href="/models/{V3}"' in lineage
    )
    assert "(served by the workers)" in html
    assert f'href="/classes/screw?model_version={V2}"' in html and "few: a rough" not in html
    assert '<p class="gate">Passed against ' + V1 + "; promoted." in html
    assert "0.991" in html
    failed = c.get(f"/models/{V3}").text
    assert (
        "Failed against " + V2 + "; not promoted: recall fell on &lt;b&gt;screw&lt;/b&gt;" in failed
    )
    assert "<b>screw</b>" not in failed
    assert "<td>canary</td>" in failed and "<td>canary</td>" not in html  # screw runs on V3


def test_the_pages_are_read_only_and_an_unknown_version_is_404(registry) -> None:
    c = client(registry)
    assert c.get("/models/grad-nope").status_code == 404
    token = c.get("/models").text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    for path in ("/models", f"/models/{V1}"):
        assert c.post(path, data={"csrf": token}).status_code == 405
    with RecordStore(registry[0].url) as r:
        assert r.active_version() == V2


def test_a_state_store_that_is_down_leaves_the_registry_readable(registry) -> None:
    data, _ = registry
    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    html = client_for(data, redis_url=down, state_prefix="x").get("/models")
    assert html.status_code == 200
    assert "state store could not be read" in html.text and V2 in html.text
