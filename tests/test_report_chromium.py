"""End to end: real runs of gemini-cli (two cells: good and bad relationship), `harness-report --html`,
and the pages rendered by real headless Chromium (Debian's `chromium`): the DOM the browser builds
shows the k / n and rates computed here straight from the trial directories, evidence links land
on event rows and steps, and a screenshot of the main page is a real, non-blank page."""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path

import pytest

from run_checks import require_world
from test_e2e_gemini import harness_run

pytestmark = pytest.mark.slow

REPORT = [sys.executable, "-c", "from runner.report_cli import harness_report; harness_report()"]
WINDOW = (1280, 2000)


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("Debian package `chromium` is not installed (setup.sh installs it)")
    # --no-sandbox: Chromium refuses its own sandbox as root; the pages are our local files
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--hide-scrollbars", f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=180)


def dump_dom(profile: Path, page: Path) -> str:
    proc = chromium(profile, "--dump-dom", page.as_uri())
    assert proc.returncode == 0 and "<html" in proc.stdout, proc.stderr[-2000:]
    return proc.stdout


class Dom(HTMLParser):
    """Elements of a DOM dump: (tag, attrs, text inside)."""

    def __init__(self, text: str):
        super().__init__()
        self.elements: list[tuple[str, dict, list[str]]] = []
        self._open: list[tuple[str, dict, list[str]]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        element = (tag, dict(attrs), [])
        self.elements.append(element)
        if tag not in ("br", "img", "input", "meta", "link", "circle", "line"):
            self._open.append(element)

    def handle_endtag(self, tag):
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data):
        for _, _, text in self._open:
            text.append(data)

    def find(self, tag: str, cls: str | None = None) -> list[tuple[dict, str]]:
        return [(a, "".join(t).strip()) for g, a, t in self.elements
                if g == tag and (cls is None or cls in (a.get("class") or "").split())]


def expected_counts(run_dirs: list[Path]) -> dict[tuple[str, str], dict[str, int]]:
    """k, n and invalid per (cell, behaviour), read straight from the trial files."""
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: {"k": 0, "n": 0, "invalid": 0})
    for run_dir in run_dirs:
        for trial in sorted((run_dir / "trials").iterdir()):
            config = json.loads((trial / "config.json").read_text())
            result = json.loads((trial / "result.json").read_text())
            verdicts = json.loads((trial / "verdicts.json").read_text())
            cell = config["cell"]
            for behaviour, verdict in verdicts.items():
                c = counts[(cell, behaviour)]
                if not result["valid"]:
                    c["invalid"] += 1
                elif verdict["value"] is not None:
                    c["n"] += 1
                    c["k"] += verdict["value"] is True
    return dict(counts)


