"""Shared fixtures. Real images come from a setting, never from the repository."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO = Path(__file__).resolve().parents[1]


class TestSettings(BaseSettings):
    """Where the tests find data they may not ship (GRAD_TEST_INDUSTRIAL_DATA)."""

    __test__ = False  # not a test class
    model_config = SettingsConfigDict(env_prefix="GRAD_TEST_")
    industrial_data: Path = REPO.parent / "shared" / "data" / "industrial"


SETTINGS = TestSettings()


@pytest.fixture(scope="session")
def industrial() -> Path:
    root = SETTINGS.industrial_data
    if not (root / "magnetic_tile" / "train" / "good").is_dir():
        pytest.skip(
            f"real industrial images not found at {root}; set GRAD_TEST_INDUSTRIAL_DATA "
            "to an MVTec-layout copy (CI always has them)"
        )
    return root


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model.data.sample import make_sample

    return make_sample(
        tmp_path_factory.mktemp("sample"), n_train=24, n_test_good=6, n_test_defect=6
    )


@pytest.fixture(scope="session")
def lite0():
    from model.net.backbone import build_backbone

    return build_backbone()


@pytest.fixture(scope="session")
def tiny_settings(tmp_path_factory: pytest.TempPathFactory):
    from model.settings import ModelSettings

    return ModelSettings(device="cpu", cache_dir=tmp_path_factory.mktemp("feature-cache"))


@pytest.fixture(scope="session")
def tiny_ckpt(sample_data: Path, tiny_settings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GRAD model trained for two short epochs on the generated sample set."""
    from model.net.config import TrainConfig
    from model.training.run import train

    out = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    train(sample_data, out, TrainConfig(epochs=2, batch_size=8, seed=7), tiny_settings)
    return out


@pytest.fixture(scope="session")
def tiny_ckpt_b(sample_data: Path, tiny_settings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, different model (another seed): the version a promotion switches to."""
    from model.net.config import TrainConfig
    from model.training.run import train

    out = tmp_path_factory.mktemp("ckpt-b") / "tiny-b.safetensors"
    train(sample_data, out, TrainConfig(epochs=1, batch_size=8, seed=8), tiny_settings)
    return out


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory):
    """A real Kafka-protocol broker (tansu) on a free loopback port, for the whole session."""
    from worker.embedded_broker import EmbeddedBroker

    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as b:
        yield b


@pytest.fixture
def own_redis():
    """A redis-server of our own, which a test may stop and start (an outage)."""
    from tests.services import OwnRedis

    try:
        server = OwnRedis().start()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture
def router(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory):
    """The worker's model router in process (in-process state store), serving `tiny_ckpt`."""
    from model.stores.artifacts import ArtifactStore
    from model.stores.state import open_state_store
    from worker.router import ModelRouter

    r = ModelRouter(open_state_store(None), ArtifactStore(tmp_path_factory.mktemp("models")), "cpu")
    r.start(tiny_ckpt)
    return r  # a worker under test closes it


FIGURES: list[str] = []


@pytest.fixture
def report_figure():
    """Append a line to the figures printed at the end of the run (what CI's log shows: the
    fuzzing test's record count and time, for example)."""
    return FIGURES.append


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if FIGURES:
        terminalreporter.section("figures measured by the tests")
        for line in FIGURES:
            terminalreporter.write_line(line)
