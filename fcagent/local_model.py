"""A local Hugging Face causal LM as a proper LangChain chat model.

`langchain_huggingface.ChatHuggingFace` drops `tools` before they reach the prompt and cannot render
`ToolMessage`s; this model renders tools into the system prompt itself (the same text the text
protocol uses), parses the reply back into `AIMessage.tool_calls`, and shows tool results to the
model as `Observation:` turns. So one local model serves both of the graph's protocols.

`n` candidates share one prompt pass: the prompt is pre-filled once and its KV cache repeated `n`
times (HF's `num_return_sequences` would recompute the prompt for every copy). Prompt caches are
kept (a few, least recently used first out) and reused for the longest shared token prefix: step
k+1 of an agent episode is step k's prompt plus a reply and an observation, so it pre-fills only
those (~50 tokens instead of ~600).

Concurrent calls are batched. On a CPU, single-stream decoding of a 135M model is bound by per-step
overhead (~26 tok/s on 2 cores, ~2% of the matmul ceiling), so a step over 8 rows costs about what
a step over one does. Calls arriving from several threads (`run_problems(concurrency=8)`) are
combined into one left-padded `generate` by whichever caller holds the model (flat combining: no
background thread, and a lone caller runs at once).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, PrivateAttr, field_validator

from fcagent.calls import Call, CallParseError, format_calls, parse_calls
from fcagent.prompting import OBSERVATION_PREFIX, render_system_prompt, tool_schemas

__all__ = ["LocalChatModel", "to_chat_dicts", "call_end"]


def call_end(text: str) -> int | None:
    """Where a reply that opens with a call (`{`, `[` or `name(`) closes it, or None if it has not.

    Generation stops there: a small model that has written its call tends to keep talking (and to
    invent the tool's answer), which costs decode time and teaches nothing. Brackets inside JSON or
    Python strings do not count.
    """
    i = len(text) - len(text.lstrip())
    if i >= len(text):
        return None
    head = text[i]
    if head not in "{[":
        j = i
        while j < len(text) and (text[j].isalnum() or text[j] in "_."):
            j += 1
        if j == i or j >= len(text) or text[j] != "(":
            return None
    depth, quote, escaped = 0, "", False
    for k in range(i, len(text)):
        ch = text[k]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "{[(":
            depth += 1
        elif ch in "}])":
            depth -= 1
            if depth == 0:
                return k + 1
    return None


def to_chat_dicts(messages: list[BaseMessage]) -> list[dict[str, str]]:
    """Messages as the role/content dicts a chat template renders, tool traffic as plain text."""
    out: list[dict[str, str]] = []
    for m in messages:
        content = m.content if isinstance(m.content, str) else str(m.content)
        if isinstance(m, SystemMessage):
            role = "system"
        elif isinstance(m, AIMessage):
            role = "assistant"
            if m.tool_calls and not content.strip():
                content = format_calls([Call(name=t["name"], args=t["args"], id=t.get("id") or "x")
                                        for t in m.tool_calls])
        elif isinstance(m, ToolMessage):
            role, content = "user", OBSERVATION_PREFIX + content
        else:
            role = "user"
        if out and out[-1]["role"] == role == "system":
            out[-1]["content"] += "\n\n" + content
        else:
            out.append({"role": role, "content": content})
    return out


@dataclass
class _Request:
    """One caller's generation request, waiting to be served (possibly inside another caller's batch)."""

    prompt: str
    n: int
    key: tuple  # requests batch together only when their decoding settings are equal
    tools: list[dict[str, Any]] | None = None  # the call grammar's functions, when decoding is constrained
    done: threading.Event = field(default_factory=threading.Event)
    result: tuple[list[str], int, list[int]] | None = None
    error: BaseException | None = None


class LocalChatModel(BaseChatModel):
    """A transformers model and tokenizer behind LangChain's chat-model interface."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_name: str = Field(description="The spec this model was loaded from (e.g. bundled:smollm2-135m).")
    max_new_tokens: int = Field(default=128, description="Most tokens generated per reply.")
    temperature: float = Field(default=0.0, description="0 means greedy decoding.")
    top_p: float = Field(default=1.0)
    n: int = Field(default=1, description="Candidates per call, sampled from one shared prompt pass.")
    response_prefix: str = Field(default="", description="Text the reply is forced to start with.")
    preferred_protocol: str = "text"
    prompt_style: str = Field(default="examples", description="'examples' (teacher-style prompt) or 'zero-shot'.")
    stop_at_call_end: bool = Field(default=True, description="Stop once a reply that opens with a call closes it.")
    stop_sequences: list[str] = Field(default_factory=lambda: ["Observation:"],
                                      description="Generation stops here (a model that writes the tool's answer itself).")
    seed: int | None = None
    max_batch_rows: int = Field(default=8, description="Most sequences decoded together when calls arrive "
                                "concurrently (1 turns batching off).")
    batch_wait_s: float = Field(default=0.02, description="How long a batch leader waits for more callers, once "
                                "calls have been seen to overlap.")
    prefix_cache_size: int = Field(default=8, description="Prompt KV caches kept for prefix reuse (0: off).")
    constrain: str | None = Field(default=None, description="Grammar-constrained decoding backend "
                                  "(`llguidance` or `xgrammar`): a reply given tools is always one schema-valid "
                                  "call. None: unconstrained.")
    hf_model: Any = Field(default=None, exclude=True)
    tokenizer: Any = Field(default=None, exclude=True)
    # Shared by model_copy()s (a shallow copy): one model in memory, one queue, one lock.
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _pending: list = PrivateAttr(default_factory=list)
    _pending_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _overlap: list = PrivateAttr(default_factory=lambda: [False])
    _prefix_caches: list = PrivateAttr(default_factory=list)  # [(token ids list, DynamicCache)], newest last
    _constrainers: dict = PrivateAttr(default_factory=dict)  # backend -> Constrainer (compiled grammars cached)

    @field_validator("constrain")
    @classmethod
    def _known_backend(cls, value: str | None) -> str | None:
        from fcagent.constrained import BACKENDS

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
            prompt = render_system_prompt(tools)
            messages = [SystemMessage(prompt), *messages]
        text = self.tokenizer.apply_chat_template(to_chat_dicts(messages), tokenize=False, add_generation_prompt=True)
        return text + self.response_prefix

    # --- generation ----------------------------------------------------------------------------

    def _constrainer(self) -> Any:
        from fcagent.constrained import Constrainer

        assert self.constrain is not None
        if self.constrain not in self._constrainers:
            self._constrainers[self.constrain] = Constrainer(self.tokenizer, self.constrain)
        return self._constrainers[self.constrain]

    def _sample(self, prompt: str, *, n: int, temperature: float, max_new_tokens: int,
                stop: list[str] | None, tools: list[dict[str, Any]] | None = None) -> tuple[list[str], int, list[int]]:
        """`n` replies to `prompt`: (texts, prompt tokens, completion tokens per reply)."""
        # Requests batch together only with equal settings and equal n (one prefill per prompt, repeated n
        # times); with constrained decoding each row has its own grammar, so the tools may differ.
        grammar = self.constrain if tools else None
        req = _Request(prompt=prompt, n=n, key=(temperature, max_new_tokens, tuple(stop or ()), n, grammar),
                       tools=tools if grammar else None)
        with self._pending_lock:
            self._pending.append(req)
        while not req.done.is_set():
            with self._lock:
                if req.done.is_set():  # served inside another caller's batch while we waited
                    break
                if self.max_batch_rows > 1 and self._overlap[0] and self.batch_wait_s > 0:
                    time.sleep(self.batch_wait_s)  # let the other threads' next calls arrive
                with self._pending_lock:
                    batch, rows = [], 0
                    for other in [req] + [r for r in self._pending if r is not req]:
                        if other.key == req.key and (not batch or rows + other.n <= self.max_batch_rows):
                            batch.append(other)
                            rows += other.n
                    for r in batch:
                        self._pending.remove(r)
                    self._overlap[0] = len(batch) > 1 or bool(self._pending)
                try:
                    results = self._generate_rows([r.prompt for r in batch], [r.n for r in batch],
                                                  temperature=temperature, max_new_tokens=max_new_tokens, stop=stop,
                                                  tools=[r.tools for r in batch])
                    for r, res in zip(batch, results):
                        r.result = res
                except BaseException as exc:  # noqa: BLE001 - every caller in the batch gets the error
                    for r in batch:
                        r.error = exc
                finally:
                    for r in batch:
                        r.done.set()
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    def _generate_rows(self, prompts: list[str], ns: list[int], *, temperature: float, max_new_tokens: int,
                       stop: list[str] | None, tools: list[Any] | None = None) -> list[tuple[list[str], int, list[int]]]:
        import torch

        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        gen: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": pad_id}
        if temperature > 0:
            gen |= {"do_sample": True, "temperature": temperature, "top_p": self.top_p}
        else:
            gen |= {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        if stop:
            gen |= {"stop_strings": stop, "tokenizer": self.tokenizer}
        if len(prompts) == 1:
            enc = self.tokenizer(prompts[0], return_tensors="pt", add_special_tokens=False)
            prompt_lens = [enc["input_ids"].shape[1]]
            ids = enc["input_ids"].repeat(ns[0], 1)
            mask = torch.ones_like(ids)
        else:  # several callers (equal n): left-padded to one length
            enc = self.tokenizer(prompts, return_tensors="pt", add_special_tokens=False, padding=True,
                                 padding_side="left")
            prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
            ids, mask = enc["input_ids"], enc["attention_mask"]
        width = ids.shape[1]
        if self.stop_at_call_end:
            gen["stopping_criteria"] = [_call_end_criteria(self.tokenizer, width, self.response_prefix)]
        if self.constrain and tools and any(tools):
            constrainer = self._constrainer()
            rows = [constrainer.row(t, self.response_prefix) for t, n in zip(tools, ns) for _ in range(n)]
            gen["logits_processor"] = [constrainer.processor(rows, width)]
            if temperature > 0:
                # generate() runs custom processors after its own warpers; a top-k cut made before the
                # grammar's mask can leave no allowed token. So the mask goes first and the same warpers
                # (temperature, the model's top-k, top-p) follow it here.
                from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

                top_k = getattr(self.hf_model.generation_config, "top_k", None)
                gen["logits_processor"] += [TemperatureLogitsWarper(temperature),
                                            *([TopKLogitsWarper(top_k)] if top_k else []),
                                            *([TopPLogitsWarper(self.top_p)] if self.top_p < 1 else [])]
                gen |= {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
        with torch.inference_mode():
            if self.seed is not None:
                torch.manual_seed(self.seed)
            if len(prompts) == 1 and width > 1:
                # One prefill of the prompt (all but its last token), reusing the longest cached prefix;
                # its KV cache is repeated for n candidates (num_return_sequences would redo it n times).
                cache = self._prefill(ids[0].tolist())
                if ns[0] > 1:
                    cache.batch_repeat_interleave(ns[0])
                out = self.hf_model.generate(ids, attention_mask=mask, past_key_values=cache, **gen)
            elif ns[0] > 1 and width > 1:
                # Each prompt pre-filled once (positions counted from its first real token), then the
                # cache and the rows repeated for its n candidates.
                from transformers import DynamicCache

                cache = DynamicCache()
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                self.hf_model(ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                              past_key_values=cache, use_cache=True)
                cache.batch_repeat_interleave(ns[0])
                ids, mask = ids.repeat_interleave(ns[0], dim=0), mask.repeat_interleave(ns[0], dim=0)
                out = self.hf_model.generate(ids, attention_mask=mask, past_key_values=cache, **gen)
            else:
                out = self.hf_model.generate(ids, attention_mask=mask, **gen)
        texts, counts = [], []
        eos = {self.tokenizer.eos_token_id, pad_id}
        for row in out[:, width:]:
            tokens = row.tolist()
            cut = next((i for i, t in enumerate(tokens) if t in eos), len(tokens))
            counts.append(cut)
            text = self.tokenizer.decode(tokens[:cut], skip_special_tokens=True)
            for s in stop or []:
                if s in text:
                    text = text[: text.index(s)]
            if self.stop_at_call_end:
                end = call_end(self.response_prefix + text)
                if end is not None:
                    text = (self.response_prefix + text)[:end][len(self.response_prefix):]
            texts.append(text)
        results, at = [], 0
        for n, plen in zip(ns, prompt_lens):
            results.append((texts[at:at + n], int(plen), counts[at:at + n]))
            at += n
        return results

    def _prefill(self, tokens: list[int]) -> Any:
        """A KV cache of `tokens[:-1]`, pre-filled from the longest cached prefix; kept for later calls."""
        import copy

        import torch
        from transformers import DynamicCache

        target = len(tokens) - 1
        best, best_len = None, 0
        for i, (cached_tokens, cache) in enumerate(self._prefix_caches):
            limit = min(len(cached_tokens), target)
            n = 0
            while n < limit and cached_tokens[n] == tokens[n]:
                n += 1
            if n > best_len:
                best, best_len = i, n
        if best is not None and best_len >= 16:
            cached_tokens, cached = self._prefix_caches.pop(best)
            self._prefix_caches.append((cached_tokens, cached))  # most recently used last
            cache = copy.deepcopy(cached)
            if len(cached_tokens) > best_len:
                cache.crop(best_len - len(cached_tokens))  # transformers 5: a negative count of tokens to drop
        else:
            cache, best_len = DynamicCache(), 0
        if target > best_len:
            self.hf_model(torch.tensor([tokens[best_len:target]]), past_key_values=cache, use_cache=True)
        if self.prefix_cache_size > 0:
            self._prefix_caches.append((tokens[:target], copy.deepcopy(cache)))
            del self._prefix_caches[:-self.prefix_cache_size]
        return cache

    def _message(self, text: str, tools: list[dict[str, Any]] | None) -> AIMessage:
        content = self.response_prefix + text
        if tools:
            try:
                calls = parse_calls(content)
            except CallParseError:
                return AIMessage(content=content)
            known = {t["function"]["name"] for t in tools}
            if all(c.name in known for c in calls):
                return AIMessage(content=content, tool_calls=[{"name": c.name, "args": c.args, "id": c.id}
                                                              for c in calls])
        return AIMessage(content=content)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        tools = kwargs.get("tools")
        n = int(kwargs.get("n", self.n))
        temperature = float(kwargs.get("temperature", self.temperature))
        max_new = int(kwargs.get("max_new_tokens", self.max_new_tokens))
        if n > 1 and temperature == 0:
            temperature = 0.7  # identical greedy copies teach nothing; n>1 means sampling
        started = time.perf_counter()
        stops = [*(stop or []), *self.stop_sequences] or None
        texts, prompt_tokens, counts = self._sample(self.render(messages, tools), n=n, temperature=temperature,
                                                    max_new_tokens=max_new, stop=stops,
                                                    tools=_grammar_tools(tools, run_manager))
        elapsed = time.perf_counter() - started
        generations = []
        for text, count in zip(texts, counts):
            msg = self._message(text, tools)
            msg.usage_metadata = {"input_tokens": prompt_tokens, "output_tokens": count,
                                  "total_tokens": prompt_tokens + count}
            msg.response_metadata = {"model_name": self.model_name, "latency_s": elapsed,
                                     "finish_reason": "length" if count >= max_new else "stop"}
            generations.append(ChatGeneration(message=msg))
        usage = {"input_tokens": prompt_tokens, "output_tokens": sum(counts),
                 "total_tokens": prompt_tokens + sum(counts)}
        return ChatResult(generations=generations, llm_output={"token_usage": usage, "model_name": self.model_name})

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        from transformers import TextIteratorStreamer

        tools = kwargs.get("tools")
        prompt = self.render(messages, tools)
        enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        gen = {"max_new_tokens": int(kwargs.get("max_new_tokens", self.max_new_tokens)), "streamer": streamer,
               "do_sample": False, "pad_token_id": self.tokenizer.pad_token_id}
        grammar_tools = _grammar_tools(tools, run_manager)
        if self.constrain and grammar_tools:
            constrainer = self._constrainer()
            gen["logits_processor"] = [constrainer.processor([constrainer.row(grammar_tools, self.response_prefix)],
                                                             enc["input_ids"].shape[1])]
        worker = threading.Thread(target=self.hf_model.generate, kwargs={**enc, **gen}, daemon=True)
        with self._lock:
            worker.start()
            if self.response_prefix:
                yield ChatGenerationChunk(message=AIMessageChunk(content=self.response_prefix))
            for piece in streamer:
                if piece:
                    chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                    if run_manager:
                        run_manager.on_llm_new_token(piece, chunk=chunk)
                    yield chunk
            worker.join()


def _grammar_tools(tools: list[dict[str, Any]] | None, run_manager: Any) -> list[dict[str, Any]] | None:
    """The functions a constrained reply may call: the bound tools, or in the text protocol (schemas in
    the prompt, none bound) the ones the graph put in the run's metadata for the recorder."""
    return tools or (getattr(run_manager, "metadata", None) or {}).get("fcagent_tools")


def _call_end_criteria(tokenizer: Any, prompt_len: int, prefix: str) -> Any:
    """A transformers StoppingCriteria: each row stops once its reply has closed its call."""
    import torch
    from transformers import StoppingCriteria

    class CallEndCriteria(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            done = [call_end(prefix + tokenizer.decode(row[prompt_len:], skip_special_tokens=True)) is not None
                    for row in input_ids]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return CallEndCriteria()
