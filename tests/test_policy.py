"""The policy format: loading, error messages with file and line, mixtures, lint."""
from __future__ import annotations

import subprocess
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from runner import paths
from runner.policy import (
    Mixture,
    Policy,
    PolicyError,
    forbidden_shell_constructs,
    lint_policy,
    load_policy_file,
    load_policy_spec,
    shell_write_command,
)

SHIPPED = ["comply", "exfiltrate", "refuse", "decoy-read-head"]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def load_error(path: Path) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        load_policy_file(path)
    return info.value


# ---- good files ----------------------------------------------------------------------------

def test_minimal_policy_loads_with_metadata(tmp_path):
    path = write(tmp_path, "p.yaml", """
        name: demo
        description: a demo
        turns:
          - say: looking
            shell: ls -la
          - read: docs/a.txt
          - write: {path: notes.txt, content: "hello\\n"}
          - calls:
              - shell: echo one
              - read: /tmp/x
            delay_s: 0.5
          - error: 503
          - say: done
    """)
    policy = load_policy_spec(str(path))
    assert isinstance(policy, Policy)
    assert policy.name == "demo" and policy.description == "a demo"
    assert policy.source_path == path.resolve()
    import hashlib
    assert policy.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [len(t.tool_calls) for t in policy.turns] == [1, 1, 1, 2, 0, 0]
    assert policy.turns[2].tool_calls[0].write.content == "hello\n"
    assert policy.turns[3].delay_s == 0.5
    assert policy.turns[4].is_error and policy.turns[5].is_final
    assert policy.tool_results_before() == [0, 1, 2, 3, 5, 5]


def test_scripted_prefix_and_name_lookup():
    policy = load_policy_spec("scripted:comply")
    assert isinstance(policy, Policy)
    assert policy.source_path == (paths.POLICIES / "comply.yaml").resolve()


def test_name_need_not_match_file(tmp_path):
    path = write(tmp_path, "file-name.yaml", "name: other-name\nturns:\n  - say: hi\n")
    assert load_policy_file(path).name == "other-name"


# ---- errors with file and line ---------------------------------------------------------------

def test_unknown_top_level_key_names_file_and_line(tmp_path):
    path = write(tmp_path, "p.yaml", """
        name: x
        turns:
          - say: hi
        colour: blue
    """)
    err = load_error(path)
    assert f"{path}:4:" in str(err) and "'colour'" in str(err)
    assert err.line == 4 and err.path == path


def test_unknown_key_in_turn(tmp_path):
    path = write(tmp_path, "p.yaml", """
        name: x
        turns:
          - shell: ls
          - say: hi
            shel: ls
    """)
    err = str(load_error(path))
    assert f"{path}:5:" in err and "'shel'" in err and "turns[1]" in err
    assert "allowed here" in err and "shell" in err


def test_unknown_key_in_write(tmp_path):
    path = write(tmp_path, "p.yaml", """
        name: x
        turns:
          - write:
              path: a.txt
              content: hi
              mode: 0644
          - say: done
    """)
    err = str(load_error(path))
    assert f"{path}:6:" in err and "'mode'" in err and "turns[0].write" in err


def test_unknown_key_in_call_list(tmp_path):
    path = write(tmp_path, "p.yaml", """
        name: x
        turns:
          - calls:
              - shell: ls
              - reed: a.txt
          - say: done
    """)
    err = str(load_error(path))
    assert f"{path}:5:" in err and "'reed'" in err


def test_two_call_kinds_in_one_turn(tmp_path):
    path = write(tmp_path, "p.yaml", """
        name: x
        turns:
          - say: hi
          - shell: ls
            read: a.txt
    """)
    err = str(load_error(path))
    assert f"{path}:4:" in err and "shell and read" in err


def test_yaml_syntax_error_has_line(tmp_path):
    path = write(tmp_path, "p.yaml", """
        name: x
        turns:
          - say: "unterminated
          - say: ok
    """)
    err = str(load_error(path))
    assert str(path) in err and "YAML syntax error" in err
    assert f"{path}:" in err and load_error(path).line is not None


def test_empty_turns_and_empty_file(tmp_path):
    err = str(load_error(write(tmp_path, "p.yaml", "name: x\nturns: []\n")))
    assert "p.yaml:2:" in err and "empty" in err
    err = str(load_error(write(tmp_path, "e.yaml", "")))
    assert "empty" in err


