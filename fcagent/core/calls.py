"""Canonical function-call records and the text-protocol parser.

Both protocols end in the same `Call` records: the native protocol reads `AIMessage.tool_calls`,
the text protocol parses what the model wrote. A reply *is* a call or it is not one: the whole
reply (surrounding whitespace aside, optionally inside one ```` ``` ```` fence or one
``<tool_call>`` tag) must be one of

* JSON: ``{"name": "add", "arguments": {"a": 1, "b": 2}}`` or a list of such objects; the arguments
  key is ``arguments``, with ``args`` as its one alias, and the OpenAI shape
  ``{"function": {"name": ..., "arguments": ...}}`` is read too;
* Python-call syntax: ``add(a=1, b=2)`` (several calls separated by newlines or ``;``, or a
  ``[f(x=1), g(y=2)]`` list).

A call is never fished out of prose ("I would call add(a=1, b=2)" is an answer in words), and other
keys (a copied schema's ``parameters``) are not arguments. Neither syntax is ever evaluated: JSON
goes through `json`, Python syntax through `ast.parse` and a walk over literal nodes only, so model
output cannot run code.
"""

from __future__ import annotations

import ast
import json
import math
import re
import uuid
from typing import Any

from pydantic import BaseModel, Field

from fcagent.core.records import StepError

__all__ = ["Call", "CallParseError", "parse_calls", "python_literal", "looks_like_call", "format_calls", "schema_error", "calls_error",
           "drop_ungrounded_arguments", "MAX_CALL_TEXT_CHARS", "ARGUMENT_KEYS"]

# Model output longer than this is refused before parsing: a 135M model that loops can emit
# megabytes, and nested structures that deep are never a real call.
MAX_CALL_TEXT_CHARS = 20_000
MAX_NESTING = 20
ARGUMENT_KEYS = ("arguments", "args")  # the documented keys of a JSON call's arguments


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


_WRAPPED = re.compile(r"\A\s*(?:```(?:json|python|tool_call)?\s*(?P<fence>.*?)\s*```|"
                      r"<tool_call>\s*(?P<tag>.*?)\s*(?:</tool_call>)?)\s*\Z", re.DOTALL)
_IDENT_CALL = re.compile(r"[A-Za-z_][\w.]*\s*\(")


def _unwrap(text: str) -> str:
    match = _WRAPPED.match(text)
    if match:
        return (match.group("fence") if match.group("fence") is not None else match.group("tag") or "").strip()
    return text.strip()


def looks_like_call(text: str) -> bool:
    """Whether a reply sets out to be a call (starts like JSON or `name(`), readable or not."""
    body = _unwrap(text) if isinstance(text, str) else ""
    return bool(body) and (body[0] in "{[" or bool(_IDENT_CALL.match(body)))


