"""`python -m worker.run --topic line-3`: the inspection worker.

Settings come from `WORKER_*` environment variables (see worker/settings.py); the flags below
override the common ones. SIGTERM or SIGINT stops fetching, finishes and commits the batch in
flight, and leaves the consumer group; if that takes longer than `drain_timeout_s` the process
exits anyway (exit code 70) with the batch uncommitted, so it is redelivered, not lost. A second
signal exits at once, on the same terms.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType

import structlog

from worker.settings import WorkerSettings

EXIT_DRAIN_TIMEOUT = 70


def parse_args(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(prog="python -m worker.run", description=__doc__.split("\n")[0])
    ap.add_argument("--topic", help="input topic (results go to <topic>.results)")
    ap.add_argument("--group", dest="group_id", help="consumer group id")
    ap.add_argument("--bootstrap", dest="bootstrap_servers", help="host:port[,host:port...]")
    ap.add_argument("--checkpoint", help="GRAD checkpoint (.safetensors)")
    ap.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    ap.add_argument("--max-batch", type=int)
    ap.add_argument("--max-wait-ms", type=int)
    ap.add_argument(
        "--image-root",
        dest="image_roots",
        action="append",
        help="directory or URL prefix image URIs may point under (repeatable)",
    )
    ap.add_argument("--heatmap-store", help="directory or fsspec URL for heatmap PNGs")
    ap.add_argument("--metrics-port", type=int, help="port of /metrics, /livez, /readyz (0: any)")
    ap.add_argument("--database-url", help="SQL database for inspection records ('' for none)")
    ap.add_argument("--redis-url", help="Redis for shared model state (default: in process)")
    ap.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    args = vars(ap.parse_args(argv))
    return {k: v for k, v in args.items() if v is not None}


def configure_logging(level: str) -> None:
    """JSON lines on stderr, for our logs and for the libraries' (kafka-python's) alike."""
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The Kafka client narrates every connection at INFO; its warnings still come through.
    logging.getLogger("kafka").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def open_records(settings: WorkerSettings, log: structlog.typing.FilteringBoundLogger):
    """The inspection database, migrated at start for SQLite (the embedded default) or when
    `database_migrate` is set; None when recording is switched off (empty URL)."""
    from model.stores.migrations import migrate
    from model.stores.records import RecordStore
    from model.stores.sql import safe_url

    url = settings.database_url.get_secret_value()
    if not url:
        log.warning("inspection recording is off (WORKER_DATABASE_URL is empty)")
        return None
    if settings.database_migrate or (
        settings.database_migrate is None and url.startswith("sqlite")
    ):
        migrate(url)
    log.info("recording inspections", database=safe_url(url))
    return RecordStore(url)


def main(argv: list[str] | None = None) -> int:
    settings = WorkerSettings(**parse_args(argv))  # type: ignore[arg-type]
    configure_logging(settings.log_level)
    log = structlog.get_logger("worker").bind(worker=settings.instance_id)
    log.info("starting", settings=settings.safe_dump())

    # Heavy imports after the settings are known to be valid: a typo fails in milliseconds.
    from model.inference.inspector import ServeOptions
    from model.stores.artifacts import ArtifactStore
    from model.stores.state import open_state_store
    from worker.endpoints import Health, serve
    from worker.heatmaps import HeatmapStore
    from worker.kafka_io import build_consumer, build_producer
    from worker.loop import Worker
    from worker.metrics import WorkerMetrics
    from worker.router import ModelRouter

    metrics = WorkerMetrics()
    health = Health(settings.liveness_timeout_s)
    server = serve(settings.metrics_host, settings.metrics_port, health, metrics)
    log.info("endpoints", port=server.server_address[1])

    store = open_state_store(settings.redis(), settings.state_prefix)
    router = ModelRouter(
        store,
        ArtifactStore(settings.artifact_store),
        settings.device,
        settings.backbone_weights,
        settings.state_refresh_s,
        ServeOptions(settings.runtime, settings.graph_cache, settings.precision),
    )
    router.start(settings.checkpoint)
    log.info("model ready", active=router.active, state_store_ok=router.store_ok)
    records = open_records(settings, log)
    worker = Worker(
        settings,
        router,
        build_consumer(settings),
        build_producer(settings),
        HeatmapStore(settings.heatmap_store),
        metrics,
        health,
        records,
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if worker.stopping.is_set():
            log.error("second signal: exiting now, batch in flight uncommitted (redelivered)")
            os._exit(EXIT_DRAIN_TIMEOUT)
        log.info("stopping", signal=signal.Signals(signum).name)
        worker.request_stop()

        def give_up() -> None:
            log.error(
                "drain timeout: exiting, batch in flight uncommitted (redelivered)",
                timeout_s=settings.drain_timeout_s,
            )
            os._exit(EXIT_DRAIN_TIMEOUT)

        timer = threading.Timer(settings.drain_timeout_s, give_up)
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.run()
    server.shutdown()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
