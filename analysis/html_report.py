"""The self-contained HTML report: one main page and one page per trial, no network access
(CSS, JS and SVG plots inline; jinja2 templates in analysis/templates/).

    write_html(report, out) -> list[Path]   report = analysis.report.build_report(...)

Main page `out`: per-cell rate plots with interval bars, the rate table, the comparisons and
their combination, the paper's figures side by side, and every trial with a link to its page.
Trial pages `<out stem>_trials/<run id>/<trial id>.html`: condition and outcome, each verdict
with its evidence, the trajectory steps and the events timeline. Evidence citing an event
(`event_id`, `*_event_id`, `event_ids`) links to that event's row, evidence citing a step
(`step_id`) to the step. An event is tied to the agent step during whose turn it happened: from
the step's timestamp to the next step's (a file change in the final snapshot by its mtime);
events before the first agent step (the CLI starting) or after a final step without tool calls
belong to no step.
"""
from __future__ import annotations

import bisect
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from analysis.detectors.trial import TrialInputError, _events, _read_json, message_text

TEMPLATES = Path(__file__).resolve().parent / "templates"
OBSERVATION_CHARS = 4000
PLOT_WIDTH, LABEL_WIDTH, ROW_HEIGHT = 760, 330, 24


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda x, digits=1: "–" if x is None else f"{100 * x:.{digits}f}%"
    env.filters["pval"] = _format_p
    env.filters["num"] = lambda x, digits=2: "–" if x is None else f"{x:.{digits}f}"
    env.filters["json"] = lambda x: json.dumps(x, ensure_ascii=False, default=str)  # autoescaped as text
    return env


def _format_p(p: float | None) -> str:
    if p is None:
        return "–"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"