def parse_calls(text: str) -> list[Call]:
    """Read the call(s) a model's text reply consists of; raises `CallParseError` when it is not one."""
    if not isinstance(text, str):
        raise CallParseError(f"expected text, got {type(text).__name__}")
    if len(text) > MAX_CALL_TEXT_CHARS:
        raise CallParseError(f"reply is {len(text)} characters, over the {MAX_CALL_TEXT_CHARS} limit")
    body = _unwrap(text)
    if not body:
        raise CallParseError("no function call found (empty reply)")
    if body[0] == "[" and _IDENT_CALL.match(body[1:].lstrip()):
        calls = _parse_python_calls(body)  # [f(x=1), g(y=2)]
    elif body[0] in "{[":
        calls = _parse_json_calls(body)
    elif _IDENT_CALL.match(body):
        calls = _parse_python_calls(body)
    else:
        raise CallParseError("no function call found (the reply must be only the call, as JSON)")
    if not calls:
        raise CallParseError("no function call found (an empty list)")
    return calls


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
    present = [k for k in ARGUMENT_KEYS if k in obj]
    args = obj[present[0]] if present else {}
    unknown = sorted(set(obj) - {"name", "function", "type", "id", *ARGUMENT_KEYS})
    if unknown:
        raise CallParseError(f"a call has only `name` and `arguments`; got {', '.join(f'`{k}`' for k in unknown)}")
    if isinstance(args, str):
        try:
            args = _DECODER.decode(args)
        except json.JSONDecodeError as exc:
            raise CallParseError(f"`arguments` of {name} is not JSON: {exc.msg}") from None
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise CallParseError(f"`arguments` of {name} must be an object, got {type(args).__name__}")
    _check_depth(args)
    return Call(name=name, args=args)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: valid JSON, but no number a function can take, nor JSON can write back
        raise CallParseError(f"the number {text[:40]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise CallParseError(f"`{name}` is not a JSON value")


# JSON as fcagent reads calls: numbers must be finite (JSON has no NaN or Infinity to write them back as).
_DECODER = json.JSONDecoder(parse_float=_finite, parse_constant=_no_constant)


def _parse_json_calls(text: str) -> list[Call]:
    try:
        value, end = _DECODER.raw_decode(text)
    except json.JSONDecodeError as exc:
        raise CallParseError(f"invalid JSON: {exc.msg} at character {exc.pos}") from None
    except RecursionError:
        raise CallParseError("JSON nested too deeply") from None
    if text[end:].strip():
        raise CallParseError(f"text after the call (from character {end}); reply with only the call")
    if isinstance(value, list):
        return [_call_from_obj(v) for v in value]
    return [_call_from_obj(value)]


def _literal(node: ast.AST, depth: int = 0) -> Any:
    """A literal node's value: constants, lists, tuples, dicts, sets, unary minus. Nothing else."""
    if depth > MAX_NESTING:
        raise CallParseError(f"arguments nested deeper than {MAX_NESTING} levels")
    if isinstance(node, ast.Constant) and not isinstance(node.value, bytes | complex):
        if isinstance(node.value, float) and not math.isfinite(node.value):
            raise CallParseError("a number out of range")
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


def python_literal(text: str) -> Any:
    """A Python literal's value (`{'a': 1}`, `[1, -2.5]`, `None`), read by the same walk over literal nodes
    that call arguments go through: never evaluated. CallParseError if it is anything else."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise CallParseError("not a Python literal") from None
    return _literal(tree.body)


def _dotted_name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted_name(node.value)}.{node.attr}"
    raise CallParseError("the called thing must be a (dotted) function name")


def _parse_python_calls(text: str) -> list[Call]:
    try:
        tree = ast.parse(text, mode="exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise CallParseError("Python-style call does not parse (reply with only the call)") from None
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


def format_calls(calls: list[Call]) -> str:
    """The text-protocol rendering of calls (what a teacher writes and the parser reads back)."""
    objs = [{"name": c.name, "arguments": c.args} for c in calls]
    return json.dumps(objs[0] if len(objs) == 1 else objs, ensure_ascii=False)


def functions_by_name(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The offered functions by name, from OpenAI-style schemas (`{"type": "function", "function": {...}}`)
    or bare function docs."""
    return {t.get("function", t).get("name"): t.get("function", t) for t in tools}


def _spoken(text: str) -> str:
    return " ".join(text.split()).casefold()


_MONTHS = {name: number for number, names in enumerate(
    [("january", "jan"), ("february", "feb"), ("march", "mar"), ("april", "apr"), ("may",), ("june", "jun"),
     ("july", "jul"), ("august", "aug"), ("september", "sep", "sept"), ("october", "oct"),
     ("november", "nov"), ("december", "dec")], start=1) for name in names}
_MONTH = "(" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_DAY = r"(\d{1,2})(?:st|nd|rd|th)?"
_YEAR = r"(?:,?\s+(\d{4}))?"
# A date written with digits: 2023-04-25 (also with / or .), or 04/25/2023 — an argument value, or in the text.
_DIGIT_DATES = ((r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})", ("year", "month", "day")),
                (r"(\d{1,2})/(\d{1,2})/(\d{4})", ("month", "day", "year")))
