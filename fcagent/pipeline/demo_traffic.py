"""Demo traffic nobody here wrote: a user-style agent over NESTFUL's APIs, recorded and labelled.

NESTFUL (IBM, Apache-2.0; `../shared/data/nestful`) holds 300 requests, each answered by a gold chain of
2–7 API calls whose arguments may read earlier outputs (`$var1.distance$`). Here each request becomes a
run of a `create_agent` agent, as a user's own would be:

* its tools are the request's APIs and two distractors from the same collection, each a LangChain tool
  whose output is simulated from the API's `output_parameters` (deterministic per call);
* its model is `NestfulTeacher`, a scripted stand-in for a large model that plays the gold chain,
  reading the values it needs from the tool results as they come back, then answers in words;
* a realistic share of the runs (`mistake_rate`, 0.2) goes wrong as a large model's do: a wrong argument,
  a wrong function, or a wrong final answer;
* the users' feedback labels each episode: good when nothing went wrong, bad otherwise.

`record_demo_traffic` writes all of it into a store through `TraceRecorder`: what `fcagent distill
--store` then splits, trains on and gates (`fcagent demo record`).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from fcagent.core.errors import UserError

__all__ = ["MISTAKES", "NestfulRequest", "NestfulTeacher", "nestful_requests", "record_demo_traffic", "request_tools"]

_SETS = [("glaive", "non-executable/non-executable-glaive-data.json", "non-executable/non-executable-glaive-spec.json"),
         ("sgd", "non-executable/non-executable-sgd-data.json", "non-executable/non-executable-sgd-spec.json"),
         ("rapidapi", "executable/executable-data.json", "executable/executable-spec.json")]
_TYPES = {"string": "string", "number": "number", "integer": "integer", "boolean": "boolean", "array": "array",
          "object": "object", "enum": "string"}
MISTAKES = ("wrong_argument", "wrong_function", "wrong_answer")
_REF = re.compile(r"^\$var(\d+)(?:\.([A-Za-z0-9_\-\.]+))?\$$")


@dataclass
class NestfulRequest:
    id: str  # source and row
    question: str
    calls: list[dict[str, Any]]  # the gold chain: name, arguments (may hold $varN.field$), label
    result: dict[str, Any]  # the final pseudo-call's arguments: what the answer reports
    tools: list[dict[str, Any]]  # the APIs offered, OpenAI function schemas (with their output parameters)
    mistake: str | None = None  # what goes wrong in this run, if anything


def _schema(spec: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI function schema from a NESTFUL spec (its three spec formats)."""
    params = spec.get("parameters") or spec.get("query_parameters") or spec.get("arguments") or {}
    params = {**params, **(spec.get("path_parameters") or {})}
    properties, required = {}, []
    for name, p in params.items():
        kind = _TYPES.get(str(p.get("type") or "string").lower().split()[0], "string")
        prop: dict[str, Any] = {"type": kind, "description": str(p.get("description") or "")}
        if kind == "array":
            prop["items"] = {}
        if p.get("allowed_values"):
            prop["enum"] = [str(v) for v in p["allowed_values"]]
        if p.get("default_value") not in (None, ""):
            prop["default"] = str(p["default_value"])
        properties[name] = prop
        if p.get("required"):
            required.append(name)
    return {"type": "function", "function": {"name": spec["name"], "description": spec.get("description", ""),
                                             "parameters": {"type": "object", "properties": properties,
                                                            "required": required}},
            "output_parameters": list((spec.get("output_parameters") or {}).keys())}


