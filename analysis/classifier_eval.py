"""Precision and recall of the text classifiers (`refusal`, `persuasion`) on the labelled texts.

`fixtures/labelled/texts.csv` (id, split, text, refusal, persuasion, note) holds agent final
messages and mid-run texts written for the project, labelled by hand, split into `dev` (the
rules were tuned on it) and `test` (held out; the figures to report). Classifiers:
* `rules`: `match_refusal` / `match_persuasion` (the baselines the detectors use);
* `judge`: an LLM judge (`analysis.judge`), each text judged as a one-message transcript.

`harness-validate --classifiers [--split test|dev|all] [--judge SPEC]` prints the table.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError
from rich.table import Table

from analysis.detectors.persuasion import match_persuasion
from analysis.detectors.refusal import match_refusal
from runner.paths import FIXTURES, PROJECT_ROOT

TEXTS = FIXTURES / "labelled" / "texts.csv"
LABELS = ("refusal", "persuasion")
RULES = {"refusal": match_refusal, "persuasion": match_persuasion}


class LabelledText(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    split: Literal["dev", "test"]
    text: str
    refusal: Literal[0, 1]
    persuasion: Literal[0, 1]
    note: str = ""


class TextsError(ValueError):
    """The labelled CSV is malformed; the message names the file and line."""


def load_texts(path: Path = TEXTS) -> list[LabelledText]:
    path = Path(path)
    rows, seen = [], set()
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        want = ["id", "split", "text", "refusal", "persuasion", "note"]
        if reader.fieldnames != want:
            raise TextsError(f"{path}:1: header must be {','.join(want)}, got {','.join(reader.fieldnames or [])}")
        for raw in reader:
            line = reader.line_num
            try:
                row = LabelledText.model_validate({**raw, "refusal": int(raw["refusal"]),
                                                   "persuasion": int(raw["persuasion"])})
            except (ValidationError, ValueError, TypeError) as exc:
                raise TextsError(f"{path}:{line}: {exc}") from None
            if row.id in seen:
                raise TextsError(f"{path}:{line}: duplicate id {row.id!r}")
            seen.add(row.id)
            rows.append(row)
    return rows


def predictions(texts: list[LabelledText], judge=None) -> pd.DataFrame:
    """One row per (text, label, classifier): id, split, label, classifier, expected, got."""
    rows = []
    for t in texts:
        judged = judge.label([(1, t.text)]) if judge is not None else None
        for label in LABELS:
            want = bool(getattr(t, label))
            rows.append({"id": t.id, "split": t.split, "label": label, "classifier": "rules",
                         "expected": want, "got": bool(RULES[label](t.text))})
            if judged is not None:
                rows.append({"id": t.id, "split": t.split, "label": label, "classifier": judge.detector,
                             "expected": want, "got": bool(judged[label])})
    return pd.DataFrame(rows, columns=["id", "split", "label", "classifier", "expected", "got"])


def scores(preds: pd.DataFrame) -> pd.DataFrame:
    """Per (classifier, label): n, tp, fp, fn, tn, precision, recall."""
    out = []
    for (clf, label), g in preds.groupby(["classifier", "label"], sort=False):
        e, p = g["expected"].astype(bool), g["got"].astype(bool)
        tp, fp, fn, tn = int((e & p).sum()), int((~e & p).sum()), int((e & ~p).sum()), int((~e & ~p).sum())
        out.append({"classifier": clf, "label": label, "n": len(g), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
                    "precision": tp / (tp + fp) if tp + fp else None,
                    "recall": tp / (tp + fn) if tp + fn else None})
    return pd.DataFrame(out, columns=["classifier", "label", "n", "tp", "fp", "fn", "tn", "precision", "recall"])


def evaluate(path: Path = TEXTS, split: str = "test", judge=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    texts = [t for t in load_texts(path) if split == "all" or t.split == split]
    preds = predictions(texts, judge)
    return scores(preds), preds


def main_scores(path: Path | None, split: str, judge_spec: str | None, threshold: float, console) -> int:
    """`harness-validate --classifiers`: print the figures; 0 when every score is >= threshold."""
    from analysis.judge import Judge, JudgeError  # noqa: PLC0415

    try:
        judge = Judge(judge_spec, PROJECT_ROOT / "runs" / "judge-cache") if judge_spec else None
        table, preds = evaluate(path or TEXTS, split, judge)
    except (TextsError, ValueError, JudgeError, OSError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return 2
    t = Table(title=f"text classifiers on the {split} split of {path or TEXTS}")
    for col in ("classifier", "label", "n", "TP", "FP", "FN", "TN", "precision", "recall"):
        t.add_column(col, justify="left" if col in ("classifier", "label") else "right")
    for r in table.itertuples():
        t.add_row(r.classifier, r.label, str(r.n), str(r.tp), str(r.fp), str(r.fn), str(r.tn),
                  "-" if r.precision is None else f"{r.precision:.3f}", "-" if r.recall is None else f"{r.recall:.3f}")
    console.print(t)
    wrong = preds[preds["expected"] != preds["got"]]
    for r in wrong.itertuples():
        console.print(f"  {r.classifier} {r.label}: {r.id} expected {r.expected}, got {r.got}")
    below = [f"{r.classifier} {r.label}" for r in table.itertuples()
             if (r.precision is not None and r.precision < threshold) or (r.recall is not None and r.recall < threshold)]
    if below:
        console.print(f"[yellow]below {threshold}[/]: {', '.join(below)}")
        return 1
    return 0
