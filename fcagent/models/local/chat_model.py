"""A local Hugging Face causal LM as a proper LangChain chat model.

`langchain_huggingface.ChatHuggingFace` drops `tools` before they reach the prompt and cannot render
`ToolMessage`s; this model renders tools into the system prompt itself (the same text the text
protocol uses), reads the reply back into `AIMessage.tool_calls`, and shows tool results to the
model as `Observation:` turns. So one local model serves both of the graph's protocols, and any
LangChain agent (`create_agent`) as a native tool-calling model.

Four jobs, four modules: this LangChain wrapper (prompt, settings, the reply as a message),
`fcagent.models.local.batching` (concurrent calls combined into one batch), `fcagent.models.local.prefix_cache` (prompt KV
caches reused across an episode's steps) and `fcagent.models.local.generation` (the decode itself).

**One decode path.** `invoke`, `batch` and every kind of streaming run `_generate`, which hands the
reply's text to streaming callbacks (LangGraph's `stream_mode="messages"`, `astream_events`, Studio)
while it decodes and then returns the whole message. So an agent gets the same message whether or
not its graph is streamed, and the streamed chunks add up to it: text answers stream token by token;
a reply that is a call streams as one final chunk carrying its `tool_call_chunks`. (The model has no
`_stream` of its own: `model.stream()` yields the finished message in one piece.)

**The reply.** With tools bound, a reply that reads as calls to offered functions with arguments
that fit their schemas becomes `tool_calls` (content empty, as chat APIs return them); a call to an
unknown function, with schema-invalid arguments, or one that cannot be read becomes
`invalid_tool_calls` with the reason in `error` (content keeps the text); a reply in words is an
answer. Without tools (the text protocol) the reply is text and the graph parses it. With
`drop_ungrounded` (off by default), a reply's calls first lose every optional string argument whose
value no user message or tool result states (`drop_ungrounded_from_reply`), in either protocol, before
anything is streamed, parsed or recorded.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, PrivateAttr, field_validator

from fcagent.agent.prompting import (
    PromptStyle,
    render_system_prompt,
    to_chat_dicts,
    tool_schemas,
)
from fcagent.core import keys
from fcagent.core.calls import (
    Call,
    CallParseError,
    calls_error,
    drop_ungrounded_arguments,
    format_calls,
    looks_like_call,
    parse_calls,
)
from fcagent.models.local.batching import RequestBatcher
from fcagent.models.local.generation import (
    Decoded,
    DecodeRequest,
    DecodeSettings,
    Generator,
    call_end,
)
from fcagent.models.local.prefix_cache import PrefixCache

__all__ = ["LocalChatModel", "to_chat_dicts", "call_end", "reply_message"]

_IGNORED_CALL_KWARGS = {"tool_choice", "parallel_tool_calls", "stream", "ls_structured_output_format", "cancel"}


def reply_message(content: str, tools: list[dict[str, Any]] | None) -> AIMessage:
    """The reply text as an AIMessage (see the module docs: tool_calls, invalid_tool_calls or text)."""
    if not tools or not looks_like_call(content):
        return AIMessage(content=content)
    try:
        calls = parse_calls(content)
    except CallParseError as exc:
        return AIMessage(content=content, invalid_tool_calls=[invalid_tool_call(
            name=None, args=content, id=Call(name="_").id, error=f"parse_error: {exc}")])
    valid, invalid = [], []
    for c in calls:
        why = calls_error([{"name": c.name, "args": c.args}], tools)
        if why is None:
            valid.append(tool_call(name=c.name, args=c.args, id=c.id))
        else:
            invalid.append(invalid_tool_call(name=c.name, args=json.dumps(c.args, ensure_ascii=False), id=c.id,
                                             error=str(why)))
    return AIMessage(content="" if not invalid else content, tool_calls=valid, invalid_tool_calls=invalid)


class LocalChatModel(BaseChatModel):
    """A transformers model and tokenizer behind LangChain's chat-model interface."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_name: str = Field(description="The spec this model was loaded from (e.g. bundled:smollm2-135m).")
    max_new_tokens: int = Field(default=128, ge=1, description="Most tokens generated per reply.")
    temperature: float = Field(default=0.0, ge=0.0, description="0 means greedy decoding.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, description="Candidates per call, sampled from one shared prompt pass.")
    response_prefix: str = Field(default="", description="Text the reply is forced to start with.")
    preferred_protocol: str = "text"
    prompt_style: PromptStyle = Field(default="examples", description="How the functions are shown: `examples` "
                                      "(JSON schemas, worked examples in fcagent's graph) or `compact` (one signature "
                                      "line each, no examples). A trained run folder sets the style it was trained with.")
    stop_at_call_end: bool = Field(default=True, description="Stop once a reply that opens with a call closes it.")
    stop_sequences: list[str] = Field(default_factory=lambda: ["Observation:"],
                                      description="Generation stops here (a model that writes the tool's answer itself).")
    seed: int | None = None
    max_batch_rows: int = Field(default=8, ge=1, description="Most sequences decoded together when calls arrive "
                                "concurrently (1 turns batching off).")
    batch_wait_s: float = Field(default=0.02, ge=0.0, description="How long a batch leader waits for more callers, "
                                "once calls have been seen to overlap.")
    prefix_cache_size: int = Field(default=8, ge=0, description="Prompt KV caches kept for prefix reuse (0: off).")
    constrain: str | None = Field(default=None, description="Grammar-constrained decoding backend "
                                  "(`llguidance` or `xgrammar`): a reply given tools is always one schema-valid "
                                  "call. None: unconstrained.")
    constrain_calls: Literal["one", "many"] = Field(
        default="one", description="What the call grammar allows a reply: `one` call, or `many` (one call or a list "
        "of calls, for parallel calling: BFCL's parallel categories).")
    drop_ungrounded: bool = Field(
        default=False, description="Remove from a reply's calls every optional string argument whose value no "
        "user message or tool result states, so the function's default applies (see "
        "`fcagent.core.calls.drop_ungrounded_arguments`). Off: the calls are the model's own.")
    hf_model: Any = Field(default=None, exclude=True)
    tokenizer: Any = Field(default=None, exclude=True)
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
        return {"model_name": self.model_name, "temperature": self.temperature, "max_new_tokens": self.max_new_tokens}

    def bind_tools(self, tools: list[Any], **kwargs: Any):
        return self.bind(tools=tool_schemas(tools), **kwargs)

    # --- prompt --------------------------------------------------------------------------------

    def render(self, messages: list[BaseMessage], tools: list[dict[str, Any]] | None = None) -> str:
        """The exact prompt text the model sees (chat template applied, generation prompt added)."""
        if tools:
            messages = [SystemMessage(render_system_prompt(tools, style=self.prompt_style)), *messages]
        text = self.tokenizer.apply_chat_template(to_chat_dicts(messages), tokenize=False, add_generation_prompt=True)
        return text + self.response_prefix

    # --- decoding ------------------------------------------------------------------------------

    def _constrainer(self, backend: str) -> Any:
        from fcagent.models.local.constrained import Constrainer

        if backend not in self._constrainers:
            self._constrainers[backend] = Constrainer(self.tokenizer, backend)
        return self._constrainers[backend]

    def _run_batch(self, requests: list[DecodeRequest]) -> list[Decoded]:
        # A Generator per batch: a trained run swaps `hf_model` in after loading.
        return Generator(self.hf_model, self.tokenizer, prefix_cache=self._prefix_cache,
                         constrainer=self._constrainer).run(requests)

    def decode(self, request: DecodeRequest) -> Decoded:
        """Decode one request, batched with whatever compatible requests other threads have queued
        (equal settings, hence the same number of candidates and the same stop rules, on the same
        weights and prompt cache: copies of a model share its queue)."""
        key = (request.settings, id(self.hf_model), id(self._prefix_cache))
        return self._batcher.submit((self, request), key=key, rows=request.settings.n)

    def settings_for(self, kwargs: dict[str, Any], stop: list[str] | None = None, *,
                     grammar: bool = False) -> DecodeSettings:
        """The decode settings of a call: this model's fields, overridden by the call's options."""
        unknown = set(kwargs) - {"tools", "n", "temperature", "top_p", "max_new_tokens", "max_tokens", "seed"} \
            - _IGNORED_CALL_KWARGS
        if unknown:
            from fcagent.core.errors import UserError

            raise UserError(f"LocalChatModel got unknown call option(s) {', '.join(sorted(unknown))}")
        n = int(kwargs.get("n", self.n))
        temperature = float(kwargs.get("temperature", self.temperature))
        if n > 1 and temperature == 0:
            temperature = 0.7  # identical greedy copies teach nothing; n>1 means sampling
        return DecodeSettings(
            n=n, temperature=temperature, top_p=float(kwargs.get("top_p", self.top_p)),
            max_new_tokens=int(kwargs.get("max_new_tokens", kwargs.get("max_tokens", self.max_new_tokens))),
            stop=tuple(dict.fromkeys([*(stop or []), *self.stop_sequences])),
            seed=kwargs.get("seed", self.seed), constrain=self.constrain if grammar else None,
            constrain_calls=self.constrain_calls,
            prefix=self.response_prefix, stop_at_call_end=self.stop_at_call_end)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        tools = kwargs.get("tools")
        offered = _offered_tools(tools, run_manager)
        grammar_tools = offered if self.constrain else None
        drops_ungrounded = bool(self.drop_ungrounded and offered)
        settings = self.settings_for(kwargs, stop, grammar=bool(grammar_tools))
        message_id = f"lc_run--{run_manager.run_id}" if run_manager else None
        streams = run_manager is not None and settings.n == 1
        # A reply that is a call is held back from the stream where it may still change: parsed into
        # tool_calls (tools bound), or its invented arguments dropped (`drop_ungrounded`).
        holds_calls = bool(tools) or drops_ungrounded
        as_call = holds_calls and looks_like_call(settings.prefix)  # a forced call prefix: no text to stream

        def sink(index: int, piece: str) -> None:
            # Text answers stream token by token; a reply that is a call is handed over whole, at the end.
            nonlocal as_call
            if not as_call and holds_calls and looks_like_call(sent[0] + piece):
                as_call = True
            if not as_call:
                sent[0] += piece
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece, id=message_id))
                run_manager.on_llm_new_token(piece, chunk=chunk)  # type: ignore[union-attr]

        sent = [""]
        started = time.perf_counter()
        decoded = self.decode(DecodeRequest(prompt=self.render(messages, tools), settings=settings,
                                            tools=grammar_tools, sink=sink if streams else None,
                                            cancelled=kwargs.get("cancel")))
        elapsed = time.perf_counter() - started
        generations = []
        for i, (text, count, truncated) in enumerate(zip(decoded.texts, decoded.completion_tokens, decoded.truncated)):
            reply = settings.prefix + text
            if drops_ungrounded:
                reply = drop_ungrounded_from_reply(reply, offered or [], messages)
            msg = reply_message(reply, tools)
            msg.usage_metadata = {"input_tokens": decoded.prompt_tokens, "output_tokens": count,
                                  "total_tokens": decoded.prompt_tokens + count}
            msg.response_metadata = {"model_name": self.model_name, "latency_s": elapsed,
                                     "finish_reason": "length" if truncated else ("tool_calls" if msg.tool_calls else "stop")}
            if i == 0 and message_id:
                msg.id = message_id
            generations.append(ChatGeneration(message=msg))
        if streams:
            self._stream_rest(generations[0].message, sent[0], message_id, run_manager)
        usage = {"input_tokens": decoded.prompt_tokens, "output_tokens": sum(decoded.completion_tokens),
                 "total_tokens": decoded.prompt_tokens + sum(decoded.completion_tokens)}
        return ChatResult(generations=generations, llm_output={"token_usage": usage, "model_name": self.model_name})

    @staticmethod
    def _stream_rest(message: AIMessage, sent: str, message_id: str | None, run_manager: Any) -> None:
        """The last streamed chunk: whatever text was not sent yet, the tool calls, usage, and the
        finish reason, so the chunks a streaming consumer adds up equal the returned message."""
        content = message.content if isinstance(message.content, str) else ""
        rest = content[len(sent):] if content.startswith(sent) else content
        chunk = AIMessageChunk(
            content=rest, id=message_id, usage_metadata=message.usage_metadata, chunk_position="last",
            response_metadata={"finish_reason": message.response_metadata.get("finish_reason")},
            tool_call_chunks=[tool_call_chunk(name=c["name"], args=json.dumps(c["args"], ensure_ascii=False),
                                              id=c["id"], index=i) for i, c in enumerate(message.tool_calls)])
        run_manager.on_llm_new_token(rest, chunk=ChatGenerationChunk(message=chunk))