_VALUE_DATES = tuple((re.compile(pattern), order) for pattern, order in _DIGIT_DATES)
# ... and as people write it too: "April 25th, 2023", "25 April 2023", "the 25th of April".
_TEXT_DATES = (
    (re.compile(rf"\b{_MONTH}\s+{_DAY}\b{_YEAR}"), ("month", "day", "year")),
    (re.compile(rf"\b{_DAY}\s+(?:of\s+)?{_MONTH}{_YEAR}"), ("day", "month", "year")),
    *((re.compile(rf"\b{pattern}\b"), order) for pattern, order in _DIGIT_DATES),
)


def _date(match: re.Match[str], order: tuple[str, str, str]) -> tuple[int | None, int, int]:
    """(year or None, month, day) from a match whose groups are named by `order`."""
    parts = dict(zip(order, match.groups(), strict=True))
    month = _MONTHS.get(parts["month"]) or (int(parts["month"]) if parts["month"].isdigit() else 0)
    return (int(parts["year"]) if parts["year"] else None, month, int(parts["day"]))


def _value_date(value: str) -> tuple[int | None, int, int] | None:
    """(year, month, day) when `value` is nothing but a date written with digits."""
    for pattern, order in _VALUE_DATES:
        match = pattern.fullmatch(value.strip())
        if match:
            return _date(match, order)
    return None


def _stated_dates(said: str) -> list[tuple[int | None, int, int]]:
    """Every date `said` (casefolded) writes, in words or digits: (year or None, month, day)."""
    return [_date(match, order) for pattern, order in _TEXT_DATES for match in pattern.finditer(said)]


def drop_ungrounded_arguments(calls: list[Call], tools: list[dict[str, Any]], conversation: str) -> list[Call]:
    """`calls` with every optional string argument whose value `conversation` never states removed, so
    the function's own default applies. A small model fills optional parameters with values it invents
    (`case_type="civil"` for "lawsuits against Google"); a value the user or a tool result wrote is kept
    (case and spacing aside), and so is a date written with digits that the conversation states in any
    common form ("2023-04-25" for "April 25th 2023", or for "April 25" with no year said). Required
    arguments, non-string values and calls to functions not in `tools` are left alone; a call that
    loses nothing is returned as the same object."""
    said = _spoken(conversation)
    stated_dates: list[tuple[int | None, int, int]] | None = None  # parsed once, when a value is a date

    def stated(value: str) -> bool:
        nonlocal stated_dates
        if _spoken(value) in said:
            return True
        date = _value_date(value)
        if date is None:
            return False
        if stated_dates is None:
            stated_dates = _stated_dates(said)
        year, month, day = date
        return any(m == month and d == day and y in (None, year) for y, m, d in stated_dates)

    by_name = functions_by_name(tools)
    kept: list[Call] = []
    for call in calls:
        fn = by_name.get(call.name)
        required = set(((fn or {}).get("parameters") or {}).get("required") or [])
        args = {k: v for k, v in call.args.items()
                if fn is None or k in required or not isinstance(v, str) or stated(v)}
        kept.append(call if len(args) == len(call.args) else call.model_copy(update={"args": args}))
    return kept


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


def calls_error(calls: list[dict[str, Any]], tools: list[dict[str, Any]]) -> StepError | None:
    """The first reason `calls` ({"name", "args"}) do not fit the offered tools (OpenAI-style
    schemas), as a typed `StepError` (`unknown_function` or `invalid_arguments`); None when they fit."""
    by_name = functions_by_name(tools)
    for call in calls:
        fn = by_name.get(call["name"])
        if fn is None:
            return StepError(kind="unknown_function", detail=f"{call['name']} is not one of "
                             f"{', '.join(str(n) for n in by_name) or 'no functions'}", call=call["name"])
        why = schema_error(fn.get("parameters") or {}, call.get("args") or {})
        if why:
            return StepError(kind="invalid_arguments", detail=why, call=call["name"])
    return None
