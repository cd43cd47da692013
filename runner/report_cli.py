"""`harness-index` and `harness-report`: the results layer over recorded runs."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from analysis.atif_export import export_atif
from analysis.html_report import write_html
from analysis.index import write_index
from analysis.report import PAPER_FIGURES, ReportError, build_report

console = Console(stderr=True)
out = Console()


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    sys.exit(2)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.1%}"


def _p(x: float | None) -> str:
    return "–" if x is None else (f"{x:.2e}" if x < 1e-3 else f"{x:.4f}")


def _scripted(flag: bool) -> str:
    return " [yellow](scripted)[/]" if flag else ""


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def harness_index(run_dir: Path):
    """Rebuild RUN_DIR/index.sqlite and RUN_DIR/index.parquet from the trial directories."""
    if not (run_dir / "trials").is_dir():
        _fail(f"{run_dir} is not a run directory (no trials/ folder)")
    build = write_index(run_dir)
    out.print(f"{build.rows} trial(s) indexed into {build.sqlite} and {build.parquet}")
    for s in build.skipped:
        console.print(f"[yellow]skipped[/] {s['trial_dir']}: {s['reason']}")
    if build.skipped:
        console.print(f"{len(build.skipped)} trial director{'y' if len(build.skipped) == 1 else 'ies'} skipped")


def print_report(report: dict) -> None:
    conf = f"{100 * report['conf']:g}%"
    if report["scripted"]:
        out.print(f"[bold yellow]SCRIPTED MODEL[/] in this report ({report['scripted_note']}).")
    cells: dict[tuple, list[dict]] = {}
    for c in report["cells"]:
        cells.setdefault((c["cell"], c["agent"], c["model"]), []).append(c)
    for (cell, agent, model), rows in cells.items():
        first = rows[0]
        table = Table(title=f"{cell} · {agent} · {model}{_scripted(first['scripted'])}\n"
                            f"{first['trials']} trials, {first['invalid']} invalid (in no rate)",
                      caption=f"{conf} Wilson CI; p: exact binomial test of rate > {report['p0']}")
        for col in ("behaviour", "k / n", "rate", f"{conf} CI", "n/a", "p"):
            table.add_column(col, justify="left" if col == "behaviour" else "right")
        for c in rows:
            ci = "–" if not c["n"] else f"[{_pct(c['ci_low'])}, {_pct(c['ci_high'])}]"
            table.add_row(c["behaviour"], f"{c['k']} / {c['n']}", _pct(c["rate"]), ci, str(c["not_applicable"]),
                          _p(c["p_binom"]))
        out.print(table)
    pairs: dict[tuple, list[dict]] = {}
    for r in report["comparisons"]:
        pairs.setdefault((r["comparison"], r["cell_a"], r["cell_b"], r["agent"], r["model"]), []).append(r)
    for (kind, cell_a, cell_b, agent, model), rows in pairs.items():
        spec = report["comparison_kinds"][kind]
        table = Table(title=f"{spec['label']}{_scripted(rows[0]['scripted'])}\na = {cell_a}\nb = {cell_b}\n"
                            f"({agent} · {model})",
                      caption="diff = a − b with Newcombe CI; p two-sided (Fisher exact when small, else z)")
        for col in ("behaviour", "a k / n", "b k / n", "diff [CI]", "test", "p"):
            table.add_column(col, justify="left" if col in ("behaviour", "test") else "right")
        for r in rows:
            table.add_row(r["behaviour"], f"{r['k_a']} / {r['n_a']}", f"{r['k_b']} / {r['n_b']}",
                          f"{_pct(r['diff'])} [{_pct(r['diff_low'])}, {_pct(r['diff_high'])}]", r["test"], _p(r["p"]))
        out.print(table)
    if not pairs:
        out.print("No comparisons: no two cells differ in just the peer, the relationship or the monitoring.")
    combined: dict[tuple, list[dict]] = {}
    for r in report["combined"]:
        combined.setdefault((r["agent"], r["model"]), []).append(r)
    for (agent, model), rows in combined.items():
        table = Table(title=f"Comparisons combined across cells · {agent} · {model}{_scripted(rows[0]['scripted'])}",
                      caption="Fisher's method over the pairs' one-sided p (a higher than b)")
        for col in ("comparison", "behaviour", "pairs", "χ²", "p"):
            table.add_column(col, justify="left" if col in ("comparison", "behaviour") else "right")
        for r in rows:
            table.add_row(r["comparison"], r["behaviour"], str(r["pairs"]), f"{r['chi2']:.2f}", _p(r["p"]))
        out.print(table)
    if report["paper"]:
        paper = Table(title=f"Published figures side by side\n({report['paper_source']})",
                      caption="sources: " + "; ".join(sorted({r["cite"] for r in report["paper"]})))
        for col in ("behaviour", "paper", "ours k / n", "ours [CI]", "our cell · agent · model"):
            paper.add_column(col)
        bounds = {"exact": "", "at_least": "≥ ", "up_to": "≤ "}
        for r in report["paper"]:
            note = "" if r["comparable"] else " [yellow](scripted: not comparable)[/]"
            paper.add_row(r["behaviour"], f"{bounds[r['paper_bound']]}{_pct(r['paper_rate'])} "
                                          f"{r['paper_model']} ({r['paper_harness']})",
                          f"{r['k']} / {r['n']}", f"{_pct(r['rate'])} [{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]",
                          f"{r['cell']} · {r['agent']} · {r['model']}{note}")
        out.print(paper)
    for run in report["runs"]:
        if run["skipped"]:
            console.print(f"[yellow]{len(run['skipped'])} trial director(ies) skipped[/] in {run['run_dir']}: "
                          + "; ".join(f"{s['trial_dir']} ({s['reason']})" for s in run["skipped"]))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the report as JSON.")
@click.option("--html", "html_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a self-contained HTML report (trial pages go to <name>_trials/ beside it).")
@click.option("--export-atif", "atif_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write every trial's trajectory as ATIF JSON (with cell and verdicts) under this folder.")
@click.option("--conf", type=float, default=0.95, show_default=True, help="Confidence level of the intervals.")
@click.option("--p0", type=float, default=0.01, show_default=True,
              help="Near-zero rate of the one-sided exact binomial tests.")
@click.option("--figures", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=PAPER_FIGURES,
              show_default=True, help="The paper's published figures (YAML).")
def harness_report(run_dirs, json_out, html_out, atif_dir, conf, p0, figures):
    """Rates per cell, the paper's comparisons as tests, and the paper's figures, over one or more runs."""
    try:
        report = build_report(list(run_dirs), conf=conf, p0=p0, figures_path=figures)
    except (ReportError, FileNotFoundError) as exc:
        _fail(str(exc))
    print_report(report)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        console.print(f"JSON report: {json_out}")
    if html_out:
        pages = write_html(report, html_out)
        console.print(f"HTML report: {pages[0]} (+ {len(pages) - 1} trial page(s))")
    if atif_dir:
        export = export_atif(report["trials"], atif_dir)
        console.print(f"ATIF: {len(export.written)} trajectory file(s) under {atif_dir}")
        for s in export.skipped:
            console.print(f"[yellow]not exported[/] {s['trial']}: {s['reason']}")
