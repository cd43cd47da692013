"""Where a trial's model comes from (`--model SPEC`).

    scripted:NAME|PATH                  the scripted model server plays a policy (offline)
    gemini:MODEL                        Google Gemini API            key: GEMINI_API_KEY
    openai:MODEL                        OpenAI API                   key: OPENAI_API_KEY
    anthropic:MODEL                     Anthropic API                key: ANTHROPIC_API_KEY
    openrouter:MODEL                    OpenRouter                   key: OPENROUTER_API_KEY
    openai-compatible:BASE_URL#MODEL    a local server (llama.cpp, vLLM, Ollama, ...): OpenAI Chat
                                        Completions at BASE_URL (ending in /v1); key, if any:
                                        OPENAI_COMPATIBLE_API_KEY

Every real source is reached through the recording proxy (runner.model_proxy). Each source
speaks some wire protocols; an agent whose protocol the source does not speak is translated to
OpenAI Chat Completions, which every source speaks (Gemini and Anthropic through their
OpenAI-compatible endpoints). `PEER_HARNESS_BASE_URL_<PROVIDER>` (e.g.
PEER_HARNESS_BASE_URL_OPENAI) replaces a provider's root URL, for gateways and tests.

Keys are read from the environment when a proxy starts and live only in its memory.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import quote

from harnesses.native_output import class_for_message, class_for_status
from runner.policy import PolicyError

# Wire protocols (the names runner.model_server uses for request paths).
GEMINI, CHAT, RESPONSES, ANTHROPIC = "gemini", "openai-chat", "openai-responses", "anthropic"
# Agent protocols the proxy can translate to OpenAI Chat Completions (runner.model_translate).
TRANSLATED_TO_CHAT = (GEMINI, RESPONSES, ANTHROPIC)
PREFLIGHT_TIMEOUT_S = 15


class ModelSourceError(PolicyError):
    """A --model spec that cannot be used (unknown provider, bad syntax, unsupported agent)."""


@dataclass(frozen=True)
class Provider:
    root: str                       # scheme://host[/prefix], replaceable by PEER_HARNESS_BASE_URL_<NAME>
    key_env: str | None
    key_required: bool
    protocols: dict[str, str]       # protocol -> path prefix under the root (best first)
    # Key header per protocol (default "Authorization: Bearer <key>").
    key_headers: dict[str, str] = field(default_factory=dict)


PROVIDERS: dict[str, Provider] = {
    "gemini": Provider("https://generativelanguage.googleapis.com", "GEMINI_API_KEY", True,
                       {GEMINI: "", CHAT: "/v1beta/openai"}, {GEMINI: "x-goog-api-key"}),
    "openai": Provider("https://api.openai.com", "OPENAI_API_KEY", True, {RESPONSES: "/v1", CHAT: "/v1"}),
    "anthropic": Provider("https://api.anthropic.com", "ANTHROPIC_API_KEY", True,
                          {ANTHROPIC: "", CHAT: "/v1"}, {ANTHROPIC: "x-api-key"}),
    "openrouter": Provider("https://openrouter.ai", "OPENROUTER_API_KEY", True, {CHAT: "/api/v1"}),
    "openai-compatible": Provider("", "OPENAI_COMPATIBLE_API_KEY", False, {CHAT: ""}),
}
SPEC_HELP = ("use scripted:NAME|PATH, gemini:MODEL, openai:MODEL, anthropic:MODEL, openrouter:MODEL or "
             "openai-compatible:http://HOST:PORT/v1#MODEL")


@dataclass(frozen=True)
class Route:
    """How one agent protocol reaches a source."""

    agent_protocol: str
    upstream_protocol: str
    base_url: str                   # root + the protocol's prefix
    key_header: str | None          # header carrying the key (None: no key)

    @property
    def translated(self) -> bool:
        return self.agent_protocol != self.upstream_protocol


@dataclass(frozen=True)
class ModelSource:
    spec: str
    provider: str                   # "scripted" or a key of PROVIDERS
    model: str                      # the model name the CLI is given and the upstream receives
    root: str = ""

    @property
    def is_scripted(self) -> bool:
        return self.provider == "scripted"

    @property
    def sha256(self) -> str:
        """Pinned in run.json like a policy's hash: a resume must use the same source."""
        return hashlib.sha256(json.dumps([self.provider, self.model, self.root]).encode()).hexdigest()

    @property
    def info(self) -> Provider:
        return PROVIDERS[self.provider]

    def key(self) -> str | None:
        """The key from the environment (never stored anywhere else)."""
        env = self.info.key_env
        return (os.environ.get(env) or None) if env else None

    def route(self, agent_protocol: str) -> Route:
        """Passthrough when the source speaks the agent's protocol, else translation to chat
        completions; raises ModelSourceError for a pair the proxy cannot serve."""
        protocols = self.info.protocols
        if agent_protocol in protocols:
            upstream = agent_protocol
        elif agent_protocol in TRANSLATED_TO_CHAT and CHAT in protocols:
            upstream = CHAT
        else:
            raise ModelSourceError(
                f"--model {self.spec}: the agent speaks {agent_protocol}, which {self.provider} does not speak and "
                f"the proxy cannot translate (it translates {', '.join(TRANSLATED_TO_CHAT)} to {CHAT}; "
                f"{self.provider} speaks {', '.join(protocols)})")
        key_header = self.info.key_headers.get(upstream, "authorization") if self.key() else None
        return Route(agent_protocol, upstream, self.root + protocols[upstream], key_header)

    def auth_headers(self, route: Route) -> dict[str, str]:
        key = self.key()
        if not key or route.key_header is None:
            return {}
        return {route.key_header: f"Bearer {key}" if route.key_header == "authorization" else key}


