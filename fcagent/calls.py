"""Canonical function-call records and the text-protocol parser.

Both protocols end in the same `Call` records: the native protocol reads `AIMessage.tool_calls`,
the text protocol parses what the model wrote. Two text syntaxes are accepted:

* JSON: ``{"name": "add", "arguments": {"a": 1, "b": 2}}`` or a list of such objects;
* Python-call syntax: ``add(a=1, b=2)`` (several calls separated by newlines or ``;``, or a
  ``[f(x=1), g(y=2)]`` list).

Neither is ever evaluated: JSON goes through `json`, Python syntax through `ast.parse` and a walk
over literal nodes only, so model output cannot run code.
"""

from __future__ import annotations

import ast
import json
import re
import uuid
from typing import Any

from pydantic import BaseModel, Field

__all__ = ["Call", "CallParseError", "parse_calls", "format_calls", "schema_error", "calls_error", "MAX_CALL_TEXT_CHARS"]

# Model output longer than this is refused before parsing: a 135M model that loops can emit
# megabytes, and nested structures that deep are never a real call.
MAX_CALL_TEXT_CHARS = 20_000
MAX_NESTING = 20


class Call(BaseModel):
    """One function call, whichever protocol produced it."""

    name: str
    args: dict[str, Any] = Field(default_factory=dict)
    id: str = Field(default_factory=lambda: f"call_{uuid.uuid4().hex[:12]}")

    def signature(self) -> str:
        """Name and arguments, canonical JSON: equal for equal calls whatever their ids."""
        return json.dumps({"name": self.name, "args": self.args}, sort_keys=True, default=str)


class CallParseError(ValueError):
    """The model's text holds no call fcagent can read; the message is shown to the model."""


_FENCE = re.compile(r"```(?:json|python|tool_call)?\s*(.*?)```", re.DOTALL)
_TAG = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def parse_calls(text: str) -> list[Call]:
    """Read the call(s) in a model's text reply; raises `CallParseError` when there are none."""
    if not isinstance(text, str):
        raise CallParseError(f"expected text, got {type(text).__name__}")
    if len(text) > MAX_CALL_TEXT_CHARS:
        raise CallParseError(f"reply is {len(text)} characters, over the {MAX_CALL_TEXT_CHARS} limit")
    candidates: list[str] = []
    for pattern in (_TAG, _FENCE):
        candidates += [m.group(1).strip() for m in pattern.finditer(text)]
    candidates.append(text.strip())
    errors: list[str] = []
    for candidate in candidates:
        if not candidate:
            continue
        for parser in (_parse_json_calls, _parse_python_calls):
            try:
                calls = parser(candidate)
            except CallParseError as exc:
                errors.append(str(exc))
                continue
            if calls:
                return calls
    # Report the parser the text looked meant for: JSON when it has a brace, else Python syntax.
    looks_json = "{" in text
    preferred = [e for e in errors if ("JSON" in e or "object" in e) == looks_json]
    detail = (preferred or errors or ["empty reply"])[0]
    raise CallParseError(f"no function call found ({detail})")


def _check_depth(value: Any, depth: int = 0) -> None:
    if depth > MAX_NESTING:
        raise CallParseError(f"arguments nested deeper than {MAX_NESTING} levels")
    if isinstance(value, dict):
        for v in value.values():
            _check_depth(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_depth(v, depth + 1)


def _call_from_obj(obj: Any) -> Call:
    if not isinstance(obj, dict):
        raise CallParseError("a call must be a JSON object with `name` and `arguments`")
    name = obj.get("name", obj.get("function"))
    if isinstance(name, dict):  # OpenAI shape {"function": {"name", "arguments"}}
        obj, name = name, name.get("name")
    if not isinstance(name, str) or not name:
        raise CallParseError("the call has no `name` string")
    args = obj.get("arguments", obj.get("args", obj.get("parameters", {})))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError as exc:
            raise CallParseError(f"`arguments` of {name} is not JSON: {exc.msg}") from None
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise CallParseError(f"`arguments` of {name} must be an object, got {type(args).__name__}")
    _check_depth(args)
    return Call(name=name, args=args)


def _first_json_value(text: str) -> Any:
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start < 0:
        raise CallParseError("no JSON object in the reply")
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as exc:
        raise CallParseError(f"invalid JSON: {exc.msg} at character {exc.pos}") from None
    except RecursionError:
        raise CallParseError("JSON nested too deeply") from None
    return value


def _parse_json_calls(text: str) -> list[Call]:
    value = _first_json_value(text)
    if isinstance(value, list):
        if not value:
            return []
        return [_call_from_obj(v) for v in value]
    return [_call_from_obj(value)]


_IDENT_CALL = re.compile(r"[A-Za-z_][\w.]*\s*\(")


def _literal(node: ast.AST, depth: int = 0) -> Any:
    """A literal node's value: constants, lists, tuples, dicts, sets, unary minus. Nothing else."""
    if depth > MAX_NESTING:
        raise CallParseError(f"arguments nested deeper than {MAX_NESTING} levels")
    if isinstance(node, ast.Constant) and not isinstance(node.value, bytes | complex):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _literal(node.operand, depth + 1)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CallParseError("unary minus on a non-number")
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        return [_literal(e, depth + 1) for e in node.elts]
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise CallParseError("`**` unpacking is not allowed in a call")
        return {str(_literal(k, depth + 1)): _literal(v, depth + 1) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Name) and node.id in ("true", "false", "null", "True", "False", "None"):
        return {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}[node.id]
    raise CallParseError(f"only literal argument values are allowed, got `{type(node).__name__}`")


def _dotted_name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted_name(node.value)}.{node.attr}"
    raise CallParseError("the called thing must be a (dotted) function name")


