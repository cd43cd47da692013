"""ATIF v1.7 models: documents that must validate and documents that must not."""
from __future__ import annotations

import copy
import json

import pytest

from harnesses.atif import SCHEMA_VERSION, Trajectory, TrajectoryValidationError, validate_trajectory


def good_doc() -> dict:
    """A small multi-step trajectory in the shape of the RFC's example (section IV)."""
    return {
        "schema_version": "ATIF-v1.7",
        "session_id": "sess-1",
        "agent": {"name": "some-agent", "version": "1.0.0", "model_name": "model-x",
                  "tool_definitions": [{"type": "function", "function": {"name": "shell"}}], "extra": {}},
        "notes": "hand-written test document",
        "extra": {"anything": [1, 2]},
        "final_metrics": {"total_prompt_tokens": 300, "total_completion_tokens": 30, "total_cached_tokens": 0,
                          "total_cost_usd": 0.0, "total_steps": 4, "extra": {}},
        "steps": [
            {"step_id": 1, "source": "system", "message": "You are a coding agent."},
            {"step_id": 2, "timestamp": "2026-11-23T01:00:00Z", "source": "user", "message": "List files.",
             "extra": {"k": "v"}},
            {"step_id": 3, "timestamp": "2026-11-23T01:00:01.500+00:00", "source": "agent",
             "model_name": "model-x", "reasoning_effort": "low", "message": "Running two commands.",
             "reasoning_content": "Need ls and pwd.",
             "tool_calls": [
                 {"tool_call_id": "c1", "function_name": "shell", "arguments": {"command": "ls"}},
                 {"tool_call_id": "c2", "function_name": "shell", "arguments": {}, "extra": {"retries": 0}},
             ],
             "observation": {"results": [
                 {"source_call_id": "c1", "content": "a.txt"},
                 {"source_call_id": "c2", "content": [{"type": "text", "text": "/w"}], "extra": {"ok": True}},
                 {"content": "a note without a call"},
             ]},
             "metrics": {"prompt_tokens": 100, "completion_tokens": 10, "cached_tokens": 0, "cost_usd": 0.0,
                         "prompt_token_ids": [1, 2], "completion_token_ids": [3], "logprobs": [-0.1],
                         "extra": {"thoughts_tokens": 0}},
             "llm_call_count": 1},
            {"step_id": 4, "source": "agent", "message": "Done: a.txt", "llm_call_count": 1,
             "is_copied_context": False},
        ],
    }


def test_good_document_validates_and_round_trips():
    traj = validate_trajectory(good_doc())
    assert isinstance(traj, Trajectory)
    assert traj.schema_version == SCHEMA_VERSION == "ATIF-v1.7"
    assert [s.step_id for s in traj.steps] == [1, 2, 3, 4]
    assert [tc.tool_call_id for tc in traj.tool_calls()] == ["c1", "c2"]
    assert traj.final_agent_text() == "Done: a.txt"
    dumped = traj.to_json_dict()
    assert validate_trajectory(dumped).to_json_dict() == dumped
    assert "trajectory_id" not in dumped            # None fields are dropped


def test_minimal_document_and_json_text_input():
    doc = {"schema_version": "ATIF-v1.7", "agent": {"name": "a", "version": "0"},
           "steps": [{"step_id": 1, "source": "user", "message": ""}]}
    assert validate_trajectory(json.dumps(doc)).session_id is None   # optional since v1.7
    assert validate_trajectory(doc).final_agent_text() is None


def test_final_agent_text_skips_trailing_empty_agent_steps_and_reads_parts():
    doc = good_doc()
    doc["steps"][3]["message"] = [{"type": "text", "text": "Done"}, {"type": "image",
                                  "source": {"media_type": "image/png", "path": "images/x.png"}},
                                  {"type": "text", "text": "!"}]
    doc["steps"].append({"step_id": 5, "source": "agent", "message": ""})
    assert validate_trajectory(doc).final_agent_text() == "Done!"


def test_older_schema_versions_are_read():
    doc = good_doc()
    doc["schema_version"] = "ATIF-v1.5"
    assert validate_trajectory(doc).schema_version == "ATIF-v1.5"


def test_embedded_subagents_and_refs():
    doc = good_doc()
    sub = {"schema_version": "ATIF-v1.7", "trajectory_id": "sub-1", "agent": {"name": "s", "version": "1"},
           "steps": [{"step_id": 1, "source": "user", "message": "go"}]}
    doc["subagent_trajectories"] = [sub]
    doc["steps"][2]["observation"]["results"].append(
        {"subagent_trajectory_ref": [{"trajectory_id": "sub-1", "session_id": "sess-1"}]})
    validate_trajectory(doc)