def parse_model_spec(spec: str) -> ModelSource:
    """`--model SPEC` -> ModelSource; raises ModelSourceError saying how to write it."""
    provider, sep, rest = spec.partition(":")
    if provider == "scripted":
        if not rest:
            raise ModelSourceError(f"--model {spec!r}: write scripted:NAME or scripted:/path/policy.yaml")
        return ModelSource(spec, "scripted", rest)
    if not sep or not rest:
        raise ModelSourceError(f"--model {spec!r}: {SPEC_HELP}")
    if provider not in PROVIDERS:
        raise ModelSourceError(f"--model {spec!r}: unknown source {provider!r}; {SPEC_HELP}")
    if provider == "openai-compatible":
        base, hash_, model = rest.rpartition("#")
        if not hash_ or not model or not re.match(r"^https?://[^/#]+", base):
            raise ModelSourceError(f"--model {spec!r}: write openai-compatible:http://HOST:PORT/v1#MODEL "
                                   "(the server's OpenAI base URL, '#', the model name it serves)")
        return ModelSource(spec, provider, model, base.rstrip("/"))
    root = os.environ.get(f"PEER_HARNESS_BASE_URL_{provider.upper()}") or PROVIDERS[provider].root
    return ModelSource(spec, provider, rest, root.rstrip("/"))


def _get(url: str, headers: dict[str, str]) -> tuple[int | None, str]:
    """(HTTP status or None when unreachable, body or error text)."""
    req = urllib.request.Request(url, headers={"User-Agent": "peer-harness-preflight", **headers})
    try:
        with urllib.request.urlopen(req, timeout=PREFLIGHT_TIMEOUT_S) as resp:  # noqa: S310 - http(s) only
            return resp.status, resp.read(4096).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(2000).decode("utf-8", "replace")
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        return None, str(getattr(exc, "reason", exc))


def check_source(source: ModelSource) -> list[str]:
    """Preflight of a real source: its key is set and the endpoint answers a cheap authenticated
    request (model lookup where the API has one). Each problem says how to fix it; the key is
    never part of a message."""
    if source.is_scripted:
        return []
    info = source.info
    key = source.key()
    if info.key_required and not key:
        return [f"--model {source.spec}: set {info.key_env} in the environment (the key is handed to the "
                "trial's recording proxy in memory only; it is never written to disk or shown to the agent)"]
    model = quote(source.model, safe="")
    if source.provider == "gemini":
        url, headers = f"{source.root}/v1beta/models/{model}", {"x-goog-api-key": key}
    elif source.provider == "anthropic":
        url, headers = f"{source.root}/v1/models/{model}", {"x-api-key": key, "anthropic-version": "2023-06-01"}
    elif source.provider == "openai":
        url, headers = f"{source.root}/v1/models/{model}", {"Authorization": f"Bearer {key}"}
    elif source.provider == "openrouter":
        url, headers = f"{source.root}/api/v1/key", {"Authorization": f"Bearer {key}"}
    else:
        url, headers = f"{source.root}/models", ({"Authorization": f"Bearer {key}"} if key else {})
    status, text = _get(url, headers)
    if status is None:
        return [f"--model {source.spec}: endpoint unreachable ({url}: {text}); start the server or fix the URL"]
    if status >= 400:
        kind = class_for_message(text) if status == 400 else None
        kind = kind or class_for_status(status)
        hint = {"auth": f"check {info.key_env}", "model_not_found": "check the model name",
                "rate_limit": "wait or raise the quota"}.get(kind, "see the message")
        return [f"--model {source.spec}: {url} answered HTTP {status} ({kind}): {text.strip()[:300]}; {hint}"]
    return []


def source_problems(source: ModelSource, agent_protocols: dict[str, str]) -> list[str]:
    """Everything that stops a real source from serving these agents ({agent name: wire
    protocol}): a protocol pair the proxy cannot serve, a missing key, an endpoint that does
    not answer. Empty for scripted sources."""
    if source.is_scripted:
        return []
    problems = []
    for name, protocol in agent_protocols.items():
        try:
            source.route(protocol)
        except ModelSourceError as exc:
            problems.append(f"{name}: {exc}")
    return problems + check_source(source)
