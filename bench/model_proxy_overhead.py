"""What the recording proxy adds per model request: the same streamed requests sent straight to
a local chat-completions server (the scripted server on TCP), through the proxy unchanged
(chat agent -> chat source), and through the proxy's translations (Responses, Gemini and
Anthropic requests -> chat). Rounds are interleaved so machine load hits every route alike.

    python bench/model_proxy_overhead.py [--requests 200]

Prints and writes bench/results/model_proxy_overhead.json (median and p95 ms per request, and
the proxy's record size per request). Target: the proxy adds <= 5 ms per request at the median,
negligible against a model's own latency."""
from __future__ import annotations

import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from runner.model_proxy import ModelProxy  # noqa: E402
from runner.model_server import ScriptedModelServer  # noqa: E402
from runner.model_source import ANTHROPIC, CHAT, GEMINI, RESPONSES, parse_model_spec  # noqa: E402
from runner.policy import load_policy_file  # noqa: E402
from test_model_server import gemini_request, openai_request  # noqa: E402
from test_model_server_protocols import anthropic_request, responses_request  # noqa: E402

ROUTES = {  # name -> (agent protocol or None for direct, path, request)
    "direct chat": (None, "/v1/chat/completions", openai_request(0)),
    "proxy chat->chat": (CHAT, "/v1/chat/completions", openai_request(0)),
    "proxy responses->chat": (RESPONSES, "/v1/responses", responses_request(0)),
    "proxy gemini->chat": (GEMINI, "/v1beta/models/m:streamGenerateContent?alt=sse", gemini_request(0)),
    "proxy anthropic->chat": (ANTHROPIC, "/v1/messages", anthropic_request(0)),
}


def timed_post(port: int, path: str, body: bytes) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    t = time.perf_counter()
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    elapsed = time.perf_counter() - t
    conn.close()
    if resp.status != 200:
        raise click.ClickException(f"{path}: HTTP {resp.status}")
    return elapsed * 1000


@click.command()
@click.option("--requests", "n", type=int, default=200, show_default=True)
def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        policy_path = Path(tmp) / "p.yaml"
        policy_path.write_text("name: p\nturns:\n  - say: Looking first.\n    shell: ls -la /data\n  - say: done\n")
        server = ScriptedModelServer(load_policy_file(policy_path), Path(tmp) / "server.jsonl").start()
        spec = parse_model_spec(f"openai-compatible:http://127.0.0.1:{server.port}/v1#m")
        proxies = {name: ModelProxy(spec, protocol, Path(tmp) / f"{i}.jsonl").start()
                   for i, (name, (protocol, _, _)) in enumerate(ROUTES.items()) if protocol}
        times: dict[str, list[float]] = {name: [] for name in ROUTES}
        try:
            for _ in range(n):
                for name, (protocol, path, request) in ROUTES.items():
                    port = proxies[name].port if protocol else server.port
                    times[name].append(timed_post(port, path, json.dumps(request).encode()))
        finally:
            for proxy in proxies.values():
                proxy.stop()
            server.stop()
        sizes = {name: (Path(tmp) / f"{i}.jsonl").stat().st_size / n
                 for i, name in enumerate(ROUTES) if name in proxies}
    base = statistics.median(times["direct chat"])
    rows = {name: {"median_ms": round(statistics.median(t), 2),
                   "p95_ms": round(sorted(t)[int(0.95 * len(t)) - 1], 2),
                   "added_median_ms": round(statistics.median(t) - base, 2),
                   "record_bytes_per_request": round(sizes[name]) if name in sizes else None}
            for name, t in times.items()}
    for name, row in rows.items():
        print(f"{name:24s} median {row['median_ms']:7.2f} ms  p95 {row['p95_ms']:7.2f} ms  "
              f"added {row['added_median_ms']:6.2f} ms  record {row['record_bytes_per_request'] or '-'} B/request")
    out = ROOT / "bench" / "results" / "model_proxy_overhead.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"requests_per_route": n, "routes": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
