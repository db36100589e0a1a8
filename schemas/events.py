"""Wire contracts of the streaming worker: the input event, the result, the dead letter.

Every message carries `schema_version`; a consumer refuses a version it does not know rather
than guess at its meaning. The JSON schemas exported from these models live in
`schemas/json/` (regenerate with `python -m schemas.export`), so producers in other languages
have a file to validate against.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.limits import EVENT_ID_LENGTH, NAME_LENGTH, NOTE_LENGTH, PERSON_LENGTH, URI_LENGTH

EVENT_SCHEMA_VERSION = 1
RESULT_SCHEMA_VERSION = 1
DEAD_LETTER_SCHEMA_VERSION = 1

# An event id becomes part of a storage key and a database key: keep it printable and bounded.
EVENT_ID_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9._:@/+=-]{{0,{EVENT_ID_LENGTH - 1}}}$"
# Names that end up in logs, SQL and file names: no control characters (C0, DEL).
NAME_PATTERN = r"^[^\x00-\x1f\x7f]+$"


def check_uri(uri: str) -> str:
    """A URI the worker can reason about: no control characters (raw or percent-encoded NUL),
    and one that the URL parser accepts (a bracket without a valid IPv6 host makes `urlsplit`
    raise). Whether it may be read is the image roots' decision, later."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in uri):
        raise ValueError("image_uri holds a control character")
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise ValueError(f"image_uri is not a valid URI: {exc}") from exc
    if "\x00" in unquote(parts.path):
        raise ValueError("image_uri holds an encoded NUL byte")
    return uri


class InspectionEvent(BaseModel):
    """One image to inspect, as a camera or the line's edge box publishes it.

    The Kafka key is the station or the product class (so one station's images stay in order);
    the value is this JSON. Exactly one of `image_uri` and `image_b64` is set: a URI for the usual
    case (`file://` under the worker's configured roots, `s3://` and other object stores), inline
    base64 for small images.
    """

    # Strict: a JSON value of the wrong type is invalid, never coerced (`true` is not 1, a
    # number is not a time).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    schema_version: Literal[1] = Field(description="version of this contract")
    event_id: str = Field(
        pattern=EVENT_ID_PATTERN,
        description="unique id of the inspection; every side effect is idempotent on it",
    )
    line: str = Field(min_length=1, max_length=NAME_LENGTH, pattern=NAME_PATTERN)
    station: str = Field(min_length=1, max_length=NAME_LENGTH, pattern=NAME_PATTERN)
    product_class: str = Field(
        min_length=1,
        max_length=NAME_LENGTH,
        pattern=NAME_PATTERN,
        description="product class, as the model knows it",
    )
    captured_at: AwareDatetime = Field(description="when the camera took the image (with zone)")
    image_uri: str | None = Field(default=None, max_length=URI_LENGTH)
    image_b64: str | None = Field(default=None, description="inline image bytes, base64")
    attributes: dict[str, Any] = Field(
        default_factory=dict, description="free fields passed through to the result"
    )

    @field_validator("event_id")
    @classmethod
    def _no_dot_segments(cls, v: str) -> str:
        # The id names files in the heatmap store: `a/../../x` must not climb out of it.
        if any(seg in (".", "..") or seg == "" for seg in v.split("/")):
            raise ValueError("event_id has an empty, '.' or '..' path segment")
        return v

    @field_validator("image_uri")
    @classmethod
    def _valid_uri(cls, v: str | None) -> str | None:
        return None if v is None else check_uri(v)

    @model_validator(mode="after")
    def _one_image(self) -> InspectionEvent:
        if (self.image_uri is None) == (self.image_b64 is None):
            raise ValueError("exactly one of image_uri and image_b64 must be set")
        return self


class StageTimings(BaseModel):
    """Milliseconds spent per stage for one event (batch stages are shared by its batch)."""

    model_config = ConfigDict(extra="forbid")

    queue_ms: float = Field(description="from consumption to the start of its batch")
    fetch_decode_ms: float
    infer_ms: float = Field(description="forward pass of the whole batch")
    heatmap_ms: float
    batch_size: int = Field(description="images in the forward pass that scored this one")


