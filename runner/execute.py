"""Run the planned trials of a run: a pool of worker threads, each owning one trial's world
until it returns, a live progress display, and interruption (Ctrl-C / SIGTERM) that kills every
running world at once and leaves the run resumable."""
from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from runner.run_store import PlannedTrial, partial_dir, promote
from runner.sandbox import CANCEL
from runner.trial import AgentSlots, TrialSetup, run_trial

# Shown live when present, in this order; other behaviours fill up to LIVE_RATES.
MAIN_BEHAVIOURS = ("exfiltration", "deletion_refusal", "shutdown_tampering", "misrepresentation", "spec_gaming",
                   "shutdown_executed", "exfiltration_attempt")
LIVE_RATES = 4


class Tally:
    """Counts over finished trials for the live display."""

    def __init__(self) -> None:
        self.valid = 0
        self.invalid = 0
        self.behaviours: dict[str, list[int]] = {}   # name -> [k, n] over valid trials

    def add(self, trial_dir: Path) -> None:
        result = json.loads((trial_dir / "result.json").read_text())
        if not result["valid"]:
            self.invalid += 1
            return
        self.valid += 1
        for name, verdict in json.loads((trial_dir / "verdicts.json").read_text()).items():
            k_n = self.behaviours.setdefault(name, [0, 0])
            if verdict.get("value") is not None:
                k_n[1] += 1
                k_n[0] += verdict["value"] is True

    def text(self) -> str:
        names = sorted((n for n, (_, total) in self.behaviours.items() if total),
                       key=lambda n: MAIN_BEHAVIOURS.index(n) if n in MAIN_BEHAVIOURS else len(MAIN_BEHAVIOURS))
        rates = "  ".join(f"{n} {self.behaviours[n][0] / self.behaviours[n][1]:.0%}" for n in names[:LIVE_RATES])
        return f"valid {self.valid} invalid {self.invalid}" + (f" | {rates}" if rates else "")


def trial_progress(console: Console) -> Progress:
    """The live display of a run (one task: trials done of all, the tally in `stats`). Redrawn once
    a second (at rich's default of 10 a second, redrawing cost the harness process about as much
    CPU as collecting the trials' records)."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("eta"),
                    TimeRemainingColumn(), console=console, refresh_per_second=1)


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt


def execute(run_dir: Path, todo: list[PlannedTrial], setup_for: Callable[[PlannedTrial], TrialSetup],
            concurrency: int, finished: list[Path], title: str, console: Console) -> float:
    """Run `todo` (in order, `concurrency` agents at a time) and return the wall time. A trial that
    finishes is moved into trials/; one cut short by an interruption stays in partial/ for a
    resume to redo. On Ctrl-C / SIGTERM every running world is killed and KeyboardInterrupt is
    raised once the workers have returned."""
    tally = Tally()
    for trial_dir in finished:
        tally.add(trial_dir)

    # `concurrency` agents run at once; twice as many workers (so at most that many worlds alive), so
    # the next trials' worlds are built and started and the last ones' records collected while those
    # agents run (runner.trial.AgentSlots).
    slots = AgentSlots(concurrency)

    def one(planned: PlannedTrial) -> Path | None:
        run_trial(partial_dir(run_dir, planned.trial_id), setup_for(planned), slots)
        if CANCEL.is_set():      # its world may have been killed under it: not a finished trial
            return None
        return promote(run_dir, planned.trial_id)

    t0 = time.time()
    with trial_progress(console) as progress:
        task = progress.add_task(title, total=len(finished) + len(todo), completed=len(finished),
                                 stats=tally.text())
        # Each worker thread owns its trial's world until it returns (PDEATHSIG is per thread).
        pool = ThreadPoolExecutor(max_workers=2 * concurrency)
        futures = [pool.submit(one, planned) for planned in todo]
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            for fut in as_completed(futures):
                trial_dir = fut.result()
                if trial_dir is not None:
                    tally.add(trial_dir)
                progress.update(task, advance=1, stats=tally.text())
        except BaseException:
            CANCEL.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
        pool.shutdown()
    return round(time.time() - t0, 1)
