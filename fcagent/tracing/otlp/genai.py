"""A model call's messages, tools and replies on a span, in each GenAI convention, and fcagent's records.

Instrumentations put a model call on a span in one of three ways, all read here:

* the current OpenTelemetry GenAI conventions: `gen_ai.input.messages` and `gen_ai.output.messages`
  (JSON lists of `{role, parts, name?, finish_reason?}`, parts `text`, `tool_call`, `tool_call_response`),
  `gen_ai.system_instructions` (the system prompt kept apart), `gen_ai.tool.definitions`;
* the older flat attributes (OpenLLMetry until 0.54): `gen_ai.prompt.N.role|content|tool_call_id`,
  `gen_ai.prompt.N.tool_calls.M.id|name|arguments`, `gen_ai.completion.N.*` alike, the tools as
  `llm.request.functions.N.name|description|parameters`;
* OpenInference (Arize Phoenix): `llm.input_messages.N.message.role|content|name|tool_call_id`, its
  `message.contents.K.message_content.text` parts and `message.tool_calls.M.tool_call.id|function.name|
  function.arguments`, `llm.output_messages.*` alike, the tools as `llm.tools.N.tool.json_schema`.

fcagent writes the first (`genai_message`, `genai_tool`). Records are `MessageRecord`-shaped dicts.
Parts a record has no place for (reasoning, images, files) are counted in `Skipped`, never turned into
text a student would be trained to write.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelCall", "Skipped", "read_model_call", "is_model_call", "is_tool_run", "genai_message",
           "genai_output", "genai_tool", "tool_from_definition", "json_value"]

# The roles of every convention, as a record's.
_ROLES = {"system": "system", "developer": "system", "user": "user", "human": "user", "assistant": "assistant",
          "ai": "assistant", "model": "assistant", "tool": "tool", "function": "tool", "ipython": "tool"}
# `gen_ai.operation.name` of a model call (text_completion and generate_content are other providers' words).
MODEL_OPERATIONS = ("chat", "text_completion", "generate_content")
# Sampling parameters with a GenAI attribute of their own, `gen_ai.request.<name>`.
REQUEST_PARAMS = ("temperature", "top_p", "top_k", "max_tokens", "frequency_penalty", "presence_penalty", "seed",
                  "stop_sequences", "choice.count")


@dataclass
class Skipped:
    """What a reader left out, by kind (`reasoning part`, `image part`, ...): said in the import's report."""

    counts: Counter = field(default_factory=Counter)


