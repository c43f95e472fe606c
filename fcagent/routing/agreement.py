"""Does a model's reply agree with the reply a user's agent recorded? The rules `fcagent eval --store` scores by.

**Calls** agree under typed matching: the official BFCL checker's rules (`fcagent.tasks.bfcl`) carried
over to any JSON schema. The same functions, in any order (parallel calls are a set); every required
argument given, none the schema lacks; each value of the schema's type (an integer does for a number);
numbers equal as numbers, strings equal after normalisation (case, whitespace and punctuation aside:
`StringMatch`), lists element by element, objects key by key. An optional argument one side leaves out
agrees when the other gives the schema's default.

**Answers in words** agree by a judge. The default (`same_answer`): equal after normalisation, or
naming the same numbers and the same capitalised names (the facts of a short answer), when either
names any. A chat model can judge instead (`ModelJudge`, a YES/NO rubric), or any function
`(reference, candidate) -> bool` (`python:module:function`).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

__all__ = ["StringMatch", "calls_agree", "same_answer", "ModelJudge", "Judge", "load_judge"]

Judge = Callable[[str, str], bool]


class StringMatch(BaseModel):
    """How two string values are compared (BFCL's normalisation by default)."""

    case: bool = Field(False, description="Case matters.")
    punctuation: bool = Field(False, description="Punctuation and spaces matter (BFCL drops ,./-_*^ and spaces).")

    def normal(self, value: str) -> str:
        text = unicodedata.normalize("NFKC", value).strip()
        if not self.case:
            text = text.casefold()
        if not self.punctuation:
            text = re.sub(r"[\s,./\-_*^'\"!?;:()]+", "", text)
        return text


def _type_ok(value: Any, schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind else []
    if "enum" in schema and value not in schema["enum"]:
        return False
    if not kinds:
        return True
    for k in kinds:
        if k == "string" and isinstance(value, str):
            return True
        if k == "integer" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if k in ("number", "float") and isinstance(value, int | float) and not isinstance(value, bool):
            return True
        if k == "boolean" and isinstance(value, bool):
            return True
        if k in ("array", "tuple") and isinstance(value, list):
            items = schema.get("items") or {}
            return all(_type_ok(v, items) for v in value) if isinstance(items, dict) else True
        if k in ("object", "dict") and isinstance(value, dict):
            return True
        if k == "null" and value is None:
            return True
    return False


def _equal(a: Any, b: Any, match: StringMatch) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return float(a) == float(b)
    if isinstance(a, str) and isinstance(b, str):
        return match.normal(a) == match.normal(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y, match) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k], match) for k in a)
    return a == b


_ABSENT = object()


def _call_agrees(reply: dict[str, Any], recorded: dict[str, Any], schema: dict[str, Any] | None,
                 match: StringMatch) -> str | None:
    """Why `reply` is not the recorded call (None when it is)."""
    if reply.get("name") != recorded.get("name"):
        return f"calls {reply.get('name')}, not {recorded.get('name')}"
    params = ((schema or {}).get("function") or schema or {}).get("parameters") or {}
    props: dict[str, Any] = params.get("properties") or {}
    required = set(params.get("required") or [])
    mine, theirs = reply.get("args") or {}, recorded.get("args") or {}
    if json.dumps(mine, sort_keys=True) == json.dumps(theirs, sort_keys=True):  # not ==: 2.0 == 2 in Python
        return None  # the very call recorded agrees, even where it breaks its own schema (the recorded model's
        # calls need not be valid; `-m NAME=recorded` must score 1.0)
    if props:
        unknown = sorted(set(mine) - set(props))
        if unknown:
            return f"{reply['name']} takes no argument {unknown[0]}"
        missing = sorted(required - set(mine))
        if missing:
            return f"{reply['name']} needs {missing[0]}"
    for name in sorted(set(mine) | set(theirs)):
        spec = props.get(name) or {}
        a, b = mine.get(name, _ABSENT), theirs.get(name, _ABSENT)
        if a is not _ABSENT and props and not _type_ok(a, spec):
            return f"{reply['name']}.{name} is not of its type ({spec.get('type')})"
        if a is _ABSENT or b is _ABSENT:
            given = b if a is _ABSENT else a
            if "default" in spec and _equal(given, spec["default"], match):
                continue  # one side wrote the default out, the other left it to apply
            return f"{reply['name']}.{name} is {'missing' if a is _ABSENT else 'given'} where the recorded call " \
                   f"{'gives' if a is _ABSENT else 'leaves it out'}"
        if not _equal(a, b, match):
            return f"{reply['name']}.{name} is {a!r}, not {b!r}"
    return None


def calls_agree(reply: list[dict[str, Any]], recorded: list[dict[str, Any]], tools: list[dict[str, Any]],
                match: StringMatch | None = None) -> tuple[bool, str]:
    """Whether the calls of a reply (`{"name", "args"}`) are the recorded calls, in any order; and why not."""
    match = match or StringMatch()
    if len(reply) != len(recorded):
        return False, f"{len(reply)} calls where the recorded reply made {len(recorded)}"
    schemas = {str((t.get("function") or t).get("name")): t for t in tools}
    left = list(range(len(reply)))
    for want in recorded:
        why = None
        for i in left:
            why = _call_agrees(reply[i], want, schemas.get(str(want.get("name"))), match)
            if why is None:
                left.remove(i)
                break
        else:
            return False, why or f"no call matches {want.get('name')}"
    return True, "the recorded calls"


_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*")
_NAME = re.compile(r"\b[A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)*")


def same_answer(reference: str, candidate: str) -> bool:
    """The default judge of answers in words (see the module docs)."""
    norm = StringMatch()
    if norm.normal(reference) == norm.normal(candidate):
        return True

    def facts(text: str) -> tuple[set[str], set[str]]:
        numbers = {n.replace(",", "") for n in _NUMBER.findall(text)}
        names = {m.group(0).casefold() for m in _NAME.finditer(text)} - {"i", "the", "a", "an", "it", "we", "you"}
        return numbers, names

    ref_numbers, ref_names = facts(reference)
    cand_numbers, cand_names = facts(candidate)
    if not (ref_numbers or ref_names):
        return False
    return ref_numbers == cand_numbers and ref_names <= cand_names


_RUBRIC = ("You compare two answers to the same request. Reply with only YES if the candidate answer gives the "
           "same facts as the reference answer (wording aside), or NO if it does not.")


class ModelJudge:
    """A chat model as the judge of answers in words (YES/NO by a rubric)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __call__(self, reference: str, candidate: str) -> bool:
        from langchain_core.messages import HumanMessage, SystemMessage

        verdict = self.model.invoke([SystemMessage(_RUBRIC),
                                     HumanMessage(f"Reference answer: {reference}\n\nCandidate answer: {candidate}")])
        return str(verdict.content).strip().upper().startswith("YES")


def load_judge(spec: str | None) -> Judge:
    """`None` or `default`: `same_answer`; `python:package.module:function`: a function of yours
    `(reference, candidate) -> bool`; anything else: a model spec, asked by a rubric (`ModelJudge`)."""
    if spec in (None, "", "default"):
        return same_answer
    if spec.startswith("python:"):
        import importlib

        from fcagent.core.errors import UserError

        module, _, name = spec.removeprefix("python:").partition(":")
        try:
            found = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError):
            raise UserError(f"`--judge {spec}`: no function {name or '?'} in module {module or '?'}") from None
        if not callable(found):
            raise UserError(f"`--judge {spec}`: {module}.{name} is not a function")
        return found
    from fcagent.models.spec import ModelSpec

    return ModelJudge(ModelSpec.parse(spec).load())
