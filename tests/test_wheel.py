"""The package as a user installs it: a wheel built from the repository, installed (not
editable) into a fresh virtual environment, run from a directory outside the checkout. The
worker migrates its SQLite database at start, so the demo finishing proves the migrations
travel with the package (they once lived only beside the checkout)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[1]


def _fresh_venv(root: Path) -> Path:
    """A virtual environment that sees the test environment's dependencies (torch and the rest
    are not reinstalled: a `.pth` line adds their folder) but not this checkout: the editable
    install's finder is a `.pth` file in that folder, and a folder added by a `.pth` line is not
    scanned for `.pth` files itself."""
    venv.create(root, with_pip=False)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(purelib, "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_an_installed_wheel_runs_the_demo_outside_the_checkout(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(REPO),
        ],
        check=True,
    )
    (wheel,) = wheels.glob("grad_inspect-*.whl")
    python = _fresh_venv(tmp_path / "venv")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "-q",
            str(wheel),
        ],
        check=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRAD_", "WORKER_"))}
    env.pop("PYTHONPATH", None)
    where = subprocess.run(
        [python, "-c", "import model, schemas.migrations as m; print(model.__file__, m.__file__)"],
        cwd=elsewhere,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert str(REPO) not in where and "site-packages" in where, where
    done = subprocess.run(
        [python, "-m", "worker.demo", "--epochs", "1", "--out", str(elsewhere / "demo")],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((elsewhere / "demo" / "summary.json").read_text())
    assert summary["results"] == 32 and summary["rows"] == 32
