"""BFCL v4 single-turn categories: functions come with each problem, calls are checked, never run.

The checker follows BFCL's AST checker rules (see `bfcl_eval/eval_checker/ast_eval/ast_checker.py`
in ShishirPatil/gorilla): exact names, required/unexpected parameters, exact types with int allowed
for float, normalised string comparison, `""` meaning "may be omitted", order-free matching for the
parallel categories, and no call at all for irrelevance.
"""

from __future__ import annotations

import re
from typing import Any

from langchain_core.tools import BaseTool, StructuredTool

from fcagent.calls import Call
from fcagent.tasks._data import find_data_file
from fcagent.tasks.base import DataError, Problem, Task, Verdict, WorkedExample, read_json_records, require

__all__ = ["BfclTask", "check_bfcl", "to_json_schema", "CATEGORIES"]

CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple", "live_simple", "live_multiple",
              "irrelevance")

_GORILLA_TO_JSON = {"dict": "object", "float": "number", "tuple": "array", "any": "string"}
_PY_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str, "integer": int, "float": float, "number": float, "boolean": bool,
    "array": list, "tuple": list, "dict": dict, "object": dict, "any": str,
}


def to_json_schema(schema: Any) -> Any:
    """BFCL's parameter schema in JSON-Schema types (`dict`→`object`, `float`→`number`, ...)."""
    if isinstance(schema, dict):
        out = {k: to_json_schema(v) for k, v in schema.items()}
        if isinstance(schema.get("type"), str):
            out["type"] = _GORILLA_TO_JSON.get(schema["type"], schema["type"])
        return out
    if isinstance(schema, list):
        return [to_json_schema(v) for v in schema]
    return schema


def _not_executed(**kwargs: Any) -> str:
    return "recorded"


def function_tool(doc: dict[str, Any]) -> BaseTool:
    """A tool whose schema is the function doc; BFCL functions are checked, never run."""
    params = to_json_schema(doc.get("parameters") or {"type": "object", "properties": {}})
    params.setdefault("type", "object")
    return StructuredTool(name=doc["name"], description=doc.get("description", ""), args_schema=params,
                          func=_not_executed, metadata={"bfcl_doc": doc})


# --- the checker --------------------------------------------------------------------------------

_STRIP = re.compile(r"[ ,./\-_*^]")


def _norm(s: str) -> str:
    return _STRIP.sub("", s).lower().replace("'", '"')


def _type_ok(value: Any, expected: str) -> tuple[bool, Any]:
    """Whether `value` has the BFCL type `expected` (int is accepted for float and converted)."""
    py = _PY_TYPES.get(expected, str)
    if expected in ("float", "number") and type(value) is int:
        return True, float(value)
    if isinstance(value, tuple):
        value = list(value)
    return type(value) is py, value


def _value_matches(value: Any, accepted: list[Any], param_type: str, items_type: str | None) -> bool:
    if param_type in ("string", "any") and isinstance(value, str):
        return any(isinstance(a, str) and _norm(a) == _norm(value) for a in accepted)
    if isinstance(value, list):
        for option in accepted:
            if not isinstance(option, list) or len(option) != len(value):
                continue
            if all(_elem_equal(v, o) for v, o in zip(value, option)):
                return True
        return False
    if isinstance(value, dict):
        return any(isinstance(option, dict) and _dict_matches(value, option) for option in accepted)
    return any(type(a) in (int, float) and type(value) in (int, float) and a == value
               if not isinstance(a, bool) and not isinstance(value, bool) else a is value
               for a in accepted if a != "")


def _elem_equal(v: Any, o: Any) -> bool:
    if isinstance(v, str) and isinstance(o, str):
        return _norm(v) == _norm(o)
    if isinstance(v, dict) and isinstance(o, dict):
        return _dict_matches(v, o)
    if isinstance(v, bool) or isinstance(o, bool):
        return v is o
    return v == o


def _dict_matches(value: dict, option: dict) -> bool:
    for k, v in value.items():
        if k not in option:
            return False
        accepted = option[k] if isinstance(option[k], list) else [option[k]]
        if not any(_elem_equal(v, a) for a in accepted):
            return False
    return all(k in value or "" in (option[k] if isinstance(option[k], list) else [option[k]]) for k in option)


def _check_one(call: Call, doc: dict[str, Any], expected_args: dict[str, list[Any]]) -> str | None:
    """None when `call` passes BFCL's single-call check against one ground-truth entry, else why not."""
    props = (doc.get("parameters") or {}).get("properties", {})
    for req in (doc.get("parameters") or {}).get("required", []):
        if req not in call.args:
            return f"missing required parameter `{req}`"
    for name, value in call.args.items():
        if name not in props or name not in expected_args:
            return f"unexpected parameter `{name}`"
        spec = props[name]
        ptype = spec.get("type", "string")
        ok, value = _type_ok(value, ptype)
        accepted = expected_args[name]
        if not ok:
            # A value of the ground truth's own type also passes (variable names as strings).
            if not any(type(a) is type(value) for a in accepted if a != ""):
                return f"`{name}` has type {type(value).__name__}, expected {ptype}"
        if ptype in ("array", "tuple") and isinstance(value, list) and "items" in spec:
            itype = spec["items"].get("type")
            if itype and itype not in ("dict", "object", "any", "array"):
                if not all(_type_ok(v, itype)[0] for v in value):
                    return f"`{name}` has an element that is not {itype}"
        if not _value_matches(value, accepted, ptype, None):
            return f"`{name}` = {value!r} is not an accepted value"
    for name, accepted in expected_args.items():
        if name not in call.args and "" not in accepted:
            return f"missing parameter `{name}`"
    return None