def nestful_requests(data_dir: str | Path | None = None, *, distractors: int = 2, limit: int | None = None,
                     mistake_rate: float = 0.2, seed: int = 0) -> list[NestfulRequest]:
    """The 300 NESTFUL requests with their tools; `mistake_rate` of them marked to go wrong (by `seed`)."""
    from fcagent.tasks._data import find_data_file

    hint = "github.com/IBM/NESTFUL, its data/ folder"
    rng = random.Random(seed)
    out: list[NestfulRequest] = []
    for source, data_file, spec_file in _SETS:
        specs = {s["name"]: _schema(s) for s in json.loads(find_data_file(f"nestful/{spec_file}", data_dir, hub_hint=hint).read_text())}
        rows = json.loads(find_data_file(f"nestful/{data_file}", data_dir, hub_hint=hint).read_text())
        for i, row in enumerate(rows):
            chain = [c for c in row["output"] if c["name"] != "var_result"]
            result = next((c["arguments"] for c in row["output"] if c["name"] == "var_result"), {})
            names = list(dict.fromkeys(c["name"] for c in chain))
            if any(n not in specs for n in names):
                continue  # an API the spec file lacks: no tool to offer
            others = sorted(set(specs) - set(names))
            picked = random.Random(f"{source}-{i}").sample(others, min(distractors, len(others)))
            tools = [_with_referenced_outputs(specs[n], chain) for n in sorted([*names, *picked])]
            mistake = rng.choice(MISTAKES) if rng.random() < mistake_rate else None
            out.append(NestfulRequest(id=f"{source}-{i}", question=row["input"], calls=chain, result=result,
                                      tools=tools, mistake=mistake))
    if not out:
        raise UserError("no NESTFUL request could be read (its data belongs in nestful/ under the data folder)")
    random.Random(seed).shuffle(out)  # a `limit` takes a mix of the three collections
    return out[:limit] if limit else out


def _with_referenced_outputs(tool: dict[str, Any], chain: list[dict[str, Any]]) -> dict[str, Any]:
    """`tool` whose outputs include every field the chain reads from its calls (`$var2.geoId$`), so the value
    a later call needs is in a tool result a model can read, even where the spec file leaves it out."""
    labels: dict[str, str] = {}
    for c in chain:
        labels.setdefault(c.get("label"), c["name"])  # a label used twice (one row does) means its first call
    wanted = list(tool.get("output_parameters") or [])[:_MAX_OUTPUT_FIELDS]  # a real API's 90-field records
    # would only make every prompt longer; the ones a chain reads are added below
    for text in re.findall(r"\$var\d+\.[A-Za-z0-9_\-\.]+\$", json.dumps([c.get("arguments") for c in chain])):
        m = _REF.match(text)
        if m and labels.get(f"var{m.group(1)}") == tool["function"]["name"] and m.group(2) not in wanted:
            wanted.append(m.group(2))
    return {**tool, "output_parameters": wanted}


_MAX_OUTPUT_FIELDS = 6
_NUMERIC_WORDS = {"count", "number", "amount", "price", "total", "distance", "time", "duration", "rate", "score",
                  "age", "bmi", "temperature", "pace", "quantity", "id"}


def simulated_output(tool: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
    """What the API returns for `args`: each output parameter a value fixed by the call (same call, same
    output), so a chain that reads it reads the same thing every time."""
    name = tool["function"]["name"]
    digest = hashlib.sha256(json.dumps([name, args], sort_keys=True, default=str).encode()).hexdigest()
    out: dict[str, Any] = {}
    for k, field_name in enumerate(tool.get("output_parameters") or ["result"]):
        token = digest[4 * k % 60:4 * k % 60 + 6]
        words = {w.lower() for w in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])", field_name)}
        if words & (_NUMERIC_WORDS - {"id"}):
            out[field_name] = int(token, 16) % 1000
        else:
            out[field_name] = f"{field_name}-{token}"
    return out


def _resolve(value: Any, outputs: dict[int, dict[str, Any]]) -> Any:
    if isinstance(value, str):
        m = _REF.match(value.strip())
        if m:
            found = outputs.get(int(m.group(1)), {})
            return found.get(m.group(2), found) if m.group(2) else found
        return value
    if isinstance(value, list):
        return [_resolve(v, outputs) for v in value]
    if isinstance(value, dict):
        return {k: _resolve(v, outputs) for k, v in value.items()}
    return value


def _wrong(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 7
    if isinstance(value, str):
        return value + " (approx.)" if value else "unknown"
    return value


@dataclass
class _Plan:
    request: NestfulRequest
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)


