"""A local Hugging Face causal LM as a proper LangChain chat model.

`langchain_huggingface.ChatHuggingFace` drops `tools` before they reach the prompt and cannot render
`ToolMessage`s; this model renders tools into the system prompt itself (the same text the text
protocol uses), reads the reply back into `AIMessage.tool_calls`, and shows tool results to the
model as `Observation:` turns. So one local model serves both of the graph's protocols, and any
LangChain agent (`create_agent`) as a native tool-calling model.

Five jobs, five modules: this LangChain wrapper (prompt, settings, the reply as a message),
`replies` (tool choice, response formats, reading a reply), `batching` (concurrent calls combined into
one batch), `prefix_cache` (prompt KV caches reused across an episode's steps) and `generation` (the
decode itself, and what its runtimes share).

**Two runtimes, one model.** The tokens are decoded by transformers (`hf_model`, `generation.Generator`)
or by llama.cpp from a GGUF (`engine`, `llama_cpp.LlamaCppEngine`; `?runtime=llama.cpp` in a spec).
Only that step differs: the prompt, tool choice, the call grammar, stop rules, streaming and reading
the reply are this class's and `generation`'s, one implementation for both.

**One decode path.** `invoke`, `batch`, `stream` and every kind of callback streaming plan a call the
same way (`_plan`) and decode it the same way (`decode`). `_generate` hands the reply's text to
streaming callbacks while it decodes; `_stream` yields it as `AIMessageChunk`s from the same decode
(run on a worker thread). Either way text answers stream token by token, a reply that is a call comes
as one final chunk carrying its `tool_call_chunks`, usage and finish reason, and the chunks add up to
the message `invoke` returns.

**What a call may ask.** `tool_choice` (`bind_tools(tools, tool_choice=...)`): `none` offers no tools,
`any` / `required` / a function's name force a call, held to the tools' schemas (or that one tool's)
by the call grammar (`constrain`, llguidance by default). `response_format` (`json_object`,
`json_schema`) holds the whole reply to a JSON schema the same way; `with_structured_output` uses
`function_calling` (a forced call), `json_schema` or `json_mode`. `max_tokens`, `stop` and `timeout`
are honoured; `max_retries` retries a decode that raised. With `drop_ungrounded` (off by default), a
reply's calls first lose every optional string argument whose value no user message or tool result
states, in either protocol, before anything is streamed, parsed or recorded.
"""

from __future__ import annotations

import importlib.util
import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, SystemMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import AliasChoices, ConfigDict, Field, PrivateAttr, field_validator

from fcagent.agent.prompting import PromptStyle, render_system_prompt, to_chat_dicts, tool_schemas
from fcagent.core import keys
from fcagent.core.calls import looks_like_call
from fcagent.core.errors import UserError
from fcagent.models.local.batching import RequestBatcher
from fcagent.models.local.generation import Decoded, DecodeRequest, DecodeSettings, Generator, call_end
from fcagent.models.local.prefix_cache import PrefixCache
from fcagent.models.local.replies import ToolChoice, drop_ungrounded_from_reply, reply_message, response_schema

__all__ = ["LocalChatModel", "to_chat_dicts", "call_end", "reply_message"]

# Call options LangChain passes that change nothing here: `parallel_tool_calls` (a reply may always hold
# several calls), `stream` (the method called decides), `ls_structured_output_format` (tracing metadata).
_PASSED_THROUGH = {"parallel_tool_calls", "stream", "ls_structured_output_format", "cancel"}
_CALL_OPTIONS = {"tools", "tool_choice", "response_format", "n", "temperature", "top_p", "max_new_tokens",
                 "max_tokens", "seed", "logprobs", "top_logprobs"}