def json_value(value: Any) -> Any:
    """An attribute that holds JSON as a string, decoded; anything else (a non-JSON string) as it is."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _args(value: Any) -> dict[str, Any]:
    """A call's arguments as the record keeps them, a JSON object; a value of another shape (a string that is
    not a JSON object, a list) is kept whole under `input`, as LangChain passes a tool a plain input."""
    value = json_value(value)
    if value is None:
        return {}
    return value if isinstance(value, dict) else {"input": value}


def _call(call_id: Any, name: Any, arguments: Any) -> dict[str, Any]:
    return {"id": call_id if isinstance(call_id, str) and call_id else None, "name": str(name or ""),
            "args": _args(arguments)}


# --- fcagent's records as GenAI messages (what fcagent writes) ------------------------------------------


def genai_message(rec: dict[str, Any]) -> dict[str, Any]:
    """A message record in the GenAI conventions' shape. A tool message's `status: "error"` (the tool reported
    a failure; the conventions have no word for it) rides on its response part, which admits more keys."""
    if rec["role"] == "tool":
        part: dict[str, Any] = {"type": "tool_call_response", "id": rec.get("tool_call_id"),
                                "response": rec.get("content", "")}
        if rec.get("status"):
            part["status"] = rec["status"]
        parts = [part]
    else:
        calls = rec.get("tool_calls") or []
        parts = [{"type": "text", "content": rec.get("content", "")}] if rec.get("content") or not calls else []
        parts += [{"type": "tool_call", "id": c.get("id"), "name": c["name"], "arguments": c.get("args", {})}
                  for c in calls]
    msg: dict[str, Any] = {"role": rec["role"], "parts": parts}
    if rec.get("name"):
        msg["name"] = rec["name"]
    return msg


def genai_output(rec: dict[str, Any]) -> dict[str, Any]:
    """A reply (a candidate's message) as a GenAI output message; `finish_reason` is required there, and
    fcagent does not record the provider's, so it says what the reply is: calls or an answer."""
    return {**genai_message(rec), "finish_reason": "tool_call" if rec.get("tool_calls") else "stop"}


def genai_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI-shaped tool schema (`{"type": "function", "function": {...}}`) as a GenAI tool definition
    (`{"type": "function", "name", "description", "parameters"}`)."""
    fn = tool.get("function")
    return {"type": tool.get("type", "function"), **fn} if isinstance(fn, dict) else dict(tool)


def tool_from_definition(definition: Any) -> dict[str, Any] | None:
    """A tool definition of any convention as the OpenAI-shaped schema fcagent stores."""
    definition = json_value(definition)
    if not isinstance(definition, dict):
        return None
    if isinstance(definition.get("function"), dict):  # already OpenAI's shape (OpenInference's json_schema)
        return {**definition, "type": definition.get("type", "function")}
    if not definition.get("name"):
        return None
    fn = {k: json_value(v) if k == "parameters" else v for k, v in definition.items() if k != "type"}
    return {"type": "function", "function": fn}


# --- GenAI messages as records ---------------------------------------------------------------------------


def _records_of(message: Any, skipped: Skipped) -> list[dict[str, Any]]:
    """The records one GenAI message makes: one, or one per tool response it carries (a message may answer
    several calls at once). Also reads the plain `{role, content, tool_calls}` shape some writers use."""
    if not isinstance(message, dict):
        return [{"role": "user", "content": _text(message)}]
    role = _ROLES.get(str(message.get("role", "user")).lower(), "user")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    responses: list[dict[str, Any]] = []
    parts = message.get("parts")
    if not isinstance(parts, list):  # the plain chat shape
        content = message.get("content")
        if isinstance(content, list):
            parts = content
        else:
            texts.append("" if content is None else _text(content))
            parts = []
        for c in message.get("tool_calls") or []:
            fn = c.get("function") if isinstance(c.get("function"), dict) else c
            calls.append(_call(c.get("id"), fn.get("name"), fn.get("arguments", fn.get("args"))))
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else "text"
        if not isinstance(part, dict):
            texts.append(_text(part))
        elif kind == "text":
            texts.append(_text(part.get("content", part.get("text", ""))))
        elif kind == "tool_call":
            calls.append(_call(part.get("id"), part.get("name"), part.get("arguments")))
        elif kind == "tool_call_response":
            responses.append(part)
        else:
            skipped.counts[f"{kind} part"] += 1
    out: list[dict[str, Any]] = []
    if role == "tool" and not responses:  # a tool message in the plain shape
        rec = {"role": "tool", "content": "".join(texts),
               "tool_call_id": message.get("tool_call_id") or message.get("id")}
        if message.get("name"):
            rec["name"] = message["name"]
        return [rec]
    if texts or calls or not responses:
        rec = {"role": role if role != "tool" else "user", "content": "".join(texts)}
        if calls:
            rec["tool_calls"] = calls
        out.append(rec)
    for part in responses:
        rec = {"role": "tool", "content": _text(part.get("response", "")), "tool_call_id": part.get("id")}
        if message.get("name") and len(responses) == 1:
            rec["name"] = message["name"]
        if part.get("status") == "error":
            rec["status"] = "error"
        out.append(rec)
    return out


def _instructions(value: Any, skipped: Skipped) -> str | None:
    """`gen_ai.system_instructions` (a list of parts, or a plain string) as the system message's text."""
    value = json_value(value)
    if value is None or isinstance(value, str):
        return value
    texts = []
    for part in _as_list(value):
        if not isinstance(part, dict):
            texts.append(_text(part))
        elif part.get("type", "text") == "text":
            texts.append(_text(part.get("content", part.get("text", ""))))
        else:
            skipped.counts[f"{part.get('type')} part"] += 1
    return "".join(texts)


def _records(messages: Any, skipped: Skipped) -> list[dict[str, Any]]:
    messages = json_value(messages)
    if messages is None:
        return []
    if not isinstance(messages, list):
        messages = [messages]
    return [rec for m in messages for rec in _records_of(m, skipped)]


# --- the flat conventions ----------------------------------------------------------------------------------


def _unflatten(attrs: dict[str, Any], prefix: str) -> list[Any]:
    """`prefix.N.a.b` attributes as a list (by N) of nested dicts: `{"a": {"b": value}}`; a level whose keys
    are all numbers becomes a list too."""
    root: dict[str, Any] = {}
    for key, value in attrs.items():
        if not key.startswith(prefix):
            continue
        node = root
        *path, last = key[len(prefix):].split(".")
        for name in path:
            child = node.setdefault(name, {})
            if not isinstance(child, dict):  # `a` and `a.b` both set: keep the value, nest beside it
                child = node[name] = {"": child}
            node = child
        if isinstance(node.get(last), dict):
            node[last][""] = value
        else:
            node[last] = value
    return _listify(root) if root else []


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    if node and all(k.isdigit() for k in node):
        return [_listify(node[k]) for k in sorted(node, key=int)]
    return {k: _listify(v) for k, v in node.items()}


def _legacy_records(items: list[Any]) -> list[dict[str, Any]]:
    """`gen_ai.prompt.N.*` / `gen_ai.completion.N.*` entries as records."""
    out = []
    for item in items:
        if not isinstance(item, dict):
            continue
        role = _ROLES.get(str(item.get("role", "user")).lower(), "user")
        rec: dict[str, Any] = {"role": role, "content": _text(item.get("content", "") or "")}
        calls = [_call(c.get("id"), c.get("name"), c.get("arguments")) for c in _as_list(item.get("tool_calls"))
                 if isinstance(c, dict)]
        if calls and role == "assistant":
            rec["tool_calls"] = calls
        if role == "tool":
            rec["tool_call_id"] = item.get("tool_call_id")
        out.append(rec)
    return out


def _openinference_records(items: list[Any], skipped: Skipped) -> list[dict[str, Any]]:
    """`llm.input_messages.N.message.*` / `llm.output_messages.N.message.*` entries as records."""
    out = []
    for item in items:
        msg = item.get("message") if isinstance(item, dict) else None
        if not isinstance(msg, dict):
            continue
        role = _ROLES.get(str(msg.get("role", "user")).lower(), "user")
        texts = [] if msg.get("content") is None else [_text(msg["content"])]
        for part in _as_list(msg.get("contents")):
            content = part.get("message_content", {}) if isinstance(part, dict) else {}
            if content.get("type", "text") == "text":
                texts.append(_text(content.get("text", "")))
            else:
                skipped.counts[f"{content.get('type')} part"] += 1
        rec: dict[str, Any] = {"role": role, "content": "".join(texts)}
        calls = []
        for c in _as_list(msg.get("tool_calls")):
            call = c.get("tool_call", {}) if isinstance(c, dict) else {}
            fn = call.get("function", {}) if isinstance(call.get("function"), dict) else {}
            calls.append(_call(call.get("id"), fn.get("name"), fn.get("arguments")))
        if calls and role == "assistant":
            rec["tool_calls"] = calls
        if role == "tool":
            rec["tool_call_id"] = msg.get("tool_call_id")
            if msg.get("name"):
                rec["name"] = msg["name"]
        out.append(rec)
    return out


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    return [] if value is None else [value]


# --- one model call -------------------------------------------------------------------------------------


@dataclass
class ModelCall:
    """What a span says of one model call."""

    messages: list[dict[str, Any]]
    replies: list[dict[str, Any]]  # one record per candidate
    tools: list[dict[str, Any]]
    model: str | None
    params: dict[str, Any]
    usage: dict[str, Any]


def is_model_call(attrs: dict[str, Any]) -> bool:
    kind = attrs.get("openinference.span.kind")
    if kind is not None:  # OpenInference marks its CHAIN spans with llm.input_messages too
        return kind == "LLM"
    return (attrs.get("gen_ai.operation.name") in MODEL_OPERATIONS or "gen_ai.input.messages" in attrs
            or "gen_ai.output.messages" in attrs
            or any(k.startswith(("gen_ai.prompt.", "gen_ai.completion.")) for k in attrs))


def is_tool_run(attrs: dict[str, Any]) -> bool:
    return (attrs.get("gen_ai.operation.name") == "execute_tool" or attrs.get("openinference.span.kind") == "TOOL"
            or attrs.get("traceloop.span.kind") == "tool")


def _model_name(attrs: dict[str, Any]) -> str | None:
    for key in ("gen_ai.response.model", "gen_ai.request.model", "llm.model_name"):
        value = attrs.get(key)
        if isinstance(value, str) and value and value != "unknown":  # OpenLLMetry writes "unknown"
            return value
    # OpenLLMetry's LangChain instrumentation keeps LangChain's own metadata beside an "unknown" model.
    found = [v for k, v in attrs.items() if k.endswith(".ls_model_name") and isinstance(v, str) and v]
    return found[0] if found else None


def _usage(attrs: dict[str, Any]) -> dict[str, Any]:
    pairs = (("input_tokens", ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt")),
             ("output_tokens", ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens",
                                "llm.token_count.completion")))
    usage = {}
    for name, keys in pairs:
        value = next((attrs[k] for k in keys if isinstance(attrs.get(k), int | float)), None)
        if value is not None:
            usage[name] = value
    return usage


def _params(attrs: dict[str, Any]) -> dict[str, Any]:
    params = json_value(attrs.get("llm.invocation_parameters"))
    params = dict(params) if isinstance(params, dict) else {}
    for name in REQUEST_PARAMS:
        if f"gen_ai.request.{name}" in attrs:
            value = attrs[f"gen_ai.request.{name}"]
            params[name] = list(value) if isinstance(value, tuple) else value
    return params


def _tools(attrs: dict[str, Any], params: dict[str, Any]) -> list[dict[str, Any]]:
    definitions = _as_list(json_value(attrs.get("gen_ai.tool.definitions")))
    definitions += [t.get("tool", {}).get("json_schema") for t in _unflatten(attrs, "llm.tools.") if isinstance(t, dict)]
    definitions += _unflatten(attrs, "llm.request.functions.")
    if not definitions:
        definitions = _as_list(params.get("tools"))
    return [t for t in (tool_from_definition(d) for d in definitions) if t is not None]


def read_model_call(attrs: dict[str, Any], skipped: Skipped) -> ModelCall:
    """A model call from a span's attributes, whichever convention wrote them."""
    if "gen_ai.input.messages" in attrs or "gen_ai.output.messages" in attrs:
        messages = _records(attrs.get("gen_ai.input.messages"), skipped)
        replies = _records(attrs.get("gen_ai.output.messages"), skipped)
        system = _instructions(attrs.get("gen_ai.system_instructions"), skipped)
        if system is not None and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": system}, *messages]
    elif any(k.startswith(("llm.input_messages.", "llm.output_messages.")) for k in attrs):
        messages = _openinference_records(_unflatten(attrs, "llm.input_messages."), skipped)
        replies = _openinference_records(_unflatten(attrs, "llm.output_messages."), skipped)
    else:
        messages = _legacy_records(_unflatten(attrs, "gen_ai.prompt."))
        replies = _legacy_records(_unflatten(attrs, "gen_ai.completion."))
    params = _params(attrs)
    replies = [{**r, "role": "assistant"} for r in replies if r["role"] != "tool"]
    return ModelCall(messages=messages, replies=replies, tools=_tools(attrs, params), model=_model_name(attrs),
                     params=params, usage=_usage(attrs))
