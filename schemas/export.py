"""`python -m schemas.export`: write the JSON schemas of the wire contracts to `schemas/json/`.

The files are committed; a test fails when they drift from the models, so the published
contract and the code cannot disagree.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from schemas.events import DeadLetter, InspectionEvent, InspectionResult, OperatorLabel

SCHEMA_DIR = Path(__file__).parent / "json"
CONTRACTS: dict[str, type[BaseModel]] = {
    "inspection_event": InspectionEvent,
    "inspection_result": InspectionResult,
    "dead_letter": DeadLetter,
    "operator_label": OperatorLabel,
}


def render(model: type[BaseModel]) -> str:
    return json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n"


def main() -> None:
    SCHEMA_DIR.mkdir(exist_ok=True)
    for name, model in CONTRACTS.items():
        path = SCHEMA_DIR / f"{name}.schema.json"
        path.write_text(render(model))
        print(path)


if __name__ == "__main__":
    main()