def _run_owned(items: list[tuple[LocalChatModel, DecodeRequest]]) -> list[Decoded]:
    """A batch from the shared queue, run by the model (copy) that queued its first request: all of
    them share its weights and prompt cache (the batch key says so)."""
    return items[0][0]._run_batch([request for _, request in items])


def _offered_tools(tools: list[dict[str, Any]] | None, run_manager: Any) -> list[dict[str, Any]] | None:
    """The functions a reply may call: the bound tools, or in the text protocol (schemas in the prompt,
    none bound) the ones the graph put in the run's metadata for the recorder."""
    return tools or (getattr(run_manager, "metadata", None) or {}).get(keys.TOOLS)


def drop_ungrounded_from_reply(reply: str, tools: list[dict[str, Any]], messages: list[BaseMessage]) -> str:
    """The reply with its calls' ungrounded optional string arguments removed (`drop_ungrounded_arguments`;
    what counts as stated: user messages and tool results, not system prompts, which hold the functions'
    own descriptions and examples, nor the model's earlier turns). A reply that is not a readable call,
    or loses nothing, is returned unchanged."""
    if not looks_like_call(reply):
        return reply
    try:
        calls = parse_calls(reply)
    except CallParseError:
        return reply
    said = "\n".join(m.text for m in messages if isinstance(m, (HumanMessage, ToolMessage)))
    kept = drop_ungrounded_arguments(calls, tools, said)
    return reply if all(a is b for a, b in zip(kept, calls)) else format_calls(kept)