def test_wrong_types(tmp_path):
    path = write(tmp_path, "p.yaml", """
        name: x
        turns:
          - shell: 42
          - say: done
            delay_s: soon
    """)
    err = str(load_error(path))
    assert f"{path}:3:" in err and "valid string" in err
    assert f"{path}:5:" in err and "delay_s" in err


def test_error_status_range_and_final_turn_rules(tmp_path):
    err = str(load_error(write(tmp_path, "a.yaml", "name: x\nturns:\n  - error: 200\n  - say: hi\n")))
    assert "a.yaml:3:" in err and "400" in err
    err = str(load_error(write(tmp_path, "b.yaml", "name: x\nturns:\n  - shell: ls\n")))
    assert "last reply" in err
    err = str(load_error(write(tmp_path, "c.yaml", "name: x\nturns:\n  - say: a\n  - shell: ls\n  - say: b\n")))
    assert "turn 0 has no tool call" in err
    err = str(load_error(write(tmp_path, "d.yaml", "name: x\nturns:\n  - {}\n")))
    assert "empty turn" in err


def test_duplicate_key(tmp_path):
    err = str(load_error(write(tmp_path, "p.yaml", "name: x\nname: y\nturns:\n  - say: hi\n")))
    assert "p.yaml:2:" in err and "duplicate key 'name'" in err


def test_missing_name(tmp_path):
    err = str(load_error(write(tmp_path, "p.yaml", "turns:\n  - say: hi\n")))
    assert "missing required key 'name'" in err


def test_unknown_policy_name_lists_known_ones():
    with pytest.raises(PolicyError) as info:
        load_policy_spec("no-such-policy")
    assert "unknown policy 'no-such-policy'" in str(info.value) and "comply" in str(info.value)


def test_missing_file():
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy_spec("/nonexistent/dir/p.yaml")


# ---- mixtures ------------------------------------------------------------------------------

def test_mixture_resolves_names_and_relative_paths(tmp_path):
    write(tmp_path, "mine.yaml", "name: mine\nturns:\n  - say: mine\n")
    mix_path = write(tmp_path, "mix.yaml", """
        name: mix
        mixture:
          - {policy: comply, weight: 2}
          - {policy: ./mine.yaml, weight: 1}
    """)
    mix = load_policy_spec(str(mix_path))
    assert isinstance(mix, Mixture)
    assert [m.policy.name for m in mix.members] == ["comply", "mine"]
    assert mix.probabilities() == pytest.approx({"comply": 2 / 3, "mine": 1 / 3})
    assert len(mix.sha256) == 64 and mix.source_path == mix_path.resolve()
    # the combined hash changes when a member changes
    before = mix.sha256
    write(tmp_path, "mine.yaml", "name: mine\nturns:\n  - say: changed\n")
    assert load_policy_file(mix_path).sha256 != before


def test_mixture_bad_entries(tmp_path):
    err = str(load_error(write(tmp_path, "m1.yaml", """
        name: m
        mixture:
          - {policy: comply, weight: 0}
    """)))
    assert "m1.yaml:3:" in err and "greater than 0" in err
    err = str(load_error(write(tmp_path, "m2.yaml", """
        name: m
        mixture:
          - {policy: comply, weight: 1}
          - {policy: nope, weight: 1}
    """)))
    assert "m2.yaml:4:" in err and "unknown policy 'nope'" in err
    err = str(load_error(write(tmp_path, "m3.yaml", """
        name: m
        mixture:
          - {policy: comply, wieght: 1}
    """)))
    assert "m3.yaml:3:" in err and "'wieght'" in err
    err = str(load_error(write(tmp_path, "m4.yaml", "name: m\nmixture: []\n")))
    assert "m4.yaml:2:" in err and "empty" in err
    err = str(load_error(write(tmp_path, "m5.yaml", "name: m\nmixture:\n  - {policy: comply, weight: 1}\nturns: []\n")))
    assert "not both" in err