class LocalChatModel(BaseChatModel):
    """A transformers model and tokenizer behind LangChain's chat-model interface."""

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    model_name: str = Field(description="The spec this model was loaded from (e.g. bundled:smollm2-135m).")
    max_new_tokens: int = Field(default=128, ge=1, validation_alias=AliasChoices("max_new_tokens", "max_tokens"),
                                description="Most tokens generated per reply (`max_tokens`, LangChain's name, too).")
    temperature: float = Field(default=0.0, ge=0.0, description="0 means greedy decoding.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, description="Candidates per call, sampled from one shared prompt pass.")
    response_prefix: str = Field(default="", description="Text the reply is forced to start with.")
    preferred_protocol: str = "text"
    prompt_style: PromptStyle = Field(default=PromptStyle.EXAMPLES, description="How the functions are shown: "
                                      "`examples` (JSON schemas, worked examples in fcagent's graph) or `compact` (one "
                                      "signature line each, no examples). A trained run folder sets the style it was "
                                      "trained with.")
    stop_at_call_end: bool = Field(default=True, description="Stop once a reply that opens with a call closes it.")
    stop_sequences: list[str] = Field(default_factory=lambda: ["Observation:"],
                                      description="Generation stops here (a model that writes the tool's answer itself).")
    stop: list[str] | None = Field(default=None, description="More stop strings (LangChain's standard `stop`).")
    timeout: float | None = Field(default=None, gt=0, description="Seconds a reply may take; decoding stops there "
                                  "(the reply is cut, as at the token limit).")
    max_retries: int = Field(default=0, ge=0, description="Times a decode that raised (e.g. out of memory) is tried "
                             "again.")
    seed: int | None = None
    max_batch_rows: int = Field(default=8, ge=1, description="Most sequences decoded together when calls arrive "
                                "concurrently (1 turns batching off).")
    batch_wait_s: float = Field(default=0.02, ge=0.0, description="How long a batch leader waits for more callers, "
                                "once calls have been seen to overlap.")
    prefix_cache_size: int = Field(default=8, ge=0, description="Prompt KV caches kept for prefix reuse (0: off).")
    constrain: str | None = Field(default=None, description="Grammar-constrained decoding backend "
                                  "(`llguidance` or `xgrammar`): a reply given tools is always one schema-valid "
                                  "call. None: unconstrained, except where a call asks for a call or a schema.")
    constrain_calls: Literal["one", "many"] = Field(
        default="one", description="What the call grammar allows a reply: `one` call, or `many` (one call or a list "
        "of calls, for parallel calling: BFCL's parallel categories).")
    drop_ungrounded: bool = Field(
        default=False, description="Remove from a reply's calls every optional string argument whose value no "
        "user message or tool result states, so the function's default applies (see "
        "`fcagent.core.calls.drop_ungrounded_arguments`). Off: the calls are the model's own.")
    runtime: Literal["transformers", "llama.cpp"] = Field(
        default="transformers", description="What decodes the tokens: transformers, or llama.cpp from the model's "
        "GGUF (a bundled model's, or a run folder's from `fcagent export-gguf`). Set when the model is loaded.")
    gguf: Literal["q8_0", "f16"] | None = Field(default=None, description="Which of a run folder's GGUF files the "
                                                "llama.cpp runtime loads (default: q8_0 if exported, else f16).")
    hf_model: Any = Field(default=None, exclude=True)
    tokenizer: Any = Field(default=None, exclude=True)
    engine: Any = Field(default=None, exclude=True, description="The llama.cpp runtime's `LlamaCppEngine`.")
    # Shared by model_copy()s (a shallow copy): one model in memory, one queue, one prompt cache.
    _batcher: Any = PrivateAttr(default=None)
    _prefix_cache: Any = PrivateAttr(default=None)
    _constrainers: dict = PrivateAttr(default_factory=dict)  # backend -> Constrainer (compiled grammars cached)

    def model_post_init(self, __context: Any) -> None:
        self._batcher = RequestBatcher(_run_owned, max_rows=self.max_batch_rows, wait_s=self.batch_wait_s)
        self._prefix_cache = PrefixCache(self.prefix_cache_size)

    @field_validator("constrain")
    @classmethod
    def _known_backend(cls, value: str | None) -> str | None:
        from fcagent.models.local.constrained import BACKENDS

        if value is not None and value not in BACKENDS:
            raise ValueError(f"`constrain` must be one of {', '.join(BACKENDS)} (or unset), got {value!r}")
        return value

    @property
    def _llm_type(self) -> str:
        return "fcagent-local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "temperature": self.temperature, "max_new_tokens": self.max_new_tokens,
                "runtime": self.runtime}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(ls_provider="fcagent", ls_model_name=kwargs.get("model", self.model_name),
                                 ls_model_type="chat",
                                 ls_temperature=kwargs.get("temperature", self.temperature),
                                 ls_max_tokens=kwargs.get("max_tokens", kwargs.get("max_new_tokens", self.max_new_tokens)))
        stops = stop or self.stop
        if stops:
            params["ls_stop"] = stops
        return params

    def bind_tools(self, tools: list[Any], *, tool_choice: Any = None, **kwargs: Any):
        schemas = tool_schemas(tools)
        ToolChoice.read(tool_choice, schemas)  # a bad choice fails here, not at the first call
        return self.bind(tools=schemas, **({"tool_choice": tool_choice} if tool_choice is not None else {}), **kwargs)

    def with_structured_output(self, schema: Any, *, include_raw: bool = False,
                               method: Literal["function_calling", "json_mode", "json_schema"] = "function_calling",
                               **kwargs: Any):
        """`function_calling`: a call to the schema as a tool, forced by the call grammar. `json_schema`: the
        reply is JSON of the schema, held to it by the grammar. `json_mode`: any JSON object."""
        if method == "function_calling":
            return super().with_structured_output(schema, include_raw=include_raw, **kwargs)
        if method not in ("json_mode", "json_schema"):
            raise UserError(f"`method` must be function_calling, json_mode or json_schema, got {method!r}")
        kwargs.pop("strict", None)
        if kwargs:
            raise UserError(f"with_structured_output got unknown argument(s) {', '.join(sorted(kwargs))}")
        from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
        from langchain_core.runnables import RunnableMap, RunnablePassthrough
        from langchain_core.utils.function_calling import convert_to_json_schema
        from langchain_core.utils.pydantic import is_basemodel_subclass

        is_model = isinstance(schema, type) and is_basemodel_subclass(schema)
        if method == "json_schema":
            fmt = {"type": "json_schema", "json_schema": {"name": getattr(schema, "__name__", "output"),
                                                          "schema": convert_to_json_schema(schema)}}
        else:
            fmt = {"type": "json_object"}
        llm = self.bind(response_format=fmt, ls_structured_output_format={"kwargs": {"method": method},
                                                                          "schema": schema})
        parser = PydanticOutputParser(pydantic_object=schema) if is_model else JsonOutputParser()
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(parsed=lambda x: parser.invoke(x["raw"]), parsing_error=lambda _: None)
        fallback = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks([fallback], exception_key="parsing_error")

    # --- prompt --------------------------------------------------------------------------------

    def render(self, messages: list[BaseMessage], tools: list[dict[str, Any]] | None = None, *,
               prefix: str | None = None) -> str:
        """The exact prompt text the model sees (chat template applied, generation prompt added)."""
        if tools:
            messages = [SystemMessage(render_system_prompt(tools, style=self.prompt_style)), *messages]
        text = self.tokenizer.apply_chat_template(to_chat_dicts(messages), tokenize=False, add_generation_prompt=True)
        return text + (self.response_prefix if prefix is None else prefix)

    # --- decoding ------------------------------------------------------------------------------

    def _constrainer(self, backend: str) -> Any:
        from fcagent.models.local.constrained import Constrainer

        if backend not in self._constrainers:
            self._constrainers[backend] = Constrainer(self.tokenizer, backend)
        return self._constrainers[backend]

    def _run_batch(self, requests: list[DecodeRequest]) -> list[Decoded]:
        if self.engine is not None:
            return self.engine.run(requests, self._constrainer)
        # A Generator per batch: a trained run swaps `hf_model` in after loading.
        return Generator(self.hf_model, self.tokenizer, prefix_cache=self._prefix_cache,
                         constrainer=self._constrainer).run(requests)

    def clear_prompt_cache(self) -> None:
        """Forget the prompts kept for prefix reuse (benchmarks start cold)."""
        if self.engine is not None:
            self.engine.clear()
        self._prefix_cache.clear()

    def decode(self, request: DecodeRequest) -> Decoded:
        """Decode one request, batched with whatever compatible requests other threads have queued
        (equal settings, hence the same number of candidates and the same stop rules, on the same
        weights and prompt cache: copies of a model share its queue). A decode that raised is tried
        again `max_retries` times."""
        weights = self.engine if self.engine is not None else self.hf_model
        key = (request.settings, id(weights), id(self._prefix_cache))
        for attempt in range(self.max_retries + 1):
            try:
                return self._batcher.submit((self, request), key=key, rows=request.settings.n)
            except (RuntimeError, MemoryError):
                if attempt == self.max_retries:
                    raise
        raise AssertionError("unreachable")

    def settings_for(self, kwargs: dict[str, Any], stop: list[str] | None = None, *,
                     grammar: str | None = None, prefix: str | None = None) -> DecodeSettings:
        """The decode settings of a call: this model's fields, overridden by the call's options.
        `grammar`: the constrained-decoding backend of this call, if any."""
        unknown = set(kwargs) - _CALL_OPTIONS - _PASSED_THROUGH
        if unknown:
            raise UserError(f"LocalChatModel got unknown call option(s) {', '.join(sorted(unknown))}")
        n = int(kwargs.get("n", self.n))
        temperature = float(kwargs.get("temperature", self.temperature))
        if n > 1 and temperature == 0:
            temperature = 0.7  # identical greedy copies teach nothing; n>1 means sampling
        return DecodeSettings(
            n=n, temperature=temperature, top_p=float(kwargs.get("top_p", self.top_p)),
            max_new_tokens=int(kwargs.get("max_new_tokens", kwargs.get("max_tokens", self.max_new_tokens))),
            stop=tuple(dict.fromkeys([*(stop or []), *(self.stop or []), *self.stop_sequences])),
            seed=kwargs.get("seed", self.seed), constrain=grammar, constrain_calls=self.constrain_calls,
            prefix=self.response_prefix if prefix is None else prefix, stop_at_call_end=self.stop_at_call_end,
            timeout_s=self.timeout,
            logprobs=int(kwargs.get("top_logprobs") or 0) if kwargs.get("logprobs") else None)

    def _plan(self, messages: list[BaseMessage], stop: list[str] | None, run_manager: Any,
              kwargs: dict[str, Any]) -> _Plan:
        """Everything one call decides before decoding, for `_generate` and `_stream` alike."""
        schema = response_schema(kwargs.get("response_format"))
        bound = kwargs.get("tools")
        choice = ToolChoice.read(kwargs.get("tool_choice"), bound)
        tools = None if schema is not None else choice.offered(bound)
        offered = _offered_tools(tools, run_manager) if choice.mode != "none" else None
        forced = choice.mode == "required" and bool(tools)
        grammar_tools = offered if (self.constrain or forced) and schema is None else None
        backend = (self.constrain or _default_backend(kwargs)) if (grammar_tools or schema is not None) else None
        prefix = "" if schema is not None else None  # a JSON reply is not forced to open as a call
        settings = self.settings_for(kwargs, stop, grammar=backend, prefix=prefix)
        drops = bool(self.drop_ungrounded and offered)
        return _Plan(prompt=self.render(messages, tools, prefix=prefix), settings=settings, tools=tools,
                     offered=offered, grammar_tools=grammar_tools, schema=schema, drops_ungrounded=drops,
                     holds_calls=bool(tools) or drops,
                     message_id=f"lc_run--{run_manager.run_id}" if run_manager else None)

    def _replies(self, plan: _Plan, messages: list[BaseMessage], sink: _Sink | None,
                 cancelled: Any = None) -> tuple[list[ChatGeneration], dict[str, int]]:
        """Decode a planned call; its replies as messages, and the call's usage."""
        started = time.perf_counter()
        decoded = self.decode(DecodeRequest(prompt=plan.prompt, settings=plan.settings, tools=plan.grammar_tools,
                                            schema=plan.schema, sink=sink, cancelled=cancelled))
        elapsed = time.perf_counter() - started
        generations = []
        for i, (text, count, truncated) in enumerate(zip(decoded.texts, decoded.completion_tokens, decoded.truncated)):
            reply = plan.settings.prefix + text
            if plan.drops_ungrounded:
                reply = drop_ungrounded_from_reply(reply, plan.offered or [], messages)
            msg = reply_message(reply, plan.tools)
            msg.usage_metadata = {"input_tokens": decoded.prompt_tokens, "output_tokens": count,
                                  "total_tokens": decoded.prompt_tokens + count}
            msg.response_metadata = {"model_name": self.model_name, "latency_s": elapsed,
                                     "finish_reason": "length" if truncated else ("tool_calls" if msg.tool_calls else "stop")}
            if decoded.logprobs is not None:  # where LangChain's OpenAI models put them
                msg.response_metadata["logprobs"] = {"content": decoded.logprobs[i]}
            if i == 0 and plan.message_id:
                msg.id = plan.message_id
            generations.append(ChatGeneration(message=msg))
        output = sum(decoded.completion_tokens)
        return generations, {"input_tokens": decoded.prompt_tokens, "output_tokens": output,
                             "total_tokens": decoded.prompt_tokens + output}

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        plan = self._plan(messages, stop, run_manager, kwargs)
        sink = None
        if run_manager is not None and plan.settings.n == 1:
            def emit(piece: str) -> None:
                run_manager.on_llm_new_token(piece, chunk=ChatGenerationChunk(
                    message=AIMessageChunk(content=piece, id=plan.message_id)))
            sink = _Sink(plan, emit)
        generations, usage = self._replies(plan, messages, sink, kwargs.get("cancel"))
        if sink is not None:
            last = _last_chunk(generations[0].message, sink.sent, plan.message_id)
            run_manager.on_llm_new_token(last.content, chunk=ChatGenerationChunk(message=last))  # type: ignore[union-attr]
        return ChatResult(generations=generations, llm_output={"token_usage": usage, "model_name": self.model_name})

    def _should_stream(self, *, async_api: bool, run_manager: Any = None, **kwargs: Any) -> bool:
        # `invoke` decodes through `_generate` even when a streaming handler listens (LangGraph's
        # stream_mode="messages", Studio): its callbacks get the tokens, and the agent gets the exact
        # message, `invalid_tool_calls` and their reasons included (chunks cannot carry a call that parses
        # but breaks its schema: summed, it reads as a valid one). Only `stream()` iterates `_stream`.
        return bool(kwargs.get("stream")) and super()._should_stream(async_api=async_api, run_manager=run_manager,
                                                                      **kwargs)

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        """The same decode as `_generate`, on a worker thread, its pieces yielded as they come (LangChain's
        `stream` hands each to the callbacks itself)."""
        plan = self._plan(messages, stop, run_manager, kwargs)
        if plan.settings.n != 1:
            raise UserError("streaming returns one reply: call with n=1 (or use invoke / generate for candidates)")
        pieces: queue.Queue[str | None] = queue.Queue()
        sink = _Sink(plan, pieces.put)
        stopped = threading.Event()  # set when the consumer stops reading: the decode stops too
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["generations"] = self._replies(plan, messages, sink, stopped)[0]
            except BaseException as exc:  # noqa: BLE001 - raised in the consumer's thread below
                outcome["error"] = exc
            finally:
                pieces.put(None)

        threading.Thread(target=work, name="fcagent-stream", daemon=True).start()
        try:
            while (piece := pieces.get()) is not None:
                yield ChatGenerationChunk(message=AIMessageChunk(content=piece, id=plan.message_id))
            if "error" in outcome:
                raise outcome["error"]
            yield ChatGenerationChunk(message=_last_chunk(outcome["generations"][0].message, sink.sent,
                                                          plan.message_id))
        finally:
            stopped.set()


