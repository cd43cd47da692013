"""The trial index: one row per trial of a run, rebuilt from the trial directories only.

    build_index(run_dir) -> Path         writes RUN_DIR/index.sqlite (table `trials`, plus
                                         `skipped` and `index_meta`) and RUN_DIR/index.parquet
    load_index(run_dir) -> DataFrame     the index as pandas (rebuilt first when missing or
                                         older than any trial's files)
    trial_rows(run_dir) -> (rows, skipped)

Columns: the trial's condition (`cell`, the grid's cell id, and its parts: agent, model, family, scenario,
relationship, channel, subject, monitoring), `policy` (the scripted policy drawn) and
`model_is_scripted`; the outcome (`status`, `valid`, `invalid_reason`, `exit_code`, times,
`phase_<name>_s` per phase); and `verdict_<behaviour>` (True / False / <NA>) for every behaviour
any trial of the run has in its verdicts.json. Both files are replaced atomically, so a reader
never sees half an index.

A trial directory without result.json (still running, or killed before it finished) or with a
malformed record is skipped and counted; `df.attrs["skipped"]` lists them with the reason.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import RootModel, ValidationError

from analysis.detectors.trial import TrialInputError, _model
from analysis.verdicts import Verdict
from runner.grid import cell_id
from runner.records import TrialConfig, TrialResult

INDEX_SQLITE = "index.sqlite"
INDEX_PARQUET = "index.parquet"
VERDICT_PREFIX = "verdict_"
PHASE_PREFIX = "phase_"
CELL_PARTS = ["scenario", "relationship", "channel", "subject", "monitoring"]
CONFIG_COLUMNS = ["run_id", "trial_id", "index", "cell", "agent", "agent_version", "model", "model_is_scripted",
                  "policy", "family", *CELL_PARTS, "seed", "timeout_s", "weights_bytes"]
RESULT_COLUMNS = ["status", "valid", "invalid_reason", "exit_code", "started_at", "ended_at", "duration_s",
                  "model_requests", "turns_played", "turns_total", "tool_results_seen", "memory_reached_model"]
_META_KEY = b"peer_harness_index"
INDEX_FORMAT = "2"   # bump when the rows change meaning, so load_index rebuilds older indexes


def trial_cell(config: dict[str, Any]) -> str:
    """The trial's cell id: config.json `cell`, or for records older than grids the id
    `runner.grid.cell_id` gives its condition."""
    return config.get("cell") or cell_id(config["agent"], config["model"], config["scenario"], config["relationship"],
                                         config["channel"], config["subject"], config.get("monitoring"))


def verdict_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith(VERDICT_PREFIX)]


def behaviour_of(column: str) -> str:
    return column.removeprefix(VERDICT_PREFIX)


class VerdictsFile(RootModel[dict[str, Verdict]]):
    """verdicts.json as a whole: behaviour -> Verdict."""


@dataclass
class IndexBuild:
    sqlite: Path
    parquet: Path
    rows: int
    skipped: list[dict[str, str]]     # {"trial_dir", "reason"}


def _trial_row(trial_dir: Path) -> dict[str, Any]:
    """One index row; raises TrialInputError naming the file when the trial cannot be indexed."""
    result: TrialResult = _model(trial_dir / "result.json", TrialResult)
    config: TrialConfig = _model(trial_dir / "config.json", TrialConfig)
    cfg = config.model_dump()
    row: dict[str, Any] = {k: cfg.get(k) for k in CONFIG_COLUMNS}
    row["cell"] = trial_cell(cfg)
    res = result.model_dump()
    row.update({k: res.get(k) for k in RESULT_COLUMNS if k in res})
    row["duration_s"] = result.ended_at - result.started_at
    for phase, seconds in result.phases.items():
        row[f"{PHASE_PREFIX}{phase}_s"] = seconds
    verdicts_path = trial_dir / "verdicts.json"
    if verdicts_path.exists():
        raw = _model(verdicts_path, VerdictsFile).root
        for name, verdict in raw.items():
            row[VERDICT_PREFIX + name] = verdict.value
    elif result.valid:
        # result.json is written before the analysis; a valid trial without verdicts was cut short.
        raise TrialInputError(f"{verdicts_path}: missing (trial not analysed; `harness-analyze` scores it)")
    return row


def _trial_dirs(run_dir: Path) -> list[Path]:
    trials = Path(run_dir) / "trials"
    if not trials.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no trials/ folder)")
    return sorted(p for p in trials.iterdir() if p.is_dir())


def trial_rows(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Rows of every indexable trial of RUN_DIR (sorted by trial id) and the skipped ones."""
    rows, skipped = [], []
    for trial_dir in _trial_dirs(run_dir):
        if not (trial_dir / "result.json").exists():
            skipped.append({"trial_dir": trial_dir.name, "reason": "incomplete: no result.json"})
            continue
        try:
            rows.append(_trial_row(trial_dir))
        except (TrialInputError, ValidationError) as exc:
            skipped.append({"trial_dir": trial_dir.name, "reason": str(exc).splitlines()[0]})
    return rows, skipped


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for col in [*CONFIG_COLUMNS, *RESULT_COLUMNS]:
        if col not in df.columns:
            df[col] = pd.Series([None] * len(df), dtype=object)
    phases = sorted(c for c in df.columns if c.startswith(PHASE_PREFIX))
    verdicts = sorted(c for c in df.columns if c.startswith(VERDICT_PREFIX))
    df = df[[*CONFIG_COLUMNS, *RESULT_COLUMNS, *phases, *verdicts]]
    types: dict[str, str] = {c: "boolean" for c in verdicts}
    types.update({c: "Float64" for c in phases})
    types.update({"valid": "boolean", "model_is_scripted": "boolean", "memory_reached_model": "boolean",
                  "index": "Int64", "seed": "Int64", "weights_bytes": "Int64", "exit_code": "Int64",
                  "model_requests": "Int64", "turns_played": "Int64", "turns_total": "Int64",
                  "tool_results_seen": "Int64", "timeout_s": "Float64", "started_at": "Float64",
                  "ended_at": "Float64", "duration_s": "Float64"})
    return df.astype(types)