def check_bfcl(category: str, functions: list[dict[str, Any]], ground_truth: list[dict[str, Any]] | None,
               calls: list[Call]) -> Verdict:
    """Score one BFCL entry; `calls` are what the model made in its one turn."""
    if category == "irrelevance" or ground_truth is None:
        if calls:
            return Verdict(success=False, reason=f"made a call ({calls[0].name}) where none applies")
        return Verdict(success=True, reason="correctly made no call")
    if not calls:
        return Verdict(success=False, reason="no function call")
    if len(calls) != len(ground_truth):
        return Verdict(success=False, reason=f"made {len(calls)} calls, expected {len(ground_truth)}")
    docs = {d["name"]: d for d in functions}
    unmatched = list(calls)
    for expected in ground_truth:
        (fname, expected_args), = expected.items()
        doc = docs.get(fname)
        if doc is None:
            raise DataError(f"ground truth names `{fname}`, which is not among the functions")
        reasons = []
        for i, call in enumerate(unmatched):
            if call.name != fname and call.name != fname.replace(".", "_"):
                reasons.append(f"wrong function {call.name}")
                continue
            why = _check_one(call, doc, expected_args)
            if why is None:
                unmatched.pop(i)
                break
            reasons.append(why)
        else:
            return Verdict(success=False, reason=f"{fname}: {reasons[0] if reasons else 'no matching call'}")
    return Verdict(success=True, reason="calls match the ground truth")


def _first_accepted(options: Any) -> Any:
    """The first accepted value of a ground-truth entry, with nested dicts unwrapped the same way."""
    first = next((o for o in options if o != ""), None) if isinstance(options, list) else options
    if isinstance(first, dict):
        return {k: _first_accepted(v) for k, v in first.items() if _first_accepted(v) is not None}
    if isinstance(first, list):
        return [_first_accepted([e]) if isinstance(e, dict) else e for e in first]
    return first


def _gold_call(expected: dict[str, Any]) -> Call:
    (fname, args), = expected.items()
    chosen = {k: v for k, v in ((k, _first_accepted(o)) for k, o in args.items()) if v is not None}
    return Call(name=fname, args=chosen)


class BfclTask(Task):
    """`bfcl:<category>` with the categories in `CATEGORIES` (default `simple_python`)."""

    name = "bfcl"
    max_steps = 1
    max_new_tokens = 96
    execute = False
    instructions = ("Answer the user's request by calling the right function(s) with the right arguments. "
                    "If no function fits the request, reply in words without a call.")

    def load(self, *, split=None, limit=None, seed: int = 0) -> list[Problem]:
        category = self.source or "simple_python"
        if category not in CATEGORIES:
            raise DataError(f"unknown BFCL category `{category}`; choose from {', '.join(CATEGORIES)}")
        hint = "the gorilla repo's bfcl_eval/data files (BFCL_v4_<category>.json)"
        qpath = find_data_file(f"bfcl/BFCL_v4_{category}.json", self.data_dir, hub_hint=hint)
        answers: dict[str, list] = {}
        if category != "irrelevance":
            apath = find_data_file(f"bfcl/possible_answer/BFCL_v4_{category}.json", self.data_dir, hub_hint=hint)
            for lineno, row in read_json_records(apath):
                answers[require(row, "id", f"{apath}:{lineno}")] = require(row, "ground_truth", f"{apath}:{lineno}")
        problems = []
        for lineno, row in read_json_records(qpath):
            where = f"{qpath}:{lineno}"
            pid = require(row, "id", where)
            turns = require(row, "question", where)
            functions = require(row, "function", where)
            if not turns or not isinstance(turns[0], list):
                raise DataError(f"{where}: field `question` must be a list of turns")
            msgs = turns[0]
            user = [m["content"] for m in msgs if m.get("role") == "user"]
            system = "\n".join(m["content"] for m in msgs if m.get("role") == "system") or None
            if not user:
                raise DataError(f"{where}: field `question` has no user message")
            truth = answers.get(pid)
            if category != "irrelevance" and truth is None:
                raise DataError(f"{where}: no possible answer for id `{pid}`")
            gold: list[list[Call]] | None = [[_gold_call(t) for t in truth]] if truth else [[]]
            # A few upstream answers contradict their own function docs (a required parameter
            # missing from the answer); those entries have no replayable gold chain.
            if truth and not check_bfcl(category, functions, truth, gold[0]).success:
                gold = None
            problems.append(Problem(id=pid, task="bfcl", source=category, question="\n".join(user), system=system,
                                    answer=truth, gold_chain=gold, functions=functions))
        return self._filter(problems, split, limit)

    def tools_for(self, problem):
        return [function_tool(doc) for doc in (problem.functions if problem else [])]

    def verify(self, problem, *, final_answer, calls) -> Verdict:
        return check_bfcl(problem.source, problem.functions, problem.answer, calls)

    def examples(self) -> list[WorkedExample]:
        return [WorkedExample(question="What is the weather in Paris in celsius?",
                              steps=[('{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}', "")])]
