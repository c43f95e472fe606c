"""BFCL v4 single-turn categories: functions come with each problem, calls are checked, never run.

The checker applies the official BFCL AST checker's rules (listed above `check_bfcl`), and agrees with
the official checker on every one of 38,095 model outputs with known verdicts (a test).
"""

from __future__ import annotations

import re
from itertools import zip_longest
from typing import Any, Literal

from langchain_core.tools import BaseTool, StructuredTool

from fcagent.core.calls import Call
from fcagent.tasks._data import find_data_file
from fcagent.tasks.base import (
    DataError,
    Problem,
    Task,
    Verdict,
    WorkedExample,
    read_json_records,
    require,
)

__all__ = ["BfclTask", "check_bfcl", "to_json_schema", "CATEGORIES", "PARALLEL_CATEGORIES", "Names"]

CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple", "live_simple", "live_multiple",
              "irrelevance")

_GORILLA_TO_JSON = {"dict": "object", "float": "number", "tuple": "array", "any": "string"}
_PY_TYPES: dict[str, type] = {
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


# --- the checker ------------------------------------------------------------------------------
#
# BFCL's AST checker rules for Python, as the official `ast_checker` applies them (bfcl-eval 2026.3.23;
# conformance tested against 38,095 of its verdicts in ../shared/data/bfcl-conformance/):
# * one call per expected call; names exact as the data spells them (`math.factorial`), or with dots
#   as underscores for models whose API forbids dots (`names="underscored"`, BFCL's function-calling mode);
# * required parameters present; every parameter given is in the function's schema and in the answer;
# * types exact, but an int passes for a top-level float and a tuple is a list; a value of the answer's
#   own type passes for a mistyped schema (BFCL stores variables as strings); array elements are checked
#   one level deep, exactly (an int is no float there), against any accepted list, and an answer that
#   allows omission (`""`) lets any array of the right outer type through that check;
# * values: strings compared standardised (case, spaces and `,./-_*^` ignored; ' as "), lists element by
#   element with their strings standardised, dicts key by key (a key may be missing where its answer
#   allows ""), lists of dicts dict by dict in order, anything else by Python equality (5 == 5.0, 1 == True);
# * a parameter the answer lists but the call omits must allow omission (`""`);
# * parallel categories: each expected call, in the answer's order, takes the first unmatched call that
#   passes; irrelevance: valid exactly when there is no call.

_STRIP = re.compile(r"[ ,./\-_*^]")
Names = Literal["exact", "underscored"]


def _std(s: str) -> str:
    return _STRIP.sub("", s).lower().replace("'", '"')


def _answer_type(accepted: list[Any]) -> type | None:
    return next((type(a) for a in accepted if a != ""), None)


def _type_error(name: str, value: Any, accepted: list[Any], expected: type, inner: type | None) -> tuple[str | None, bool]:
    """(why the value's type fails, whether the value is a "variable"): BFCL's one-level type check."""
    answer_type = _answer_type(accepted)
    variable = answer_type is not None and answer_type is not expected
    if type(value) is expected:
        if inner is None:
            return None, variable
        for option in accepted:
            if not isinstance(option, list) or all(_type_error(name, v, option, inner, None)[0] is None for v in value):
                return None, variable
        if answer_type is not None and type(value) is answer_type:
            return f"`{name}` has an element of the wrong type (expected {inner.__name__})", True
        return f"`{name}` has an element of the wrong type (expected {inner.__name__})", variable
    if answer_type is not None and type(value) is answer_type:
        return None, True
    return f"`{name}` has type {type(value).__name__}, expected {expected.__name__}", variable


def _dict_error(value: dict, accepted: list[Any]) -> str | None:
    why = "no accepted dict"
    for option in accepted:
        if option == "":
            continue
        why = None
        for key, v in value.items():
            if key not in option:
                why = f"unexpected key `{key}`"
                break
            v = _std(v) if isinstance(v, str) else v
            allowed = [_std(a) if isinstance(a, str) else a for a in option[key]]
            if v not in allowed:
                why = f"`{key}` = {v!r} is not accepted"
                break
        if why is None:
            missing = [k for k, a in option.items() if k not in value and "" not in a]
            why = f"missing key `{missing[0]}`" if missing else None
        if why is None:
            return None
    return why


def _list_of_dicts_error(value: list, accepted: list[Any]) -> str | None:
    why = "no accepted list of dicts"
    for option in accepted:
        if len(value) != len(option):
            why = "wrong number of dicts"
            continue
        errors = [_dict_error(v, [o]) for v, o in zip(value, option)]
        why = next((e for e in errors if e), None)
        if why is None:
            return None
    return why


def _call_error(name: str, args: dict[str, Any], doc: dict[str, Any], answer: dict[str, list[Any]],
                names: Names) -> str | None:
    """None when one call passes BFCL's check against one expected call (its `answer`), else why not."""
    expected_name = doc["name"].replace(".", "_") if names == "underscored" else doc["name"]
    if name != expected_name:
        return f"wrong function {name} (expected {expected_name})"
    params = doc.get("parameters") or {}
    props = params.get("properties") or {}
    for required in params.get("required") or []:
        if required not in args:
            return f"missing required parameter `{required}`"
    for key, value in args.items():
        if key not in props or key not in answer:
            return f"unexpected parameter `{key}`"
        spec = props[key]
        kind = spec.get("type", "string")
        expected = _PY_TYPES.get(kind, str)
        inner = _PY_TYPES.get((spec.get("items") or {}).get("type", "string"), str) if kind in ("array", "tuple") else None
        if kind == "tuple" and isinstance(value, tuple):
            value = list(value)
        if kind == "float" and type(value) is int:
            value = float(value)
        accepted = answer[key]
        why, variable = _type_error(key, value, accepted, expected, inner)
        if why:
            return why
        if not variable:
            if expected is dict:
                why = _dict_error(value, accepted)
            elif expected is list and inner is dict:
                why = _list_of_dicts_error(value, accepted)
            elif expected is str:
                why = None if _std(value) in [_std(a) for a in accepted if isinstance(a, str)] else \
                    f"`{key}` = {value!r} is not accepted"
            elif expected is list:
                std = [_std(v) if isinstance(v, str) else v for v in value]
                # An accepted "" is an empty sequence here, as in the official list check: `[]` passes
                # for an array the answer allows to omit.
                options = [[_std(v) if isinstance(v, str) else v for v in option] for option in accepted
                           if isinstance(option, list | str)]
                why = None if std in options else f"`{key}` = {value!r} is not accepted"
            else:
                why = None if value in accepted else f"`{key}` = {value!r} is not accepted"
            if why:
                return why
        elif value not in accepted:
            return f"`{key}` = {value!r} is not accepted"
    for key, accepted in answer.items():
        if key not in args and "" not in accepted:
            return f"missing parameter `{key}`"
    return None


def check_bfcl(category: str, functions: list[dict[str, Any]], ground_truth: list[dict[str, Any]] | None,
               calls: list[Call], *, names: Names = "exact") -> Verdict:
    """Score one BFCL entry by the official checker's rules (see above); `calls` are what the model made."""
    if category == "irrelevance" or ground_truth is None:
        if calls:
            return Verdict(success=False, reason=f"made a call ({calls[0].name}) where none applies")
        return Verdict(success=True, reason="correctly made no call")
    if not calls:
        return Verdict(success=False, reason="no function call")
    if len(calls) != len(ground_truth):
        return Verdict(success=False, reason=f"made {len(calls)} calls, expected {len(ground_truth)}")
    docs = {d["name"]: d for d in functions}
    matched: set[int] = set()
    for expected in ground_truth:
        (fname, answer), = expected.items()
        doc = docs.get(fname)
        if doc is None:
            raise DataError(f"ground truth names `{fname}`, which is not among the functions")
        reasons = []
        for i, call in enumerate(calls):
            if i in matched:
                continue
            why = _call_error(call.name, call.args, doc, answer, names)
            if why is None:
                matched.add(i)
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


def _gold_call(expected: dict[str, Any], functions: list[dict[str, Any]], *, omit: bool) -> Call:
    """The call a gold chain makes for one expected call; with `omit`, an optional parameter (not in its
    function's `required`) whose answer accepts omission is left out."""
    (fname, args), = expected.items()
    doc = next((f for f in functions if f.get("name") == fname), {})
    required = set((doc.get("parameters") or {}).get("required") or ())
    chosen = {k: _first_accepted(o) for k, o in args.items()
              if not (omit and k not in required and isinstance(o, list) and "" in o)}
    return Call(name=fname, args={k: v for k, v in chosen.items() if v is not None})


# Categories whose answers hold several calls in one reply (a JSON list): they need a longer reply
# budget (their gold replies run to ~190 tokens at the 95th percentile, measured with the bundled
# tokenizer; single-call ones to ~60) and no single-call response prefix.
PARALLEL_CATEGORIES = ("parallel", "parallel_multiple")


class BfclTask(Task):
    """`bfcl:<category>` with the categories in `CATEGORIES` (default `simple_python`), or several joined
    with `+` (`bfcl:simple_python+multiple+parallel+parallel_multiple`): one task whose problems
    alternate between the categories (so any `limit` takes a mix), each checked by its own category's
    rules."""

    name = "bfcl"
    max_steps = 1
    # How a gold chain writes an optional parameter whose answer also accepts omission (`""`, BFCL's
    # mark for a default): "write" spells out the first accepted value; "omit" leaves it out. "write"
    # stays the default: a student trained on "omit" also left out optional parameters the request
    # asked for, and lost more than it gained (docs/results/bfcl/omit/).
    gold_optional: Literal["write", "omit"] = "write"
    execute = False
    instructions = ("Answer the user's request by calling the right function(s) with the right arguments. "
                    "If no function fits the request, reply in words without a call.")

    @property
    def categories(self) -> list[str]:
        categories = (self.source or "simple_python").split("+")
        for category in categories:
            if category not in CATEGORIES:
                raise DataError(f"unknown BFCL category `{category}`; choose from {', '.join(CATEGORIES)} "
                                "(several joined with `+`)")
        if len(set(categories)) != len(categories):
            raise DataError(f"BFCL category named twice in `{self.source}`")
        return categories

    @property
    def max_new_tokens(self) -> int:  # type: ignore[override]
        return 224 if set(self.categories) & set(PARALLEL_CATEGORIES) else 96

    @property
    def one_call_replies(self) -> bool:  # type: ignore[override]
        return not set(self.categories) & {*PARALLEL_CATEGORIES, "irrelevance"}

    def load(self, *, split=None, limit=None, seed: int = 0) -> list[Problem]:
        if self.gold_optional not in ("write", "omit"):
            raise DataError(f"`gold_optional` must be `write` or `omit`, got {self.gold_optional!r}")
        per_category = [self._filter(self._load_category(c, omit=self.gold_optional == "omit"), split, None)
                        for c in self.categories]
        # Round-robin, each category in its own file order: the first N problems of the joined task
        # are the first ~N/k of each category.
        mixed = [p for row in zip_longest(*per_category) for p in row if p is not None]
        return mixed[:limit] if limit else mixed

    def _load_category(self, category: str, *, omit: bool) -> list[Problem]:
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
            gold: list[list[Call]] | None = [[_gold_call(t, functions, omit=omit) for t in truth]] if truth else [[]]
            # A few upstream answers contradict their own function docs (a required parameter
            # missing from the answer); those entries have no replayable gold chain.
            if truth and not check_bfcl(category, functions, truth, gold[0]).success:
                gold = None
            problems.append(Problem(id=pid, task="bfcl", source=category, question="\n".join(user), system=system,
                                    answer=truth, gold_chain=gold, functions=functions))
        return problems

    def tools_for(self, problem):
        return [function_tool(doc) for doc in (problem.functions if problem else [])]

    def verify(self, problem, *, final_answer, calls) -> Verdict:
        return check_bfcl(problem.source, problem.functions, problem.answer, calls)

    def examples(self) -> list[WorkedExample]:
        return [WorkedExample(question="What is the weather in Paris in celsius?",
                              steps=[('{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}', "")])]