class NestfulTeacher(BaseChatModel):
    """A scripted large model for one request (see the module docs): the gold chain, step by step."""

    request: Any  # a NestfulRequest

    @property
    def _llm_type(self) -> str:
        return "nestful-teacher"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": "large-model"}

    def bind_tools(self, tools: list[Any], **kwargs: Any):
        from fcagent.agent.prompting import tool_schemas

        return self.bind(tools=tool_schemas(tools), **kwargs)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        req: NestfulRequest = self.request
        results = [json.loads(m.content) for m in messages if isinstance(m, ToolMessage)]
        outputs = {i + 1: r for i, r in enumerate(results)}
        step = sum(isinstance(m, AIMessage) for m in messages)
        if step < len(req.calls):
            call = req.calls[step]
            name, args = call["name"], _resolve(call.get("arguments") or {}, outputs)
            if step == 0 and req.mistake == "wrong_function":
                offered = [t["function"]["name"] for t in req.tools if t["function"]["name"] != name]
                name = offered[0] if offered else name
            if step == 0 and req.mistake == "wrong_argument" and args:
                key = sorted(args)[0]
                args = {**args, key: _wrong(args[key])}
            reply = AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": f"call_{uuid.uuid4().hex[:8]}"}])
        else:
            facts = _resolve(req.result, outputs)
            if req.mistake == "wrong_answer" and facts:
                key = sorted(facts)[0]
                facts = {**facts, key: _wrong(facts[key]) if not isinstance(facts[key], dict) else "not found"}
            parts = [f"{k}: {json.dumps(v, ensure_ascii=False)[:80]}" for k, v in facts.items()]
            reply = AIMessage(content="Here is what I found. " + "; ".join(parts) + ".")
        return ChatResult(generations=[ChatGeneration(message=reply)])


def request_tools(request: NestfulRequest) -> list[Any]:
    from langchain_core.tools import StructuredTool

    out = []
    for schema in request.tools:
        fn = schema["function"]

        def run(_schema=schema, **kwargs: Any) -> str:
            return json.dumps(simulated_output(_schema, kwargs), ensure_ascii=False)

        out.append(StructuredTool.from_function(func=run, name=fn["name"], description=fn["description"] or fn["name"],
                                                args_schema=fn["parameters"]))
    return out


def record_demo_traffic(store: Any, *, data_dir: str | Path | None = None, limit: int | None = None,
                        mistake_rate: float = 0.2, seed: int = 0, progress: Any = None) -> dict[str, Any]:
    """Run every request through a `create_agent` agent recorded by `TraceRecorder`, and label each episode
    as its user would (good, or bad where the run went wrong). Returns counts."""
    from langchain.agents import create_agent

    from fcagent.core.records import Label
    from fcagent.tracing.recorder import TraceRecorder

    requests = nestful_requests(data_dir, limit=limit, mistake_rate=mistake_rate, seed=seed)
    recorder = TraceRecorder(store, app="nestful-demo")
    labels = []
    bar = progress.add_task("recording demo traffic", total=len(requests), status="") if progress else None
    if progress is not None:
        progress.start()
    try:
        for req in requests:
            run_id = uuid.uuid4()
            agent = create_agent(NestfulTeacher(request=req), request_tools(req),
                                 system_prompt="You are an assistant that completes requests with the APIs given.")
            agent.invoke({"messages": [HumanMessage(req.question)]},
                         {"run_id": run_id, "callbacks": [recorder], "recursion_limit": 50})
            labels.append(Label(target_id=str(run_id), success=req.mistake is None, source="feedback",
                                reason="the user accepted the answer" if req.mistake is None else
                                f"the user flagged it ({req.mistake.replace('_', ' ')})"))
            if bar is not None:
                progress.update(bar, advance=1)
    finally:
        if progress is not None:
            progress.stop()
    recorder.flush()
    store.label_many(labels)
    bad = sum(not lb.success for lb in labels)
    return {"episodes": len(requests), "labelled_good": len(labels) - bad, "labelled_bad": bad,
            "store": store.location}
