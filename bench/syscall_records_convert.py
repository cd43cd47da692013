"""Time runner.syscall_records.records_to_strace (done in the harness process once per trial) on
record files of the eBPF syscall recorder, e.g. one trial's agent record
(`runner/ebpf/build/syscall-recorder -o records.jsonl --run TAG -- cmd...`).

    python bench/syscall_records_convert.py RECORDS.jsonl [...] [--repeat 20]

Prints and writes bench/results/syscall_records_convert.json: per file, records, strace lines,
median and fastest wall time of the conversion, and the median per record."""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runner.syscall_records import records_to_strace  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "syscall_records_convert.json"


@click.command()
@click.argument("records", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--repeat", default=20, show_default=True, help="conversions per file")
def main(records: tuple[Path, ...], repeat: int) -> None:
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "strace.txt"
        for path in records:
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                summary = records_to_strace(path, out)
                times.append(time.perf_counter() - start)
            median = statistics.median(times)
            figures.append({"file": str(path), **summary.model_dump(), "repeat": repeat,
                            "median_ms": round(median * 1e3, 2), "fastest_ms": round(min(times) * 1e3, 2),
                            "median_us_per_record": round(median * 1e6 / summary.records, 1)})
            print(f"{path}: {summary.records} records -> {summary.lines} lines; median {median * 1e3:.1f} ms "
                  f"(fastest {min(times) * 1e3:.1f} ms), {median * 1e6 / summary.records:.0f} us per record")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=1) + "\n")
    print(f"written: {RESULTS}")


if __name__ == "__main__":
    main()
