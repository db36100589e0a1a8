"""From a record's bytes to a contract: limits checked before any parser runs, then strict parsing.

A parser is itself an attack surface. CPython's `json` recurses once per nesting level (a value
nested 100,000 deep raises RecursionError), refuses integers above 4,300 digits with a bare
ValueError, reads `NaN` and `1e999` as floats that no JSON encoder writes back, and accepts lone
UTF-16 surrogates that no UTF-8 encoder (Kafka's, PostgreSQL's) can write. So the raw bytes are
measured first, with C-speed scans that cannot recurse: size, nesting depth, length of every
number. Only then is the value parsed, every string checked to be writable anywhere (no NUL, no
lone surrogate), and the contract validated in pydantic's strict mode (a JSON value of the
wrong type is invalid, not coerced).

Each failure is a `Rejected` with the reason for its class (`limit_exceeded`, `invalid_json`,
`unknown_schema_version`, `invalid_event`/`invalid_label`); the caller dead-letters the record
unchanged. Nothing here raises anything else for any input: the fuzzing test holds it to that.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from pydantic import ValidationError

from schemas import EVENT_SCHEMA_VERSION, InspectionEvent, OperatorLabel
from worker.rejected import Rejected

M = TypeVar("M", InspectionEvent, OperatorLabel)

# A JSON string, escapes included, written as an unrolled loop so a long base64 image is one
# C-level scan (no per-character alternation).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_SURROGATE = re.compile("[\ud800-\udfff]")
_OPEN = np.frombuffer(b"[{", np.uint8)
_CLOSE = np.frombuffer(b"]}", np.uint8)


@dataclass(frozen=True)
class RecordLimits:
    """What a record may be before it is parsed (worker settings of the same names)."""

    max_value_bytes: int = 16 * 1024 * 1024
    max_json_depth: int = 32
    max_number_chars: int = 64
    max_attributes_bytes: int = 64 * 1024


def json_depth(skeleton: bytes) -> int:
    """Deepest bracket nesting of a JSON text whose strings were removed."""
    arr = np.frombuffer(skeleton, np.uint8)
    if arr.size == 0:
        return 0
    step = np.isin(arr, _OPEN).astype(np.int32) - np.isin(arr, _CLOSE).astype(np.int32)
    return int(np.cumsum(step).max(initial=0))


def check_limits(value: bytes, limits: RecordLimits) -> None:
    """`Rejected("limit_exceeded")` for a value no parser should be given."""
    if len(value) > limits.max_value_bytes:
        raise Rejected(
            "limit_exceeded", f"value is {len(value)} bytes, above {limits.max_value_bytes}"
        )
    skeleton = _STRING.sub(b'""', value)
    depth = json_depth(skeleton)
    if depth > limits.max_json_depth:
        raise Rejected("limit_exceeded", f"JSON nested {depth} deep, above {limits.max_json_depth}")
    longest = max((len(m) for m in re.findall(rb"[-+0-9.eE]+", skeleton)), default=0)
    if longest > limits.max_number_chars:
        raise Rejected(
            "limit_exceeded",
            f"a JSON number is {longest} characters, above {limits.max_number_chars}",
        )


def _finite(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise ValueError(f"number {text[:20]} is out of range")
    return x


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_strings(node: Any, path: str = "") -> None:
    """Every key and string writable as UTF-8 and as PostgreSQL text (no NUL)."""
    if isinstance(node, str):
        if "\x00" in node or _SURROGATE.search(node):
            raise Rejected("invalid_json", f"{path or 'value'}: NUL or lone surrogate in a string")
    elif isinstance(node, dict):
        for k, v in node.items():
            _check_strings(k, path)
            _check_strings(v, f"{path}.{k}" if path else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_strings(v, f"{path}[{i}]")


def load_json(value: bytes | None, limits: RecordLimits) -> tuple[str, dict[str, Any]]:
    """The value's text and top-level object, once it is known to be safe to hold."""
    if value is None:
        raise Rejected("invalid_json", "record has no value (tombstone)")
    check_limits(value, limits)
    try:
        text = value.decode("utf-8")
        data = json.loads(text, parse_float=_finite, parse_constant=_no_constant)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise Rejected("invalid_json", str(exc)[:500]) from exc
    if not isinstance(data, dict):
        raise Rejected("invalid_json", f"expected a JSON object, got {type(data).__name__}")
    _check_strings(data)
    return text, data


def _validate(text: str, data: dict[str, Any], model: type[M], invalid: str) -> M:
    version = data.get("schema_version")
    if type(version) is not int or version != EVENT_SCHEMA_VERSION:
        raise Rejected(
            "unknown_schema_version",
            f"schema_version {version!r}; this worker reads {EVENT_SCHEMA_VERSION}"[:500],
        )
    try:
        return model.model_validate_json(text)  # strict: the models say so
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors()
        )
        raise Rejected(invalid, errors[:1500]) from exc


def parse_event(value: bytes | None, limits: RecordLimits | None = None) -> InspectionEvent:
    """The event in a record's value, or `Rejected` saying what is wrong with it."""
    limits = limits or RecordLimits()
    text, data = load_json(value, limits)
    attributes = data.get("attributes")
    if attributes is not None:
        size = len(json.dumps(attributes, ensure_ascii=False).encode())
        if size > limits.max_attributes_bytes:
            raise Rejected(
                "limit_exceeded",
                f"attributes are {size} bytes, above {limits.max_attributes_bytes}",
            )
    return _validate(text, data, InspectionEvent, "invalid_event")


def parse_label(value: bytes | None, limits: RecordLimits | None = None) -> OperatorLabel:
    """An operator label from the feedback topic, or `Rejected`."""
    text, data = load_json(value, limits or RecordLimits())
    return _validate(text, data, OperatorLabel, "invalid_label")
