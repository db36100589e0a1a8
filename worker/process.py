"""Run `python -m worker.run` as a child process and watch it through its endpoints.

The demo, the benchmarks and the tests all start real worker processes exactly as an operator
does (same command, same settings), so what they show is what a line gets.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from worker.embedded_broker import free_port

# The embedded broker's quirk: a group join waits about half the session timeout.
FAST_GROUP = {"WORKER_SESSION_TIMEOUT_MS": "6000", "WORKER_HEARTBEAT_INTERVAL_MS": "1000"}


@dataclass
class WorkerProcess:
    """`python -m worker.run` in a subprocess, exactly as an operator starts it."""

    bootstrap: str
    topic: str
    checkpoint: Path
    image_roots: list[Path]
    heatmaps: Path
    log: Path
    group: str = "grad-test"
    max_batch: int = 8
    max_wait_ms: int = 50
    extra_env: dict[str, str] = field(default_factory=dict)
    artifacts: Path | None = None  # default: a `models` directory beside the log
    database_url: str | None = None  # default: a SQLite file beside the log
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def environment(self) -> dict[str, str]:
        """The process's environment: this one's, with the worker's settings on top."""
        return {
            **os.environ,
            **FAST_GROUP,
            "WORKER_INSTANCE_ID": f"{self.log.stem}",
            "WORKER_DRAIN_TIMEOUT_S": "60",
            "WORKER_ARTIFACT_STORE": str(self.artifacts or self.log.parent / "models"),
            "WORKER_IMAGE_ARCHIVE": str(self.log.parent / "archive"),
            "WORKER_DATABASE_URL": self.database_url
            or f"sqlite:///{self.log.parent / 'inspections.sqlite3'}",
            **self.extra_env,
        }

    def arguments(self) -> list[str]:
        """`worker.run`'s flags, as an operator types them."""
        args = [
            "--topic",
            self.topic,
            "--group",
            self.group,
            "--bootstrap",
            self.bootstrap,
            "--checkpoint",
            str(self.checkpoint),
            "--device",
            "cpu",
            "--heatmap-store",
            str(self.heatmaps),
            "--metrics-port",
            str(self.port),
            "--max-batch",
            str(self.max_batch),
            "--max-wait-ms",
            str(self.max_wait_ms),
        ]
        for root in self.image_roots:
            args += ["--image-root", str(root)]
        return args

    def command(self) -> list[str]:
        """What starts the worker: this interpreter's `python -m worker.run` (a container image's
        entry point in the image tests)."""
        return [sys.executable, "-m", "worker.run", *self.arguments()]

    def start(self) -> WorkerProcess:
        self.proc = subprocess.Popen(
            self.command(),
            env=self.environment(),
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
        )
        return self

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.tail()
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout_s} s\n{self.tail()}")

    def metric(self, name: str) -> float:
        """Sum of a metric's samples (all label values) from /metrics."""
        _, text = self.get("/metrics")
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                head, value = line.rsplit(" ", 1)
                if head == name or head.startswith(name + "{"):
                    total += float(value)
        return total

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout_s: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def log_events(self) -> list[dict]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out