def _broken(mutate) -> dict:
    doc = copy.deepcopy(good_doc())
    mutate(doc)
    return doc


BAD = {
    "unknown schema_version": lambda d: d.update(schema_version="ATIF-v9"),
    "schema_version missing": lambda d: d.pop("schema_version"),
    "agent without version": lambda d: d["agent"].pop("version"),
    "no steps": lambda d: d.update(steps=[]),
    "step ids not sequential": lambda d: d["steps"][2].update(step_id=7),
    "step ids start at 0": lambda d: [s.update(step_id=s["step_id"] - 1) for s in d["steps"]],
    "unknown source": lambda d: d["steps"][1].update(source="tool"),
    "message missing": lambda d: d["steps"][1].pop("message"),
    "tool_calls on a user step": lambda d: d["steps"][1].update(
        tool_calls=[{"tool_call_id": "x", "function_name": "f", "arguments": {}}]),
    "metrics on a system step": lambda d: d["steps"][0].update(metrics={"prompt_tokens": 1}),
    "reasoning on a user step": lambda d: d["steps"][1].update(reasoning_content="hmm"),
    "model_name on a user step": lambda d: d["steps"][1].update(model_name="m"),
    "observation names another call": lambda d: d["steps"][2]["observation"]["results"][0].update(
        source_call_id="nope"),
    "observation without tool calls": lambda d: d["steps"][3].update(
        observation={"results": [{"source_call_id": "c1", "content": "x"}]}),
    "tool call without arguments": lambda d: d["steps"][2]["tool_calls"][0].pop("arguments"),
    "arguments not an object": lambda d: d["steps"][2]["tool_calls"][0].update(arguments="ls"),
    "bad timestamp": lambda d: d["steps"][1].update(timestamp="yesterday"),
    "unknown root field": lambda d: d.update(trajectory="x"),
    "unknown step field": lambda d: d["steps"][1].update(role="user"),
    "llm_call_count 0 with metrics": lambda d: d["steps"][2].update(llm_call_count=0),
    "negative llm_call_count": lambda d: d["steps"][3].update(llm_call_count=-1),
    "text part with image source": lambda d: d["steps"][1].update(message=[
        {"type": "text", "text": "x", "source": {"media_type": "image/png", "path": "p"}}]),
    "image part without source": lambda d: d["steps"][1].update(message=[{"type": "image"}]),
    "unsupported image type": lambda d: d["steps"][1].update(message=[
        {"type": "image", "source": {"media_type": "image/bmp", "path": "p"}}]),
    "subagent ref with only session_id": lambda d: d["steps"][2]["observation"]["results"].append(
        {"subagent_trajectory_ref": [{"session_id": "s"}]}),
    "embedded subagent without trajectory_id": lambda d: d.update(subagent_trajectories=[
        {"schema_version": "ATIF-v1.7", "agent": {"name": "s", "version": "1"},
         "steps": [{"step_id": 1, "source": "user", "message": "go"}]}]),
    "token count not an integer": lambda d: d["steps"][2]["metrics"].update(prompt_tokens="many"),
    "step_id given as a string": lambda d: d["steps"][0].update(step_id="1"),
    "message neither text nor parts": lambda d: d["steps"][1].update(message=None),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_documents_are_rejected(case):
    with pytest.raises(TrajectoryValidationError) as info:
        validate_trajectory(_broken(BAD[case]))
    assert info.value.errors, case
    assert str(info.value).startswith("invalid ATIF trajectory")


def test_error_message_points_at_the_problem():
    with pytest.raises(TrajectoryValidationError) as info:
        validate_trajectory(_broken(BAD["observation names another call"]))
    assert "'nope'" in str(info.value) and "step 3" in str(info.value)
    with pytest.raises(TrajectoryValidationError) as info:
        validate_trajectory(_broken(BAD["agent without version"]))
    assert "agent.version" in str(info.value)
    with pytest.raises(TrajectoryValidationError) as info:
        validate_trajectory(_broken(BAD["tool_calls on a user step"]))
    assert "only allowed on agent steps" in str(info.value)


@pytest.mark.parametrize("data", ["not json", "[1, 2]", 42])
def test_non_objects_are_rejected(data):
    with pytest.raises(TrajectoryValidationError):
        validate_trajectory(data)
