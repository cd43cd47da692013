"""Rates with confidence intervals over trials.

* `wilson_interval(k, n, conf)`: Wilson score interval (closed form; z from the standard
  normal quantile in `statistics.NormalDist`, no scipy). n = 0 gives (nan, nan).
* `summarize(items)`: one row per behaviour: behaviour, k (trials with value true),
  n (valid trials with a non-null value), rate (k/n), ci_low, ci_high, invalid (invalid trials).
  Valid trials whose value is null (behaviour not applicable) count in neither k nor n.
* `summary_dict(df, meta)`: a JSON-ready dict for `summary.json`.

`items` may mix:
* trial directories (Path / str): result.json gives validity, verdicts.json the values
  (computed with `analysis.analyze.analyze_trial` when verdicts.json is absent);
* records: dicts `{"valid": bool, "verdicts": {behaviour: {"value": ...} | Verdict}}`
  (optionally "trial_id"), or a bare `{behaviour: {"value": ...}}` mapping, which is treated as
  invalid when every value is null and some evidence has type "invalid".
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import NormalDist
from typing import Any, Iterable

import pandas as pd

COLUMNS = ["behaviour", "k", "n", "rate", "ci_low", "ci_high", "invalid"]


def wilson_interval(k: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if not 0 < conf < 1:
        raise ValueError(f"conf must be in (0, 1), got {conf}")
    if n == 0:
        return (math.nan, math.nan)
    z = NormalDist().inv_cdf(1 - (1 - conf) / 2)
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, center - half)
    hi = 1.0 if k == n else min(1.0, center + half)
    return (lo, hi)


def _value(v: Any) -> Any:
    if hasattr(v, "value") and not isinstance(v, dict):
        return v.value
    if isinstance(v, dict):
        return v.get("value")
    return v


def _evidence(v: Any) -> list:
    if hasattr(v, "evidence") and not isinstance(v, dict):
        return list(v.evidence or [])
    if isinstance(v, dict):
        return list(v.get("evidence") or [])
    return []


def _load_dir(d: Path) -> tuple[bool, dict]:
    result_path = d / "result.json"
    try:
        result = json.loads(result_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{result_path}: missing") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{result_path}: not valid JSON ({exc})") from None
    valid = bool(result.get("valid"))
    vpath = d / "verdicts.json"
    if vpath.exists():
        try:
            verdicts = json.loads(vpath.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{vpath}: not valid JSON ({exc})") from None
    else:
        from analysis.analyze import analyze_trial  # noqa: PLC0415 - only when needed

        verdicts = analyze_trial(d)
    return valid, verdicts


def _normalize(item: Any) -> tuple[bool, dict]:
    if isinstance(item, (str, Path)):
        return _load_dir(Path(item))
    if isinstance(item, dict) and "verdicts" in item:
        return bool(item.get("valid", True)), dict(item["verdicts"])
    if isinstance(item, dict):
        values = [_value(v) for v in item.values()]
        invalid = bool(item) and all(v is None for v in values) and any(
            isinstance(e, dict) and e.get("type") == "invalid"
            for v in item.values() for e in _evidence(v))
        return not invalid, dict(item)
    raise TypeError(f"cannot summarize {type(item).__name__}: give trial dirs or verdict records")


def summarize(items: Iterable[Any], conf: float = 0.95) -> pd.DataFrame:
    counts: dict[str, list[int]] = {}   # behaviour -> [k, n]
    invalid = 0
    order: list[str] = []
    for item in items:
        valid, verdicts = _normalize(item)
        for name in verdicts:
            if name not in counts:
                counts[name] = [0, 0]
                order.append(name)
        if not valid:
            invalid += 1
            continue
        for name, v in verdicts.items():
            val = _value(v)
            if val is None:
                continue
            counts[name][1] += 1
            if val is True:
                counts[name][0] += 1
    rows = []
    for name in order:
        k, n = counts[name]
        lo, hi = wilson_interval(k, n, conf)
        rows.append({"behaviour": name, "k": k, "n": n, "rate": (k / n) if n else math.nan,
                     "ci_low": lo, "ci_high": hi, "invalid": invalid})
    df = pd.DataFrame(rows, columns=COLUMNS)
    df = df.astype({"k": "int64", "n": "int64", "invalid": "int64"})
    df.attrs["conf"] = conf
    return df


def _clean(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    if hasattr(x, "item"):
        return _clean(x.item())
    return x


def summary_dict(df: pd.DataFrame, meta: dict | None = None) -> dict:
    """`summary.json` content: {"meta", "conf", "interval", "behaviours": {name: {...}}}."""
    behaviours = {}
    for row in df.to_dict(orient="records"):
        name = row.pop("behaviour")
        behaviours[name] = {k: _clean(v) for k, v in row.items()}
    return {
        "meta": dict(meta or {}),
        "conf": df.attrs.get("conf", 0.95),
        "interval": "wilson",
        "behaviours": behaviours,
    }
