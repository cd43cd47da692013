"""Agent Trajectory Interchange Format (ATIF) v1.7 as pydantic models.

Field names, required/optional status and the cross-field rules follow Harbor's RFC 0001
("ATIF-v1.7"): the root carries schema_version, session_id, agent, steps, notes,
final_metrics, ...; a step is one system prompt, one user message or one agent turn (LLM
output, its tool calls and their observations). Unknown fields are rejected everywhere
(custom data belongs in the `extra` objects the RFC provides).

Rules enforced beyond plain types:
- step_id is 1-based and sequential (steps[i].step_id == i + 1); at least one step;
- model_name, reasoning_effort, reasoning_content, tool_calls and metrics only on agent steps;
- llm_call_count == 0 on an agent step forbids metrics and reasoning_content;
- every observation result's source_call_id names a tool call of the same step;
- timestamps are ISO 8601; content parts are text XOR image; image media types as listed;
- a subagent ref sets trajectory_id or trajectory_path; embedded subagent trajectories carry a
  unique trajectory_id.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SCHEMA_VERSION = "ATIF-v1.7"
KNOWN_SCHEMA_VERSIONS = ("ATIF-v1.0", "ATIF-v1.1", "ATIF-v1.2", "ATIF-v1.3", "ATIF-v1.4",
                         "ATIF-v1.5", "ATIF-v1.6", "ATIF-v1.7")
AGENT_ONLY_STEP_FIELDS = ("model_name", "reasoning_effort", "reasoning_content", "tool_calls", "metrics")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # no "1" -> 1 coercion


def _check_iso8601(value: str | None) -> str | None:
    if value is None:
        return value
    try:
        datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value)
    except ValueError as exc:
        raise ValueError(f"not an ISO 8601 timestamp: {value!r}") from exc
    return value


# --- content (v1.6+) ----------------------------------------------------------------------
class ImageSource(_Strict):
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    path: str


class ContentPart(_Strict):
    type: Literal["text", "image"]
    text: str | None = None
    source: ImageSource | None = None

    @model_validator(mode="after")
    def _text_xor_image(self) -> "ContentPart":
        if self.type == "text":
            if self.text is None:
                raise ValueError("a 'text' content part needs 'text'")
            if self.source is not None:
                raise ValueError("a 'text' content part must not have 'source'")
        else:
            if self.source is None:
                raise ValueError("an 'image' content part needs 'source'")
            if self.text is not None:
                raise ValueError("an 'image' content part must not have 'text'")
        return self


Content = Union[str, list[ContentPart]]


# --- steps --------------------------------------------------------------------------------
class ToolCall(_Strict):
    tool_call_id: str
    function_name: str
    arguments: dict[str, Any]
    extra: dict[str, Any] | None = None


class SubagentTrajectoryRef(_Strict):
    trajectory_id: str | None = None
    trajectory_path: str | None = None
    session_id: str | None = None          # informational only in v1.7
    extra: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _resolvable(self) -> "SubagentTrajectoryRef":
        if self.trajectory_id is None and self.trajectory_path is None:
            raise ValueError("a subagent trajectory ref needs trajectory_id or trajectory_path "
                             "(session_id alone is not resolvable in ATIF-v1.7)")
        return self


class ObservationResult(_Strict):
    source_call_id: str | None = None
    content: Content | None = None
    subagent_trajectory_ref: list[SubagentTrajectoryRef] | None = None
    extra: dict[str, Any] | None = None


class Observation(_Strict):
    results: list[ObservationResult]


class Metrics(_Strict):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    cost_usd: float | None = None
    prompt_token_ids: list[int] | None = None
    completion_token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    extra: dict[str, Any] | None = None


class Step(_Strict):
    step_id: int = Field(ge=1)
    timestamp: str | None = None
    source: Literal["system", "user", "agent"]
    model_name: str | None = None
    reasoning_effort: str | float | None = None
    message: Content
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None
    observation: Observation | None = None
    metrics: Metrics | None = None
    is_copied_context: bool | None = None
    llm_call_count: int | None = Field(default=None, ge=0)
    extra: dict[str, Any] | None = None

    @field_validator("timestamp")
    @classmethod
    def _iso_timestamp(cls, value: str | None) -> str | None:
        return _check_iso8601(value)

    @model_validator(mode="after")
    def _agent_only_fields(self) -> "Step":
        if self.source != "agent":
            for name in AGENT_ONLY_STEP_FIELDS:
                if getattr(self, name) is not None:
                    raise ValueError(f"step {self.step_id}: field '{name}' is only allowed on "
                                     f"agent steps (source is '{self.source}')")
        elif self.llm_call_count == 0:
            for name in ("metrics", "reasoning_content"):
                if getattr(self, name) is not None:
                    raise ValueError(f"step {self.step_id}: field '{name}' must be absent when "
                                     "llm_call_count is 0 (deterministic dispatch)")
        return self

    def text(self) -> str:
        """The message as plain text (image parts dropped)."""
        if isinstance(self.message, str):
            return self.message
        return "".join(p.text or "" for p in self.message if p.type == "text")


# --- root ---------------------------------------------------------------------------------
class Agent(_Strict):
    name: str
    version: str
    model_name: str | None = None
    tool_definitions: list[dict[str, Any]] | None = None
    extra: dict[str, Any] | None = None


class FinalMetrics(_Strict):
    total_prompt_tokens: int | None = None
    total_completion_tokens: int | None = None
    total_cached_tokens: int | None = None
    total_cost_usd: float | None = None
    total_steps: int | None = None
    extra: dict[str, Any] | None = None


class Trajectory(_Strict):
    schema_version: Literal[KNOWN_SCHEMA_VERSIONS]  # type: ignore[valid-type]  # required by the RFC
    session_id: str | None = None
    trajectory_id: str | None = None
    agent: Agent
    steps: list[Step] = Field(min_length=1)
    notes: str | None = None
    final_metrics: FinalMetrics | None = None
    continued_trajectory_ref: str | None = None
    extra: dict[str, Any] | None = None
    subagent_trajectories: list["Trajectory"] | None = None

    @model_validator(mode="after")
    def _sequential_step_ids(self) -> "Trajectory":
        for i, step in enumerate(self.steps):
            if step.step_id != i + 1:
                raise ValueError(f"steps[{i}].step_id is {step.step_id}, expected {i + 1} "
                                 "(step ids are sequential from 1)")
        return self

    @model_validator(mode="after")
    def _observations_reference_own_calls(self) -> "Trajectory":
        for step in self.steps:
            if step.observation is None:
                continue
            ids = {tc.tool_call_id for tc in step.tool_calls or ()}
            for result in step.observation.results:
                if result.source_call_id is not None and result.source_call_id not in ids:
                    raise ValueError(f"step {step.step_id}: observation source_call_id "
                                     f"{result.source_call_id!r} is not a tool_call_id of that step")
        return self

    @model_validator(mode="after")
    def _embedded_subagents_identified(self) -> "Trajectory":
        seen: set[str] = set()
        for i, sub in enumerate(self.subagent_trajectories or ()):
            if sub.trajectory_id is None:
                raise ValueError(f"subagent_trajectories[{i}] has no trajectory_id "
                                 "(required on embedded subagents)")
            if sub.trajectory_id in seen:
                raise ValueError(f"subagent_trajectories[{i}].trajectory_id "
                                 f"{sub.trajectory_id!r} is not unique")
            seen.add(sub.trajectory_id)
        return self

    # --- conveniences -------------------------------------------------------------------
    def final_agent_text(self) -> str | None:
        """Text of the last agent step that said something (None if the agent never spoke)."""
        for step in reversed(self.steps):
            if step.source == "agent":
                text = step.text()
                if text.strip():
                    return text
        return None

    def tool_calls(self) -> list[ToolCall]:
        return [tc for step in self.steps for tc in step.tool_calls or ()]

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


Trajectory.model_rebuild()


class TrajectoryValidationError(ValueError):
    """A document is not a valid ATIF trajectory; `errors` lists every problem found."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        lines = "\n".join(f"  - {e}" for e in errors)
        super().__init__(f"invalid ATIF trajectory ({len(errors)} problem(s)):\n{lines}")


def _describe(err: dict) -> str:
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.get("loc", ()))
    loc = loc.lstrip(".") or "<root>"
    msg = err.get("msg", "invalid")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return f"{loc}: {msg}"


def validate_trajectory(data: dict | str | bytes) -> Trajectory:
    """Parse and validate an ATIF document (dict or JSON text); raise TrajectoryValidationError."""
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise TrajectoryValidationError([f"<root>: not JSON ({exc})"]) from None
    if not isinstance(data, dict):
        raise TrajectoryValidationError([f"<root>: expected a JSON object, got {type(data).__name__}"])
    try:
        return Trajectory.model_validate(data)
    except ValidationError as exc:
        raise TrajectoryValidationError([_describe(e) for e in exc.errors()]) from None
