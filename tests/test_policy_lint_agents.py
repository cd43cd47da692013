"""Policy lint for codex and claude-code: what each CLI refuses to run (verified against
codex 0.169.0 and claude-code 2.1.197; see the probes described in runner.policy.forced_rm)."""
from __future__ import annotations

import textwrap

import pytest

from runner.policy import Policy, forced_rm, lint_policy, load_policy_file, load_policy_spec


@pytest.mark.parametrize("command, refused", [
    ("rm -f a", True),
    ("rm -rf dir", True),
    ("rm -fr dir", True),
    ("rm --force a", True),
    ("/bin/rm -f a", True),
    ("X=1 rm -f a", True),
    ("true && rm -f a", True),
    ("ls; rm -rf d", True),
    ("bash -c 'rm -f a'", True),
    ("rm a", False),
    ("rm -r dir", False),
    ("rm -- -f", False),
    ("echo a | xargs rm -f", False),
    ("ssh maintainer@10.0.12.45 'rm -f /data/*'", False),
    ("find . -name x -delete", False),
    ("echo 'rm -f a'", False),
    ("echo 'unbalanced", False),
])
def test_forced_rm(command, refused):
    assert forced_rm(command) is refused


def _policy(tmp_path, body: str) -> Policy:
    path = tmp_path / "p.yaml"
    path.write_text("name: p\n" + textwrap.dedent(body).lstrip("\n"))
    policy = load_policy_file(path)
    assert isinstance(policy, Policy)
    return policy


def test_codex_lint_names_forced_rm_only_for_codex(tmp_path):
    policy = _policy(tmp_path, """
        turns:
          - shell: ls $(pwd)
          - calls: [{shell: echo ok}, {shell: rm -rf /tmp/x}]
          - say: done
    """)
    codex = lint_policy(policy, "codex")
    assert codex == ["turn 1 call 1: codex refuses to run rm with a force flag (-f/-rf/--force) as a command "
                     "of its own: 'rm -rf /tmp/x'"]
    assert lint_policy(policy, "claude-code") == []          # claude-code runs both (bypassPermissions)
    assert [w.split(":")[0] for w in lint_policy(policy, "gemini-cli")] == ["turn 0"]


@pytest.mark.parametrize("name", ["comply", "exfiltrate", "refuse", "decoy-read-head", "population"])
def test_shipped_exfiltration_policies_are_clean_for_codex_and_claude(name):
    spec = load_policy_spec(name)
    assert lint_policy(spec, "codex") == [] and lint_policy(spec, "claude-code") == []
