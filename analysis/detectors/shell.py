"""A small, forgiving parser of POSIX-shell command text into pipelines of simple commands.

It is used on command lines recorded by the harness (remote commands of SSH sessions, the
argument of `bash -c`, the remote part of `ssh HOST '...'`) so the detectors can reason about
what each command did. It understands quoting (single, double, `$'...'`, backslashes), line
continuations, comments, the control operators (`;` `&&` `||` `&` `|` `|&` newlines, parentheses),
redirections with optional fd numbers (`<` `>` `>>` `2>` `&>` `>|` `<>` `<&` `>&` `<<<`) and
here-documents (`<<EOF` / `<<-EOF`: the body becomes the redirection's target, so it is never
mistaken for commands). Command substitutions (`$(...)`, backticks) stay verbatim inside their
word. It does no expansion (variables, globs, braces); the caller decides what to do with them.
It never raises on malformed input: unterminated quotes simply run to the end of the text.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Words that start or end compound commands; dropped when they appear in command position.
KEYWORDS = {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "!", "{", "}",
            "time", "esac", "in"}
_SEPARATORS = {";", ";;", "\n", "&&", "||", "&", "(", ")"}
_PIPES = {"|", "|&"}
_REDIR_OPS = ("<<<", "<<-", "<<", "<&", "<>", ">>", ">&", ">|", "<", ">")


@dataclass
class Redirect:
    op: str          # e.g. "<", ">", ">>", "2>", "&>", "<<" (here-doc), "<<<" (here-string)
    target: str      # file name, fd, or the here-doc / here-string text

    @property
    def fd_out(self) -> bool:
        """Redirects standard output (or both outputs)."""
        op = self.op
        return op in (">", ">>", ">|", "&>", "&>>", "1>", "1>>", "1>|") or (
            op in (">&",) and not self.target.isdigit())

    @property
    def fd_in(self) -> bool:
        return self.op in ("<", "0<", "<>")

    @property
    def text_in(self) -> bool:
        return self.op in ("<<", "<<-", "<<<", "0<<", "0<<<")


@dataclass
class Command:
    argv: list[str]
    redirects: list[Redirect] = field(default_factory=list)

    @property
    def text(self) -> str:
        parts = [_show(a) for a in self.argv]
        for r in self.redirects:
            parts.append(f"{r.op}{_show(r.target) if not r.text_in else '...'}")
        return " ".join(parts)


Pipeline = list[Command]


def _show(word: str) -> str:
    if word and all(c.isalnum() or c in "@%+=:,./-_*?[]~$" for c in word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"


_ANSI_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "a": "\a",
                 "b": "\b", "e": "\x1b", "f": "\f", "v": "\v", "0": "\0"}


def tokenize(text: str) -> list[tuple[str, str]]:
    """Tokens as ("W", word) / ("OP", operator) / ("H", here-doc body)."""
    toks: list[tuple[str, str]] = []
    cur: list[str] = []
    in_word = False
    expect_delim: str | None = None                 # "<<" or "<<-" just seen
    heredocs: list[tuple[int, str, bool]] = []      # (token index, delimiter, strip tabs)
    i, n = 0, len(text)

    def flush() -> None:
        nonlocal cur, in_word, expect_delim
        if in_word:
            toks.append(("W", "".join(cur)))
            if expect_delim is not None:
                heredocs.append((len(toks) - 1, toks[-1][1], expect_delim == "<<-"))
                expect_delim = None
        cur, in_word = [], False

    while i < n:
        ch = text[i]
        if ch in " \t":
            flush()
            i += 1
        elif ch == "\n":
            flush()
            toks.append(("OP", "\n"))
            i += 1
            while heredocs:  # here-document bodies start on the next line
                idx, delim, strip = heredocs.pop(0)
                body: list[str] = []
                while i < n:
                    j = text.find("\n", i)
                    line = text[i:] if j < 0 else text[i:j]
                    i = n if j < 0 else j + 1
                    check = line.lstrip("\t") if strip else line
                    if check == delim:
                        break
                    body.append(check)
                toks[idx] = ("H", "\n".join(body) + ("\n" if body else ""))
        elif ch == "#" and not in_word:
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif ch == "\\":
            if i + 1 < n and text[i + 1] == "\n":
                i += 2
            else:
                if i + 1 < n:
                    cur.append(text[i + 1])
                in_word = True
                i += 2
        elif ch == "'":
            j = text.find("'", i + 1)
            j = n if j < 0 else j
            cur.append(text[i + 1:j])
            in_word = True
            i = j + 1
        elif ch == '"':
            i += 1
            while i < n and text[i] != '"':
                c = text[i]
                if c == "\\" and i + 1 < n and text[i + 1] in '"\\$`\n':
                    if text[i + 1] != "\n":
                        cur.append(text[i + 1])
                    i += 2
                    continue
                if c == "$" and text.startswith("$(", i):
                    j = _match_paren(text, i + 1)
                    cur.append(text[i:j])
                    i = j
                    continue
                cur.append(c)
                i += 1
            i += 1
            in_word = True
        elif ch == "$" and text.startswith("$'", i):
            i += 2
            while i < n and text[i] != "'":
                c = text[i]
                if c == "\\" and i + 1 < n:
                    cur.append(_ANSI_ESCAPES.get(text[i + 1], "\\" + text[i + 1]))
                    i += 2
                    continue
                cur.append(c)
                i += 1
            i += 1
            in_word = True
        elif ch == "$" and text.startswith("$(", i):
            j = _match_paren(text, i + 1)
            cur.append(text[i:j])
            in_word = True
            i = j
        elif ch == "`":
            j = text.find("`", i + 1)
            j = n if j < 0 else j + 1
            cur.append(text[i:j])
            in_word = True
            i = j
        elif ch in "<>":
            prefix = ""
            if in_word and cur and "".join(cur).isdigit():
                prefix, cur, in_word = "".join(cur), [], False
            else:
                flush()
            op = next(o for o in _REDIR_OPS if text.startswith(o, i))
            toks.append(("OP", prefix + op))
            i += len(op)
            if op in ("<<", "<<-"):
                expect_delim = op
        elif ch == "&":
            flush()
            for op in ("&&", "&>>", "&>", "&"):
                if text.startswith(op, i):
                    break
            toks.append(("OP", op))
            i += len(op)
        elif ch == "|":
            flush()
            op = "||" if text.startswith("||", i) else "|&" if text.startswith("|&", i) else "|"
            toks.append(("OP", op))
            i += len(op)
        elif ch == ";":
            flush()
            op = ";;" if text.startswith(";;", i) else ";"
            toks.append(("OP", op))
            i += len(op)
        elif ch in "()":
            flush()
            toks.append(("OP", ch))
            i += 1
        else:
            cur.append(ch)
            in_word = True
            i += 1
    flush()
    return toks


def _match_paren(text: str, i: int) -> int:
    """`text[i]` is "("; return the index just past its matching ")" (or the end)."""
    depth, n = 0, len(text)
    quote: str | None = None
    while i < n:
        c = text[i]
        if quote:
            if c == quote:
                quote = None
            elif c == "\\" and quote == '"':
                i += 1
        elif c in "'\"":
            quote = c
        elif c == "\\":
            i += 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return n


def parse(text: str) -> list[Pipeline]:
    """Pipelines (lists of simple commands) in the order they appear. Compound-command
    keywords in command position are dropped, so `if x; then cp a b; fi` yields the pipelines
    `x` and `cp a b`; `for v in a b; do ...` yields a command with argv ["for", "v", "in", "a", "b"]."""
    pipelines: list[Pipeline] = []
    pipeline: Pipeline = []
    cmd = Command([])
    toks = tokenize(text)
    i = 0

    def end_command() -> None:
        nonlocal cmd
        if cmd.argv or cmd.redirects:
            pipeline.append(cmd)
        cmd = Command([])

    def end_pipeline() -> None:
        nonlocal pipeline
        end_command()
        if pipeline:
            pipelines.append(pipeline)
        pipeline = []

    while i < len(toks):
        kind, val = toks[i]
        if kind == "OP":
            if val in _PIPES:
                end_command()
            elif val in _SEPARATORS:
                end_pipeline()
            elif any(c in val for c in "<>"):
                if i + 1 < len(toks) and toks[i + 1][0] in ("W", "H"):
                    cmd.redirects.append(Redirect(val, toks[i + 1][1]))
                    i += 1
            i += 1
            continue
        if not cmd.argv and kind == "W" and val in KEYWORDS and not cmd.redirects:
            i += 1
            continue
        cmd.argv.append(val)
        i += 1
    end_pipeline()
    return pipelines
