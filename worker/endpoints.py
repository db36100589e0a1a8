"""HTTP endpoints for the orchestrator and Prometheus: /livez, /readyz, /metrics.

Liveness says only that the consume loop is turning (a stuck forward pass or a dead thread), so
it never depends on Kafka, Redis or a database: restarting a pod cannot fix those. Readiness
says the worker is doing its job: model loaded and at least one partition assigned.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worker.metrics import WorkerMetrics

LIVEZ, READYZ, METRICS = "/livez", "/readyz", "/metrics"


class Health:
    """State the loop reports and the endpoints read; plain attributes, set from one thread."""

    def __init__(self, liveness_timeout_s: float) -> None:
        self.liveness_timeout_s = liveness_timeout_s
        self.last_beat = time.monotonic()
        self.model_loaded = False
        self.partitions = 0
        self.state_store_ok = True
        self.database_ok = True
        self.publish_failing = False

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    @property
    def live(self) -> bool:
        return time.monotonic() - self.last_beat < self.liveness_timeout_s

    def problems(self) -> list[str]:
        """Why the worker is not ready, in words (empty when it is)."""
        out = []
        if not self.live:
            out.append("consume loop stuck")
        if not self.model_loaded:
            out.append("model not loaded")
        if self.partitions == 0:
            out.append("no partitions assigned")
        if not self.state_store_ok:
            out.append("state store unreachable (serving with the state held)")
        if not self.database_ok:
            out.append("database unreachable (consumption paused)")
        if self.publish_failing:
            out.append("publishing failing (retrying; nothing committed meanwhile)")
        return out

    @property
    def ready(self) -> bool:
        return not self.problems()


def serve(host: str, port: int, health: Health, metrics: WorkerMetrics) -> ThreadingHTTPServer:
    """Start the endpoints on a daemon thread; port 0 picks a free one (see server_address)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == LIVEZ:
                self._reply(200 if health.live else 503, b"live\n" if health.live else b"stuck\n")
            elif self.path == READYZ:
                problems = health.problems()
                body = ("; ".join(problems) if problems else "ready") + "\n"
                self._reply(503 if problems else 200, body.encode())
            elif self.path == METRICS:
                metrics.ready.set(1 if health.ready else 0)
                self._reply(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            else:
                self._reply(404, b"not found\n")

        def _reply(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # probes every few seconds
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="endpoints", daemon=True).start()
    return server
