"""The container image, built and run for real: the smoke checks of `deploy/image.sh smoke`.

Each check starts the built image (GRAD_TEST_IMAGE names it; `.ci/run` builds it first) with
the engine deploy/image.sh picks, as the image's own non-root user on a read-only root file
system with a writable /tmp (what Kubernetes gives it), on the host network: `--help`;
`worker.demo` to the end; `alembic upgrade head` against the test PostgreSQL; and the worker
against the suite's Kafka-protocol broker, Redis and PostgreSQL, scoring events, answering its
endpoints and passing the image's health check. Skipped, with the reason, where no image is
given; CI always gives one.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import create_engine, pool, text

from model.stores.state import RedisStateStore
from tests.conftest import REPO
from tests.databases import fresh_postgres_database
from tests.streaming import wait_processed
from worker.feed import inspection_images, make_event, producer_for, read_topics, send_event
from worker.process import WorkerProcess

pytestmark = [pytest.mark.slow, pytest.mark.integration]

IMAGE_SH = REPO / "deploy" / "image.sh"
IMAGE_UID = 10001  # the Dockerfile's USER


class ImageTestSettings(BaseSettings):
    """Which built image the checks run (GRAD_TEST_IMAGE)."""

    __test__ = False
    model_config = SettingsConfigDict(env_prefix="GRAD_TEST_", extra="ignore")
    image: str = ""


IMAGE = ImageTestSettings().image


@pytest.fixture(scope="module")
def image() -> str:
    if not IMAGE:
        pytest.skip(
            "no container image to check: build one with deploy/image.sh build and set "
            "GRAD_TEST_IMAGE to its tag (CI always does: .ci/run)"
        )
    found = run(engine("image", "inspect", "--format", "{{.Id}}", IMAGE), 120)
    assert found.returncode == 0, f"GRAD_TEST_IMAGE={IMAGE} names no built image: {found.stderr}"
    return IMAGE


def engine(*args: str) -> list[str]:
    """The engine deploy/image.sh configures (its storage, runtime and limits), with args."""
    return [str(IMAGE_SH), "engine", *args]


def container(
    image: str, *args: str, entrypoint: str | None = None, mounts=(), user: str | None = None
) -> list[str]:
    """`run` as production runs it: read-only root, the image's user (unless `user` says
    otherwise), tmpfs /tmp, host network."""
    cmd = engine("run", "--rm", "--read-only", "--network", "host", "--no-healthcheck")
    if user is not None:
        cmd += ["--user", user]
    for mount in mounts:
        cmd += ["-v", mount]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    return [*cmd, image, *args]


def run(cmd: list[str], timeout_s: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)


def shared_dir(path: Path) -> Path:
    """A host directory the image's user may write into (it has another uid than the tests)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path


def readable(path: Path) -> Path:
    """A host directory the image's user may read (pytest makes its temporary ones 0700, and a
    checkpoint is written 0600 through a temporary file)."""
    for p in [path, *path.iterdir()]:
        p.chmod(p.stat().st_mode | (0o755 if p.is_dir() else 0o644))
    return path


def test_the_entry_point_answers_help_as_the_non_root_user(image: str) -> None:
    help_ = run(container(image, "--help"), 300)
    assert help_.returncode == 0, help_.stderr[-2000:]
    assert "python -m worker.run" in help_.stdout and "--topic" in help_.stdout
    who = run(container(image, "-c", "import os; print(os.getuid())", entrypoint="python"), 300)
    assert who.returncode == 0 and int(who.stdout) == IMAGE_UID, who.stderr[-2000:]
    # The review station ships with its pages and script (package data, no CDN).
    probe = (
        "from importlib import resources; r = resources.files('worker.review'); "
        "print((r / 'templates' / 'inspection.html').is_file(), "
        "(r / 'static' / 'review.js').is_file())"
    )
    pages = run(container(image, "-c", probe, entrypoint="python"), 300)
    assert pages.returncode == 0 and pages.stdout.split() == ["True", "True"], pages.stderr[-2000:]
    # The root file system really is read-only: nothing outside /tmp can be written.
    probe = "import pathlib; pathlib.Path('/app/x').write_text('x')"
    denied = run(container(image, "-c", probe, entrypoint="python"), 300)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    # The build's secrets (the proxy's CA, a pip.conf) left nothing behind: no secret file, no
    # pip configuration pointing at one (looked for as root, who may read everywhere).
    leftovers = "ls -A /run/secrets; ls /etc/pip.conf /etc/xdg/pip /root/.config/pip /root/.pip"
    probe = container(image, "-c", f"{leftovers} 2>/dev/null; true", entrypoint="sh", user="0")
    found = run(probe, 300)
    assert found.returncode == 0 and found.stdout.strip() == "", found.stdout