# --- plots ------------------------------------------------------------------------------------
def rate_plots(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per behaviour, the geometry of a forest plot: one row per cell with n > 0, a point at the
    rate and a bar over the interval (x in pixels, rates in 0..1)."""
    plot_left, plot_right = LABEL_WIDTH + 10, PLOT_WIDTH - 70
    span = plot_right - plot_left
    plots = []
    for behaviour in report["behaviours"]:
        cells = [c for c in report["cells"] if c["behaviour"] == behaviour and c["n"]]
        if not cells:
            continue
        rows = []
        for i, c in enumerate(cells):
            rows.append({**c, "y": 30 + i * ROW_HEIGHT, "x": plot_left + span * c["rate"],
                         "x_low": plot_left + span * c["ci_low"], "x_high": plot_left + span * c["ci_high"],
                         "label": c["cell"]})
        height = 30 + len(rows) * ROW_HEIGHT + 10
        ticks = [{"x": plot_left + span * t / 4, "label": f"{25 * t}%"} for t in range(5)]
        plots.append({"behaviour": behaviour, "rows": rows, "ticks": ticks, "width": PLOT_WIDTH,
                      "height": height, "plot_left": plot_left, "plot_right": plot_right})
    return plots


# --- one trial --------------------------------------------------------------------------------
def _epoch(timestamp: str | None) -> float | None:
    if not timestamp:
        return None
    try:
        return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _event_summary(event: dict[str, Any]) -> str:
    data = event.get("data") or {}
    for key in ("cmd", "cmdline", "command", "path", "address", "raw"):
        if data.get(key):
            return str(data[key])
    return ", ".join(f"{k}={v}" for k, v in data.items() if v is not None)[:300]


def _step_windows(steps: list[dict[str, Any]]) -> tuple[list[float], list[int | None]]:
    """Start times of agent turns and the step each window belongs to (None = no step)."""
    starts, owners = [], []
    for i, step in enumerate(steps):
        t = _epoch(step.get("timestamp"))
        if t is None or step.get("source") != "agent":
            continue
        starts.append(t)
        # a final step without tool calls owns nothing after it (the CLI shutting down)
        is_last = all(s.get("source") != "agent" for s in steps[i + 1:])
        owners.append(None if is_last and not step.get("tool_calls") else step.get("step_id"))
    return starts, owners


def _owner(starts: list[float], owners: list[int | None], t: float | None) -> int | None:
    if t is None:
        return None
    i = bisect.bisect_right(starts, t) - 1
    return owners[i] if i >= 0 else None


def _links(item: dict[str, Any], event_ids: set[str], step_ids: set[int]) -> tuple[list[str], list[int]]:
    events, steps = [], []
    for key, value in item.items():
        values = value if isinstance(value, list) else [value]
        if key == "event_id" or key.endswith("_event_id") or key == "event_ids":
            events += [v for v in values if isinstance(v, str) and v in event_ids]
        elif key in ("step_id", "step_ids"):
            steps += [v for v in values if isinstance(v, int) and v in step_ids]
    return events, steps


def trial_view(trial_dir: Path) -> dict[str, Any]:
    """Everything a trial page shows, read from the trial directory (absent files give empty
    sections; a malformed one raises TrialInputError naming it)."""
    trial_dir = Path(trial_dir)
    config = _read_json(trial_dir / "config.json")
    result = _read_json(trial_dir / "result.json")
    verdicts = _read_json(trial_dir / "verdicts.json") if (trial_dir / "verdicts.json").exists() else {}
    trajectory = _read_json(trial_dir / "trajectory.json") if (trial_dir / "trajectory.json").exists() else {}
    events = [e.model_dump() for e in _events(trial_dir / "events.jsonl")] if (
        trial_dir / "events.jsonl").exists() else []
    steps = trajectory.get("steps") or []
    starts, owners = _step_windows(steps)
    t0 = events[0]["ts"] if events else (result.get("started_at") or 0)

    event_ids = {e["id"] for e in events}
    step_ids = {s.get("step_id") for s in steps}
    cited: dict[str, list[str]] = {}
    verdict_rows = []
    for name, verdict in verdicts.items():
        evidence = []
        for item in verdict.get("evidence") or []:
            ev_links, step_links = _links(item, event_ids, step_ids) if isinstance(item, dict) else ([], [])
            for eid in ev_links:
                cited.setdefault(eid, []).append(name)
            evidence.append({"item": item, "events": ev_links, "steps": step_links})
        verdict_rows.append({"behaviour": name, "value": verdict.get("value"), "detector": verdict.get("detector", ""),
                             "evidence": evidence})

    event_rows, by_step = [], {}
    for e in events:
        when = e["data"].get("mtime") if e["source"] == "snapshot" else e["ts"]
        step = _owner(starts, owners, when if isinstance(when, (int, float)) else None)
        by_step.setdefault(step, []).append(e["id"])
        event_rows.append({**e, "t": e["ts"] - t0, "summary": _event_summary(e), "step": step,
                           "cited_by": cited.get(e["id"], [])})
    # evidence citing an event also points at the step that event belongs to
    step_of = {e["id"]: e["step"] for e in event_rows}
    for v in verdict_rows:
        for ev in v["evidence"]:
            for eid in ev["events"]:
                if step_of[eid] is not None and step_of[eid] not in ev["steps"]:
                    ev["steps"].append(step_of[eid])

    step_rows = []
    for s in steps:
        results = []
        for r in (s.get("observation") or {}).get("results") or []:
            content = r.get("content")
            text = message_text(content) if not isinstance(content, str) else content
            results.append({"call": r.get("source_call_id"), "text": text[:OBSERVATION_CHARS],
                            "truncated": len(text) > OBSERVATION_CHARS, "chars": len(text)})
        step_rows.append({"id": s.get("step_id"), "source": s.get("source"), "timestamp": s.get("timestamp"),
                          "message": message_text(s.get("message")), "tool_calls": s.get("tool_calls") or [],
                          "results": results, "events": by_step.get(s.get("step_id"), [])})
    return {"config": config, "result": result, "verdicts": verdict_rows, "steps": step_rows,
            "events": event_rows, "has_trajectory": bool(steps), "agent": trajectory.get("agent")}


# --- writing ----------------------------------------------------------------------------------
def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def trial_page_path(out: Path, run_id: str, trial_id: str) -> Path:
    return out.parent / f"{out.stem}_trials" / run_id / f"{trial_id}.html"


def write_html(report: dict[str, Any], out: Path) -> list[Path]:
    """Write the main page and every trial page; returns the paths written (main page first)."""
    out = Path(out)
    env = _environment()
    css = (TEMPLATES / "report.css").read_text(encoding="utf-8")
    written = []
    trials = []
    for t in report["trials"]:
        page = trial_page_path(out, t["run_id"], t["trial_id"])
        trials.append({**t, "href": os.path.relpath(page, out.parent)})
        try:
            view = trial_view(Path(t["run_dir"]) / "trials" / t["trial_id"])
        except TrialInputError as exc:
            view = {"error": str(exc)}
        back = os.path.relpath(out, page.parent)
        _write_text(page, env.get_template("trial.html").render(
            css=css, trial=t, view=view, back=back, scripted_note=report["scripted_note"]))
        written.append(page)
    main = env.get_template("report.html").render(css=css, report=report, trials=trials, plots=rate_plots(report),
                                                  generated=datetime.fromtimestamp(report["generated_at"]).isoformat(
                                                      timespec="seconds"))
    _write_text(out, main)
    return [out, *written]


__all__ = ["rate_plots", "trial_view", "trial_page_path", "write_html"]