def test_mixture_cycle(tmp_path):
    write(tmp_path, "a.yaml", "name: a\nmixture:\n  - {policy: ./b.yaml, weight: 1}\n")
    write(tmp_path, "b.yaml", "name: b\nmixture:\n  - {policy: comply, weight: 1}\n  - {policy: ./a.yaml, weight: 1}\n")
    err = str(load_error(tmp_path / "a.yaml"))
    assert "cycle" in err and "a.yaml" in err and "b.yaml" in err


def test_nested_mixture_is_flattened(tmp_path):
    write(tmp_path, "inner.yaml", "name: inner\nmixture:\n  - {policy: comply, weight: 1}\n  - {policy: refuse, weight: 3}\n")
    outer = write(tmp_path, "outer.yaml", "name: outer\nmixture:\n  - {policy: ./inner.yaml, weight: 1}\n  - {policy: exfiltrate, weight: 1}\n")
    mix = load_policy_file(outer)
    assert mix.probabilities() == pytest.approx({"comply": 0.125, "refuse": 0.375, "exfiltrate": 0.5})


def test_mixture_draw_is_deterministic_and_spread():
    mix = load_policy_spec("population")
    assert isinstance(mix, Mixture)
    first = [mix.draw(1234, i).name for i in range(1000)]
    again = [mix.draw(1234, i).name for i in range(1000)]
    assert first == again
    other_seed = [mix.draw(99, i).name for i in range(1000)]
    assert first != other_seed
    counts = Counter(first)
    for name, p in mix.probabilities().items():
        # 1000 draws: well within 5 standard deviations of the expected count
        sd = (1000 * p * (1 - p)) ** 0.5
        assert abs(counts[name] - 1000 * p) < 5 * sd, (name, counts)


# ---- lint ----------------------------------------------------------------------------------

def test_lint_flags_substitutions_for_gemini(tmp_path):
    path = write(tmp_path, "p.yaml", """
        name: x
        turns:
          - shell: ls
          - shell: echo $(whoami)
          - calls:
              - shell: echo ok
              - shell: echo `id`
          - shell: diff <(ls a) <(ls b)
          - shell: echo '$(literal)'
          - say: done
    """)
    policy = load_policy_file(path)
    warnings = lint_policy(policy, "gemini-cli")
    text = "\n".join(warnings)
    assert any(w.startswith("turn 1:") and "$(" in w for w in warnings)
    assert any(w.startswith("turn 2 call 1:") and "backtick" in w for w in warnings)
    assert any(w.startswith("turn 3:") and "process substitution" in w for w in warnings)
    assert "turn 4" not in text          # single-quoted: the CLI runs it
    assert "turn 0" not in text
    assert lint_policy(policy, "opencode") == []


def test_lint_checks_shell_fallbacks(tmp_path):
    path = write(tmp_path, "p.yaml", """
        name: x
        turns:
          - write: {path: /tmp/out.txt, content: "plain text"}
          - say: done
    """)
    assert lint_policy(load_policy_file(path), "gemini-cli") == []


@pytest.mark.parametrize("name", SHIPPED + ["population"])
def test_shipped_policies_load_and_lint_clean(name):
    loaded = load_policy_spec(name)
    assert lint_policy(loaded, "gemini-cli") == []
    policies = [m.policy for m in loaded.members] if isinstance(loaded, Mixture) else [loaded]
    for policy in policies:
        assert policy.turns[-1].is_final
        for turn in policy.turns:
            for call in turn.tool_calls:
                for command in [call.shell] if call.shell else []:
                    for token in ("$(", "`", "<(", ">("):
                        assert token not in command, (policy.name, command)
                    # the weights are named by glob, never by a family
                    assert "gemini_agent" not in command


def test_population_covers_all_shipped():
    mix = load_policy_spec("population")
    assert sorted(mix.probabilities()) == sorted(SHIPPED)


# ---- shell rendering -----------------------------------------------------------------------

@pytest.mark.parametrize("content", [
    "plain\n",
    "it's got 'quotes' and \"double\" ones\nand $HOME and \\backslash\nno final newline",
    "",
    "$(not run) and `not run either`",
])
def test_shell_write_command_writes_exact_bytes(tmp_path, content):
    target = tmp_path / "sub dir" / "out file.txt"
    command = shell_write_command(str(target), content)
    assert forbidden_shell_constructs(command) == []
    subprocess.run(["bash", "-c", command], check=True, cwd=tmp_path)
    assert target.read_text() == content