def test_the_worker_demo_runs_to_the_end_inside_the_image(image: str) -> None:
    demo = run(
        container(
            image, "-m", "worker.demo", "--epochs", "2", "--out", "/tmp/demo", entrypoint="python"
        ),
    )
    assert demo.returncode == 0, (demo.stdout[-2000:], demo.stderr[-3000:])
    assert "worker exited with 0" in demo.stdout, demo.stdout[-3000:]
    for cls in ("fabric", "ring"):
        assert any(line.startswith(cls) for line in demo.stdout.splitlines()), demo.stdout


def test_alembic_upgrade_head_from_the_image_against_postgresql(image: str) -> None:
    with fresh_postgres_database() as url:
        up = run(container(image, "-x", f"url={url}", "upgrade", "head", entrypoint="alembic"))
        assert up.returncode == 0, up.stderr[-3000:]
        heads = run(container(image, "heads", entrypoint="alembic"))
        assert heads.returncode == 0, heads.stderr[-3000:]
        head = heads.stdout.split()[0]
        engine_ = create_engine(url, poolclass=pool.NullPool)
        try:
            with engine_.connect() as conn:
                version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
                assert conn.execute(text("SELECT count(*) FROM inspections")).scalar() == 0
        finally:
            engine_.dispose()
        assert version == head


@dataclass
class ImageWorker(WorkerProcess):
    """`worker.run` from the image: the same settings and flags as the host's worker process,
    handed to the container (`-e NAME` passes each setting from the engine's environment), the
    test's directories mounted at the same paths."""

    image: str = ""
    name: str = ""
    mounts: tuple[str, ...] = ()  # host:container[:ro]

    def command(self) -> list[str]:
        settings = sorted(k for k in self.environment() if k.startswith("WORKER_"))
        cmd = engine("run", "--rm", "--read-only", "--network", "host", "--name", self.name)
        for key in settings:
            cmd += ["-e", key]
        for mount in self.mounts:
            cmd += ["-v", mount]
        return [*cmd, self.image, *self.arguments()]


def test_the_worker_from_the_image_scores_events_against_the_suites_services(
    image, broker, own_redis, tiny_ckpt, sample_data, tmp_path
) -> None:
    topic = f"image-{uuid.uuid4().hex[:8]}"
    work = shared_dir(tmp_path / "work")
    heatmaps = shared_dir(work / "heatmaps")
    events = [make_event(path, cls) for cls, path, _ in inspection_images(sample_data)][:6]
    ids = sorted(e.event_id for e in events)
    with fresh_postgres_database() as url:
        worker = ImageWorker(
            broker.bootstrap,
            topic,
            tiny_ckpt,
            [sample_data],
            heatmaps,
            work / "worker.log",
            database_url=url,
            artifacts=shared_dir(work / "models"),
            extra_env={
                "WORKER_REDIS_URL": own_redis.url,
                "WORKER_DATABASE_MIGRATE": "true",
                "WORKER_IMAGE_ARCHIVE": str(shared_dir(work / "archive")),
                "WORKER_DEAD_LETTER_STORE": str(shared_dir(work / "dead-letters")),
            },
        )
        # The image's health check reads its port from the environment, as under Kubernetes.
        worker.extra_env["WORKER_METRICS_PORT"] = str(worker.port)
        worker.image = image
        worker.name = f"grad-smoke-{topic}"
        worker.mounts = (
            f"{readable(tiny_ckpt.parent)}:{tiny_ckpt.parent}:ro",
            f"{readable(sample_data)}:{sample_data}:ro",
            f"{work}:{work}",
        )
        worker.start()
        try:
            worker.wait_ready(timeout_s=600)
            producer = producer_for(broker.bootstrap)
            for event in events:
                send_event(producer, topic, event)
            producer.flush()
            producer.close()
            wait_processed(worker, len(events))
            status, metrics = worker.get("/metrics")
            assert status == 200 and "grad_events_processed_total" in metrics
            assert worker.get("/readyz")[0] == 200
            health = run(engine("healthcheck", "run", worker.name), 120)
            assert health.returncode == 0, (health.stdout, health.stderr)
            records = read_topics(broker.bootstrap, [f"{topic}.results"], len(events), 60)
            results = [json.loads(r.value) for r in records]
            assert sorted(r["event_id"] for r in results) == ids
            written = list(heatmaps.rglob("*.png"))
            assert written and all(p.stat().st_uid == IMAGE_UID for p in written)
        finally:
            code = worker.stop(timeout_s=120)
        assert code == 0, worker.tail()
        engine_ = create_engine(url, poolclass=pool.NullPool)
        try:
            with engine_.connect() as conn:
                rows = conn.execute(text("SELECT event_id FROM inspections")).scalars().all()
        finally:
            engine_.dispose()
        assert sorted(rows) == ids
        # The model state went to the suite's Redis: the version that scored is active there.
        state = RedisStateStore(own_redis.url)
        try:
            assert {r["model_version"] for r in results} == {state.active_version()}
        finally:
            state.close()
