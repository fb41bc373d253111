"""`TrialRecord`: a trial's `result.json`, with the version of its layout.

`to_json` and `from_json` are the one writer and the one reader of that layout. Version 1 is
what searches wrote before the version was recorded (no "schema" key); it reads as it is.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from search.core.status import TrialStatus

SCHEMA = 2


@dataclasses.dataclass
class TrialRecord:
    trial_id: str
    status: TrialStatus
    number: int = 0  # 1-based
    worker: str | None = None  # host:pid of the process that ran it (the workers of a study share a folder)
    values: dict[str, Any] = dataclasses.field(default_factory=dict)  # as the algorithm chose them
    config: dict[str, Any] = dataclasses.field(default_factory=dict)  # every hyperparameter, defaults filled in
    model: str | None = None  # its backbone, or "build_model"
    best: dict[str, float | None] = dataclasses.field(default_factory=dict)  # best-epoch metrics
    epochs_run: int = 0
    seconds: float = 0.0
    seconds_per_epoch: float | None = None
    images_per_second: float | None = None
    params: int | None = None
    size_mb: float | None = None
    model_path: str | None = None
    val_probabilities_path: str | None = None
    error: str | None = None
    note: str | None = None
    history: dict[str, list[float | None]] = dataclasses.field(default_factory=dict)
    schema: int = SCHEMA


_FIELDS = {f.name for f in dataclasses.fields(TrialRecord)}


def to_json(record: TrialRecord) -> dict[str, Any]:
    """The record as result.json holds it."""
    data = dataclasses.asdict(record)
    data["status"] = str(record.status)
    return data


def from_json(data: Any) -> TrialRecord:
    """A result.json's content as a TrialRecord (any version); ValueError when it is not one."""
    if not isinstance(data, dict) or "status" not in data or "trial_id" not in data:
        raise ValueError("not a trial record")
    schema = data.get("schema", 1)
    if not isinstance(schema, int) or schema > SCHEMA:
        raise ValueError(f"a trial record of version {schema!r}, newer than this version reads ({SCHEMA})")
    known = {k: v for k, v in data.items() if k in _FIELDS}
    try:
        return TrialRecord(**{**known, "status": TrialStatus(data["status"]), "trial_id": str(data["trial_id"]),
                              "schema": schema})
    except TypeError as e:
        raise ValueError(str(e)) from None
