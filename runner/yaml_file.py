"""YAML files validated by pydantic models, with every error naming the file and the line
(policies, grids). ``error`` is the exception class to raise; it is called as
``error(message, path=..., line=...)``."""
from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import BaseModel, ValidationError


class YamlFileError(ValueError):
    """A YAML file that cannot be used. The message says where and why."""

    def __init__(self, message: str, *, path: Path | str | None = None, line: int | None = None):
        super().__init__(message)
        self.path = Path(path) if path is not None else None
        self.line = line


def short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def compose_yaml(text: str, path: Path, error: type[YamlFileError] = YamlFileError) -> yaml.Node:
    """The node tree of ``text`` (line numbers kept); syntax errors and empty files raise ``error``."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or "invalid YAML"
        if exc.context:
            problem += f" ({exc.context}"
            if exc.context_mark is not None and exc.context_mark.line + 1 != line:
                problem += f" that starts at line {exc.context_mark.line + 1}"
            problem += ")"
        where = f"{path}:{line}" if line else str(path)
        raise error(f"{where}: YAML syntax error: {problem}", path=path, line=line) from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: YAML error: {exc}", path=path) from None
    if root is None:
        raise error(f"{path}:1: the file is empty", path=path, line=1)
    return root


def check_duplicate_keys(node: yaml.Node, path: Path, error: type[YamlFileError] = YamlFileError) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value)
            line = key.start_mark.line + 1
            if name in seen:
                raise error(f"{path}:{line}: duplicate key {name!r} (first at line {seen[name]})",
                            path=path, line=line)
            seen[name] = line
            check_duplicate_keys(value, path, error)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            check_duplicate_keys(item, path, error)


def child_node(node: yaml.Node | None, part: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if str(key.value) == str(part):
                return value
    elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return node.value[part]
    return None


def _key_node(node: yaml.Node | None, part: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, _value in node.value:
            if str(key.value) == str(part):
                return key
    return None


def _locate(root: yaml.Node, loc: tuple[Any, ...], *, key: bool) -> int:
    """1-based line of the node at ``loc`` (of the key itself when ``key``), or of the deepest
    ancestor found."""
    node = root
    parts = list(loc)
    last = parts.pop() if (key and parts) else None
    for part in parts:
        child = child_node(node, part)
        if child is None:
            return node.start_mark.line + 1
        node = child
    if last is not None:
        key_node = _key_node(node, last)
        if key_node is not None:
            return key_node.start_mark.line + 1
    return node.start_mark.line + 1


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at ``loc`` (for listing allowed keys)."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int):
            args = typing.get_args(current)
            if typing.get_origin(current) is list and args:
                current = args[0]
                continue
            return None
        if isinstance(current, type) and issubclass(current, BaseModel) and part in current.model_fields:
            current = current.model_fields[part].annotation
            continue
        return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _loc_text(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def validate_yaml(model: type[BaseModel], data: Any, root: yaml.Node, path: Path, kind: str,
                  error: type[YamlFileError] = YamlFileError) -> Any:
    """``model.model_validate(data)``; every problem is reported as ``path:line: where: what``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems: list[tuple[int, str]] = []
        for err in exc.errors(include_url=False):
            loc = tuple(err["loc"])
            if err["type"] == "extra_forbidden":
                line = _locate(root, loc, key=True)
                owner = _model_at(model, loc[:-1])
                allowed = f"; allowed here: {', '.join(owner.model_fields)}" if owner else ""
                where = _loc_text(loc[:-1])
                problems.append((line, f"{where}: unknown key {loc[-1]!r}{allowed}"))
                continue
            line = _locate(root, loc, key=False)
            msg = err["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, "):]
            if err["type"].endswith("_type") or err["type"] in ("missing", "literal_error"):
                if err["type"] != "missing":
                    got = err.get("input")
                    msg += f" (got {type(got).__name__} {short_repr(got)})"
                else:
                    msg = f"missing required key {loc[-1]!r}" if loc else msg
                    loc = loc[:-1]
            problems.append((line, f"{_loc_text(loc)}: {msg}"))
        problems.sort(key=lambda p: p[0])
        lines = [f"{path}:{line}: {text}" for line, text in problems]
        if len(lines) == 1:
            message = f"invalid {kind} file: {lines[0]}"
        else:
            message = f"invalid {kind} file {path} ({len(lines)} problems):\n  " + "\n  ".join(lines)
        raise error(message, path=path, line=problems[0][0] if problems else None) from None