@dataclass
class _Plan:
    """One call's decisions (see `LocalChatModel._plan`)."""

    prompt: str
    settings: DecodeSettings
    tools: list[dict[str, Any]] | None  # offered natively: the reply is parsed into tool_calls
    offered: list[dict[str, Any]] | None  # what a reply may call (bound tools, or the text protocol's)
    grammar_tools: list[dict[str, Any]] | None  # the call grammar's functions, when constrained
    schema: dict[str, Any] | None  # the JSON schema the reply is held to (response_format)
    drops_ungrounded: bool
    holds_calls: bool  # a reply that is a call is held back from the stream (it may still change)
    message_id: str | None


@dataclass
class _Sink:
    """Where a decode's text goes while it is decoded: text answers piece by piece; a reply that turns
    out to be a call is held back and handed over whole at the end (parsed into tool_calls, or edited
    by `drop_ungrounded`)."""

    plan: _Plan
    emit: Any
    sent: str = ""
    as_call: bool = field(init=False)

    def __post_init__(self) -> None:
        self.as_call = self.plan.holds_calls and looks_like_call(self.plan.settings.prefix)

    def __call__(self, index: int, piece: str) -> None:
        if not self.as_call and self.plan.holds_calls and looks_like_call(self.sent + piece):
            self.as_call = True
        if not self.as_call:
            self.sent += piece
            self.emit(piece)


