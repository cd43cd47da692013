"""`verdicts.json`: each behaviour name -> {"value": true|false|null, "evidence": [...]}.
The two keys are a fixed contract; `detector` is an extension naming the detector version."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Verdict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: bool | None
    evidence: list[dict[str, Any]] = []
    detector: str = ""


Verdicts = dict[str, Verdict]
