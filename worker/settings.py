"""The worker's settings: read once at start-up (environment, `.env`, CLI flags), passed down.

Every field can be set as an environment variable `WORKER_<NAME>` (lists comma-separated);
the common ones also as CLI flags of `python -m worker.run`. Secrets are `SecretStr`, so they
never appear in logs or reprs.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PositiveInt, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from model.stores.settings import MiB, StoreSettings, split_commas


def _default_instance() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerSettings(StoreSettings):
    """The stores' fields (record, state store, artifact store, image roots) are
    `StoreSettings`, shared with the retraining; here as `WORKER_*`."""

    model_config = SettingsConfigDict(env_prefix="WORKER_", env_file=".env", extra="ignore")

    # Topics and group.
    topic: str = Field(min_length=1)
    results_topic: str | None = Field(default=None, description="default: <topic>.results")
    dlq_topic: str | None = Field(default=None, description="default: <topic>.dlq")
    feedback_topic: str | None = Field(
        default=None, description="operator labels; default: <topic>.feedback, '-' for none"
    )
    group_id: str = "grad-worker"
    instance_id: str = Field(default_factory=_default_instance)

    # Kafka connection and client security.
    bootstrap_servers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1:9092"]
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    session_timeout_ms: PositiveInt = 10_000
    heartbeat_interval_ms: PositiveInt = 3_000
    # A batch (decode, forward pass, heatmaps, publish) must finish well inside this.
    max_poll_interval_ms: PositiveInt = 300_000
    # Largest record the worker reads (an event with an inline image); a larger value is
    # dead-lettered as `limit_exceeded` without being parsed.
    max_message_bytes: PositiveInt = 16 * MiB
    # Largest record the worker publishes (key, value and headers): set it to the cluster's
    # `message.max.bytes` / the topics' `max.message.bytes` (Kafka's default is 1,048,588 bytes;
    # this leaves room for the batch overhead). A dead letter above it is published with its
    # original kept in `dead_letter_store` instead; a result above it is dead-lettered.
    max_publish_bytes: Annotated[int, Field(ge=64 * 1024)] = 1_000_000
    # How long the broker may refuse a record for a reason retrying cannot cure (too large, an
    # invalid record) before it is dead-lettered; refusals that can be cured (broker down, no
    # leader) are retried for ever, and show in /readyz and grad_publish_failing.
    publish_give_up_s: float = Field(default=30.0, gt=0)
    # Where an original record too large for the dead-letter topic is kept.
    dead_letter_store: str = "dead-letters"

    # Limits on a record before it is parsed (worker.intake): each a dead letter
    # `limit_exceeded` when passed.
    max_json_depth: Annotated[int, Field(ge=4, le=1000)] = 32
    max_number_chars: Annotated[int, Field(ge=20, le=4000)] = 64
    max_attributes_bytes: Annotated[int, Field(ge=0)] = 64 * 1024

    # Crash-loop breaker: a record in flight when a worker died this many times is dead-lettered
    # as `poison` instead of being processed again (markers in the inspection database; off
    # when recording is off).
    poison_after: Annotated[int, Field(ge=1, le=100)] = 3

    # Model. The active model comes from the state store; `checkpoint` (a path or an fsspec URL)
    # seeds an empty store, and is served alone when the store cannot be reached at start.
    checkpoint: str | None = None
    backbone_weights: Path | None = None
    device: str = "auto"
    # Which runtime scores (`model.inference.runtimes`): `auto` takes the fastest installed for
    # the device (on a CPU an exported graph, on a GPU torch); a missing one falls back to torch
    # with a log line. Exported graphs are kept in `graph_cache`, keyed by the checkpoint's
    # content, made when a model is first loaded.
    runtime: Literal["auto", "torch", "onnxruntime", "openvino"] = "auto"
    graph_cache: Path = Path(".cache/grad-graphs")
    # A reduced precision (`int8`, or `bf16` on OpenVINO) is served only for a model the
    # precision gate approved in `graph_cache` (python -m model.export --precision ...);
    # any other model in fp32, with a log line.
    precision: Literal["fp32", "fp16", "bf16", "int8"] = "fp32"

    # Shared state: Redis (`redis_url`), or in process when unset.
    # How often the state is re-read even without an announcement (a missed message).
    state_refresh_s: float = Field(default=30.0, gt=0)

    # Batching: up to max_batch images or max_wait_ms after the first one, whichever first.
    max_batch: PositiveInt = 16
    max_wait_ms: Annotated[int, Field(ge=0)] = 50
    decode_threads: PositiveInt = 4

    # Images: where URIs may point and what is too big are `image_roots`, `max_image_bytes`,
    # `max_pixels`. A transient fetch failure (store unreachable) is retried this long before
    # the record is dead-lettered as `transient_retries_exhausted` (kept, replayable, not lost).
    transient_retry_s: float = Field(default=300.0, gt=0)

    # Inspection records (SQL, `database_url`): empty to record nothing. Migrations run at start
    # for SQLite; elsewhere the migration job runs them unless `database_migrate` is true.
    database_migrate: bool | None = None

    # Heatmaps: a local directory or an fsspec URL (s3://bucket/heatmaps).
    heatmap_store: str = "heatmaps"
    # Inline (base64) images are kept here, so their inspection rows have an image URI that
    # retraining can read back; empty to keep none.
    image_archive: str = "images"

    # Operations.
    # Passed parts per class the drift figure (grad_score_drift) is measured on: enough for a
    # shift of 0.1 to stand out of the noise against a calibration of a few hundred normals.
    drift_window: Annotated[int, Field(ge=10, le=100_000)] = 500
    metrics_host: str = "0.0.0.0"
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9100
    # SIGTERM: finish and commit the batch in flight within this, then exit regardless.
    drain_timeout_s: float = Field(default=60.0, gt=0)
    # Liveness fails when the loop has not turned for this long (a stuck forward pass).
    liveness_timeout_s: float = Field(default=120.0, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("bootstrap_servers", mode="before")
    @classmethod
    def _split_servers(cls, v: object) -> object:
        return split_commas(v)

    @model_validator(mode="after")
    def _defaults_and_consistency(self) -> WorkerSettings:
        if self.results_topic is None:
            self.results_topic = f"{self.topic}.results"
        if self.dlq_topic is None:
            self.dlq_topic = f"{self.topic}.dlq"
        if self.feedback_topic is None:
            self.feedback_topic = f"{self.topic}.feedback"
        elif self.feedback_topic == "-":
            self.feedback_topic = None
        if self.max_attributes_bytes > self.max_publish_bytes // 2:
            raise ValueError(
                "max_attributes_bytes must stay below half of max_publish_bytes, so every "
                "result fits under the publish limit"
            )
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"{self.security_protocol} needs sasl_mechanism, sasl_username and sasl_password"
            )
        return self

    def safe_dump(self) -> dict[str, object]:
        """Settings for the start-up log line: secrets masked by SecretStr."""
        return self.model_dump(mode="json")