def _last_chunk(message: AIMessage, sent: str, message_id: str | None) -> AIMessageChunk:
    """The last streamed chunk: whatever text was not sent yet, the tool calls, usage, and the finish
    reason, so the chunks a streaming consumer adds up equal the returned message."""
    content = message.content if isinstance(message.content, str) else ""
    rest = content[len(sent):] if content.startswith(sent) else content
    return AIMessageChunk(
        content=rest, id=message_id, usage_metadata=message.usage_metadata, chunk_position="last",
        response_metadata={"finish_reason": message.response_metadata.get("finish_reason"),
                           "model_name": message.response_metadata.get("model_name")},
        tool_call_chunks=[tool_call_chunk(name=c["name"], args=json.dumps(c["args"], ensure_ascii=False),
                                          id=c["id"], index=i) for i, c in enumerate(message.tool_calls)])


def _default_backend(kwargs: dict[str, Any]) -> str:
    """The grammar backend of a call that forces a call or a schema on a model set to decode freely."""
    if importlib.util.find_spec("llguidance") is None:
        what = "`response_format`" if kwargs.get("response_format") else "`tool_choice` forcing a call"
        raise UserError(f"{what} needs constrained decoding: pip install 'fcagent[constrained]'")
    return "llguidance"


def _run_owned(items: list[tuple[LocalChatModel, DecodeRequest]]) -> list[Decoded]:
    """A batch from the shared queue, run by the model (copy) that queued its first request: all of
    them share its weights and prompt cache (the batch key says so)."""
    return items[0][0]._run_batch([request for _, request in items])


def _offered_tools(tools: list[dict[str, Any]] | None, run_manager: Any) -> list[dict[str, Any]] | None:
    """The functions a reply may call: the bound tools, or in the text protocol (schemas in the prompt,
    none bound) the ones the graph put in the run's metadata for the recorder."""
    return tools or (getattr(run_manager, "metadata", None) or {}).get(keys.TOOLS)