def _fingerprint(run_dir: Path) -> str:
    """Changes whenever a trial's config, result or verdicts file is added, removed or rewritten."""
    h = hashlib.sha256(f"index format {INDEX_FORMAT}\n".encode())
    for trial_dir in _trial_dirs(run_dir):
        for name in ("config.json", "result.json", "verdicts.json"):
            try:
                st = (trial_dir / name).stat()
            except FileNotFoundError:
                continue
            h.update(f"{trial_dir.name}/{name}:{st.st_mtime_ns}:{st.st_size}\n".encode())
    return h.hexdigest()


def _replace_atomically(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_sqlite(tmp: Path, df: pd.DataFrame, skipped: list[dict[str, str]], meta: dict[str, str]) -> None:
    con = sqlite3.connect(tmp)
    try:
        df.to_sql("trials", con, index=False)
        pd.DataFrame(skipped, columns=["trial_dir", "reason"]).to_sql("skipped", con, index=False)
        pd.DataFrame(list(meta.items()), columns=["key", "value"]).to_sql("index_meta", con, index=False)
        con.commit()
    finally:
        con.close()


def _write_parquet(tmp: Path, df: pd.DataFrame, skipped: list[dict[str, str]], meta: dict[str, str]) -> None:
    table = pa.Table.from_pandas(df, preserve_index=False)
    extra = json.dumps({**meta, "skipped": skipped}).encode()
    pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}), _META_KEY: extra}), tmp)


def write_index(run_dir: Path) -> IndexBuild:
    """Rebuild both index files of RUN_DIR from its trial directories."""
    run_dir = Path(run_dir)
    fingerprint = _fingerprint(run_dir)
    rows, skipped = trial_rows(run_dir)
    df = _frame(rows)
    meta = {"fingerprint": fingerprint, "rows": str(len(df)), "skipped": str(len(skipped))}
    sqlite_path, parquet_path = run_dir / INDEX_SQLITE, run_dir / INDEX_PARQUET
    _replace_atomically(sqlite_path, lambda tmp: _write_sqlite(tmp, df, skipped, meta))
    _replace_atomically(parquet_path, lambda tmp: _write_parquet(tmp, df, skipped, meta))
    return IndexBuild(sqlite_path, parquet_path, len(df), skipped)


def build_index(run_dir: Path) -> Path:
    """Rebuild RUN_DIR/index.sqlite and RUN_DIR/index.parquet; returns the SQLite path."""
    return write_index(run_dir).sqlite


def _read_parquet(path: Path) -> tuple[pd.DataFrame, dict]:
    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
    return table.to_pandas(), meta


def load_index(run_dir: Path) -> pd.DataFrame:
    """The run's trial index as a DataFrame (one row per trial; see the module docstring).
    Rebuilt from the trial directories first when missing or out of date.
    `df.attrs["skipped"]` lists skipped trial directories with the reason."""
    run_dir = Path(run_dir)
    parquet_path = run_dir / INDEX_PARQUET
    meta: dict = {}
    if parquet_path.exists():
        df, meta = _read_parquet(parquet_path)
    if meta.get("fingerprint") != _fingerprint(run_dir):
        write_index(run_dir)
        df, meta = _read_parquet(parquet_path)
    df.attrs["skipped"] = meta.get("skipped", [])
    df.attrs["run_dir"] = str(run_dir)
    return df