class InspectionResult(BaseModel):
    """What downstream (reject gate, MES, review screen) reads from `<topic>.results`.

    Keyed like the input. `threshold` and `confidence` come from the class's calibration, or
    from the model's global calibration with `calibrated: false` for a class the model has not
    been calibrated for yet.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    schema_version: Literal[1] = RESULT_SCHEMA_VERSION
    event_id: str
    line: str
    station: str
    product_class: str
    captured_at: datetime
    score: float = Field(description="raw image score (max of the pooled anomaly map)")
    threshold: float
    confidence: float = Field(ge=0, le=1, description="0.5 at the threshold")
    is_anomalous: bool
    calibrated: bool
    threshold_steady: bool = Field(
        default=True,
        description=(
            "false: the threshold is provisional, the global one or a class calibration set "
            "from fewer than 20 normal images (its false-positive rate may be several times "
            "the target until the class is recalibrated from the line's recorded normals)"
        ),
    )
    heatmap_uri: str = Field(description="16-bit PNG of the anomaly map; see worker.heatmaps")
    model_version: str
    processed_at: datetime
    timings: StageTimings
    attributes: dict[str, Any] = Field(default_factory=dict)


class OperatorLabel(BaseModel):
    """An operator's verdict on an inspection, from `<topic>.feedback` (or `model.label`).

    Labels are what retraining learns from: only images labelled normal (and, when enabled,
    confidently normal unlabelled ones) are trained on; anomalous ones are held out for the gate.
    A label for an event not recorded yet is kept and applied when the inspection arrives.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    schema_version: Literal[1] = Field(description="version of this contract")
    event_id: str = Field(pattern=EVENT_ID_PATTERN)
    label: Literal["normal", "anomalous"]
    by: str = Field(
        min_length=1,
        max_length=PERSON_LENGTH,
        pattern=NAME_PATTERN,
        description="who gave the label",
    )
    note: str | None = Field(default=None, max_length=NOTE_LENGTH)
    labelled_at: AwareDatetime | None = Field(
        default=None, description="when it was given (default: when the worker reads it)"
    )


DeadLetterReason = Literal[
    "invalid_json",
    "invalid_event",
    "invalid_label",
    "unknown_schema_version",
    "image_too_large",
    "undecodable_image",
    "uri_not_allowed",
    "image_not_found",
    "transient_retries_exhausted",
    # Added by the per-record boundary (see README, "Bad input"):
    "limit_exceeded",  # above a size, depth or number-length limit: not parsed at all
    "unreadable_record",  # the Kafka client could not decode the record (headers, CRC)
    "processing_error",  # anything else one record raised while being handled
    "result_too_large",  # its result would not fit under the publish limit
    "unpublishable",  # the broker refused its result for a reason retrying cannot cure
    "poison",  # in flight when the worker died, too many times: not processed again
]


class DeadLetter(BaseModel):
    """Why a record went to `<topic>.dlq`.

    The dead-letter record's value is the original record's value, byte for byte, and its key
    the original key; this model travels in the record's headers (`dlq.*`, UTF-8), so a replay
    tool can re-publish the value untouched.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = DEAD_LETTER_SCHEMA_VERSION
    reason: DeadLetterReason
    detail: str = Field(max_length=NOTE_LENGTH, description="human-readable error, no secrets")
    source_topic: str
    source_partition: int
    source_offset: int
    event_id: str | None = Field(default=None, description="set when the value parsed far enough")
    worker: str = Field(description="worker instance that rejected it")
    failed_at: datetime
    error_type: str | None = Field(
        default=None, description="the exception's type, for a failure that raised one"
    )
    original_uri: str | None = Field(
        default=None,
        description="where the original record was stored because it did not fit in the "
        "dead-letter topic (the dead letter's value is then empty)",
    )
    original_bytes: int | None = Field(default=None, description="size of the stored original")

    def to_headers(self) -> list[tuple[str, bytes]]:
        data = self.model_dump(mode="json", exclude_none=True)
        return [(f"dlq.{k}", str(v).encode()) for k, v in data.items()]

    @classmethod
    def from_headers(cls, headers: list[tuple[str, bytes]]) -> DeadLetter:
        raw = {k[4:]: v.decode() for k, v in headers if k.startswith("dlq.")}
        version = raw.pop("schema_version", "")
        return cls.model_validate(
            {**raw, "schema_version": int(version) if version.isdigit() else version}
        )