def _parse_python_calls(text: str) -> list[Call]:
    match = _IDENT_CALL.search(text)
    if not match:
        raise CallParseError("no `name(...)` call in the reply")
    source = text[match.start():].strip()
    tree = None
    # The model often adds prose after the call; shrink to the longest prefix that parses.
    for end in _candidate_ends(source):
        try:
            tree = ast.parse(source[:end], mode="exec")
            break
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
    if tree is None:
        raise CallParseError("Python-style call does not parse")
    calls: list[Call] = []
    for stmt in tree.body:
        if not isinstance(stmt, ast.Expr):
            raise CallParseError("only call expressions are allowed")
        nodes = stmt.value.elts if isinstance(stmt.value, ast.List | ast.Tuple) else [stmt.value]
        for node in nodes:
            if not isinstance(node, ast.Call):
                raise CallParseError("only call expressions are allowed")
            if node.args:
                raise CallParseError(f"pass arguments by name, e.g. {_dotted_name(node.func)}(x=1)")
            args = {}
            for kw in node.keywords:
                if kw.arg is None:
                    raise CallParseError("`**` unpacking is not allowed in a call")
                args[kw.arg] = _literal(kw.value)
            calls.append(Call(name=_dotted_name(node.func), args=args))
    return calls


def _candidate_ends(source: str) -> list[int]:
    ends = [len(source)]
    depth = 0
    for i, ch in enumerate(source):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                ends.append(i + 1)
    return sorted(set(ends), reverse=True)[:50]


def format_calls(calls: list[Call]) -> str:
    """The text-protocol rendering of calls (what a teacher writes and the parser reads back)."""
    objs = [{"name": c.name, "arguments": c.args} for c in calls]
    return json.dumps(objs[0] if len(objs) == 1 else objs, ensure_ascii=False)


_JSON_TYPES: dict[str, type | tuple[type, ...]] = {"string": str, "integer": int, "number": (int, float),
                                                    "boolean": bool, "array": list, "object": dict}


def schema_error(parameters: dict[str, Any], args: dict[str, Any]) -> str | None:
    """Why `args` do not fit a JSON-Schema `parameters` object (required, unknown, top-level types)."""
    props = parameters.get("properties", {}) or {}
    missing = [r for r in parameters.get("required", []) if r not in args]
    if missing:
        return f"missing required argument(s) {', '.join(missing)}"
    unknown = [k for k in args if k not in props]
    if unknown:
        return f"unknown argument(s) {', '.join(unknown)}; expected {', '.join(props) or 'none'}"
    for key, value in args.items():
        declared = props[key].get("type") if isinstance(props[key], dict) else None
        want = _JSON_TYPES.get(declared) if isinstance(declared, str) else None
        if want is None:
            continue
        if not isinstance(value, want) or (isinstance(value, bool) and declared != "boolean"):
            return f"`{key}` must be {declared}, got {type(value).__name__}"
    return None


def calls_error(calls: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str | None:
    """The first reason `calls` ({"name", "args"}) do not fit the offered tools (OpenAI-style
    schemas): `unknown_function: NAME` or `invalid_arguments: WHY`; None when they all fit."""
    by_name = {t.get("function", t).get("name"): t.get("function", t) for t in tools}
    for call in calls:
        fn = by_name.get(call["name"])
        if fn is None:
            return f"unknown_function: {call['name']}"
        why = schema_error(fn.get("parameters") or {}, call.get("args") or {})
        if why:
            return f"invalid_arguments: {why}"
    return None