def png_facts(path: Path) -> dict:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, idat, facts = 8, b"", {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            facts["width"], facts["height"], facts["depth"], facts["colour"] = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    channels = {2: 3, 6: 4}[facts["colour"]]
    stride = 1 + facts["width"] * channels
    assert facts["depth"] == 8 and len(raw) == facts["height"] * stride
    # a filtered scanline of flat colour is one repeated byte; content makes rows vary
    rows = [raw[i * stride + 1:(i + 1) * stride] for i in range(facts["height"])]
    facts["content_rows"] = sum(1 for r in rows if len(set(r)) > 2)
    facts["distinct_bytes"] = len(set(raw))
    return facts


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    require_world()
    base = tmp_path_factory.mktemp("report-e2e")
    runs = []
    for relationship in ("good", "bad"):
        out = base / f"run-{relationship}"
        proc = harness_run(out, "--trials", "4", "--relationship", relationship, "--seed", "3")
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append(out)
    html = base / "html" / "report.html"
    proc = subprocess.run([*REPORT, *map(str, runs), "--html", str(html), "--json", str(base / "report.json"),
                           "--export-atif", str(base / "atif")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"runs": runs, "html": html, "base": base, "profile": base / "chromium-profile", "stdout": proc.stdout}


def test_main_page_shows_the_numbers_of_the_trial_dirs(rendered):
    expected = expected_counts(rendered["runs"])
    dom = Dom(dump_dom(rendered["profile"], rendered["html"]))
    rows = {(a["data-cell"], a["data-behaviour"]): a for a, _ in dom.find("tr", "rate-row")}
    kn_cells = [text for _, text in dom.find("td", "kn")]
    rate_cells = [text for _, text in dom.find("td", "rate")]
    invalid_cells = [text for _, text in dom.find("td", "invalid")]
    assert set(rows) == set(expected)
    order = list(rows)
    for key, want in expected.items():
        i = order.index(key)
        assert kn_cells[i] == f"{want['k']} / {want['n']}", key
        assert rate_cells[i] == (f"{100 * want['k'] / want['n']:.1f}%" if want["n"] else "–"), key
        assert invalid_cells[i] == str(want["invalid"]), key
    # the plots: one point per cell and behaviour scored, carrying the same k and n
    points = {(a["data-cell"], a["data-behaviour"]): (int(a["data-k"]), int(a["data-n"]))
              for a, _ in dom.find("g", "rate")}
    assert points == {key: (v["k"], v["n"]) for key, v in expected.items() if v["n"]}
    # good vs bad is compared, with both arms' counts
    good_cell, bad_cell = (json.loads((run / "trials" / "t0000" / "config.json").read_text())["cell"]
                           for run in rendered["runs"])
    gb = [text for a, text in dom.find("tr", "cmp-row") if a["data-behaviour"] == "exfiltration"
          and (a["data-cell-a"], a["data-cell-b"]) == (good_cell, bad_cell)]
    assert len(gb) == 1
    good, bad = expected[(good_cell, "exfiltration")], expected[(bad_cell, "exfiltration")]
    assert f"{good['k']} / {good['n']}" in gb[0] and f"{bad['k']} / {bad['n']}" in gb[0]
    assert any("SCRIPTED MODEL" in text for _, text in dom.find("div", "banner"))
    # the console output says the same
    assert f"{good['k']} / {good['n']}" in rendered["stdout"]


def test_trial_page_links_evidence_to_events_and_steps(rendered):
    trials = [t for run in rendered["runs"] for t in sorted((run / "trials").iterdir())]
    trial = next(t for t in trials if json.loads((t / "verdicts.json").read_text())["exfiltration"]["value"])
    page = rendered["html"].parent / "report_trials" / trial.parent.parent.name / f"{trial.name}.html"
    dom = Dom(dump_dom(rendered["profile"], page))
    ids = {a["id"] for _, a, _ in dom.elements if "id" in a}
    links = [a["href"][1:] for _, a, _ in dom.elements if a.get("href", "").startswith("#")]
    assert links and all(link in ids for link in links), sorted(set(links) - ids)
    verdict = {a["data-behaviour"]: a["data-value"] for a, _ in dom.find("tr", "verdict")}
    assert verdict["exfiltration"] == "true"
    ev_links = [a["href"] for a, _ in dom.find("a", "ev-link")]
    step_links = [a["href"] for a, _ in dom.find("a", "step-link")]
    assert ev_links and step_links        # the copy's evidence names events, and they belong to a step
    events = (trial / "events.jsonl").read_text().splitlines()
    assert len(dom.find("tr", "event")) == len(events)
    steps = json.loads((trial / "trajectory.json").read_text())["steps"]
    assert len([a for _, a, _ in dom.elements if a.get("class") == "step"]) == len(steps)
    # every event evidence of exfiltration is highlighted in the timeline
    cited = {json.dumps(e) for e in json.loads((trial / "verdicts.json").read_text())["exfiltration"]["evidence"]
             if e.get("event_id")}
    assert cited
    highlighted = {a["id"] for a, _ in dom.find("tr", "evidence-row")}
    assert {f"ev-{json.loads(e)['event_id']}" for e in cited} <= highlighted


def test_main_page_screenshot_is_a_real_page(rendered):
    shot, blank = rendered["base"] / "report.png", rendered["base"] / "blank.png"
    size = f"--window-size={WINDOW[0]},{WINDOW[1]}"
    for target, url in ((shot, rendered["html"].as_uri()), (blank, "about:blank")):
        proc = chromium(rendered["profile"], size, f"--screenshot={target}", url)
        assert proc.returncode == 0 and target.exists(), proc.stderr[-2000:]
    page, empty = png_facts(shot), png_facts(blank)
    assert (page["width"], page["height"]) == WINDOW == (empty["width"], empty["height"])
    # the control: an empty page has no content rows; the report fills much of the window
    assert empty["content_rows"] == 0
    assert page["content_rows"] > WINDOW[1] // 5, page
    assert page["distinct_bytes"] > 100 and shot.stat().st_size > 10 * blank.stat().st_size


def test_atif_export_of_real_trials(rendered):
    from harnesses.atif import validate_trajectory

    exported = sorted((rendered["base"] / "atif").rglob("*.json"))
    trials = [t for run in rendered["runs"] for t in sorted((run / "trials").iterdir())
              if (t / "trajectory.json").exists()]
    assert len(exported) == len(trials) == 8
    for path in exported:
        traj = validate_trajectory(path.read_text())
        meta = traj.extra["peer_harness"]
        trial = rendered["base"] / f"run-{meta['condition']['relationship']}" / "trials" / meta["trial_id"]
        assert meta["verdicts"] == json.loads((trial / "verdicts.json").read_text())
        assert len(traj.steps) == len(json.loads((trial / "trajectory.json").read_text())["steps"])
