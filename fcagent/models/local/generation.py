"""Decoding for the local model: rows of prompts through one `generate`, text as it is decoded.

One path serves every caller: `LocalChatModel.invoke` and `.stream`, batched or alone, constrained
or not. A request may carry a sink that receives its text piece by piece while decoding runs; the
pieces always add up to exactly the final text, because both come from `finish_text` over the
tokens decoded so far (cut at a stop string, cut where a call closes), and a piece is held back
while it could still be the start of a stop string.

`n` candidates share one prompt pass: the prompt is pre-filled once and its KV cache repeated `n`
times (HF's `num_return_sequences` would recompute the prompt for every copy).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fcagent.models.local.constrained import call_schema
from fcagent.models.local.prefix_cache import kv_cache_argument

__all__ = ["DecodeSettings", "DecodeRequest", "Decoded", "Generator", "RowText", "call_end", "collect",
           "finish_text", "reply_complete", "token_logprob"]


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


def finish_text(raw: str, *, stop: tuple[str, ...], prefix: str, stop_at_call_end: bool) -> str:
    """The reply text (after the forced prefix) from what was decoded: cut at the first stop string,
    and where a reply that opened a call closes it. Applied alike to a partial and a whole decode."""
    for s in stop:
        if s in raw:
            raw = raw[: raw.index(s)]
    if stop_at_call_end:
        end = call_end(prefix + raw)
        if end is not None:
            raw = (prefix + raw)[:end][len(prefix):]
    return raw


def _held_back(text: str, stop: tuple[str, ...]) -> int:
    """How many trailing characters could still turn into a stop string (or a split character)."""
    hold = 1 if text.endswith("\ufffd") else 0  # half of a multi-byte character
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return hold


@dataclass(frozen=True)
class DecodeSettings:
    """How to decode; requests batch together only when these are equal."""

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    stop: tuple[str, ...] = ()
    seed: int | None = None
    constrain: str | None = None  # the grammar backend, for requests that have tools or a schema
    constrain_calls: str = "one"  # the grammar allows one call a reply, or `many` (a list: parallel calls)
    prefix: str = ""  # the reply is forced to start with this (it is part of the prompt)
    stop_at_call_end: bool = True
    timeout_s: float | None = None  # decoding stops after this long (the reply is cut, as at max_new_tokens)
    logprobs: int | None = None  # None: none; k >= 0: each token's log-probability and its k likeliest alternatives


@dataclass
class DecodeRequest:
    prompt: str
    settings: DecodeSettings
    tools: list[dict[str, Any]] | None = None  # the call grammar's functions (constrained decoding)
    schema: dict[str, Any] | None = None  # or the JSON schema the whole reply must match (structured output)
    sink: Callable[[int, str], None] | None = None  # (candidate index, text piece) while decoding
    cancelled: Any = None  # a threading.Event: once set, this request's rows stop (a client went away)


@dataclass
class Decoded:
    texts: list[str]  # one per candidate, after the forced prefix
    prompt_tokens: int
    completion_tokens: list[int]
    truncated: list[bool]  # stopped by max_new_tokens
    logprobs: list[list[dict[str, Any]]] | None = None  # per candidate, per token (OpenAI's `logprobs.content`)


class RowText:
    """Each row's decoded tokens, and its text handed to its request's sink as it grows: the pieces
    come from `finish` over the tokens so far, minus what could still become a stop string, so they
    always add up to the final text. Both runtimes feed it."""

    def __init__(self, tokenizer: Any, sinks: list[tuple[Callable[[int, str], None], int] | None],
                 finish: Callable[[str], str], stop: tuple[str, ...]):
        self.tokenizer = tokenizer
        self.sinks = sinks  # per row: (sink, candidate index) or None
        self.finish = finish
        self.stop = stop
        self.tokens: list[list[int]] = [[] for _ in sinks]
        self.sent = [0] * len(sinks)

    def text(self, row: int) -> str:
        """The row's reply so far (cut at a stop string, or where its call closed)."""
        return self.finish(self.tokenizer.decode(self.tokens[row], skip_special_tokens=True))

    def add(self, row: int, token: int) -> str:
        """Append a decoded token; streams what is safe to send; the raw decoded text so far."""
        self.tokens[row].append(token)
        raw = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
        if self.sinks[row] is not None:
            self._emit(row, self.finish(raw), final=False)
        return raw

    def close(self, row: int, tokens: list[int]) -> str:
        """The row's final tokens: sends what was held back; its reply text."""
        self.tokens[row] = list(tokens)
        text = self.text(row)
        if self.sinks[row] is not None:
            self._emit(row, text, final=True)
        return text

    def _emit(self, row: int, text: str, *, final: bool) -> None:
        safe = len(text) if final else len(text) - _held_back(text, self.stop)
        if safe > self.sent[row]:
            sink, index = self.sinks[row]  # type: ignore[misc]
            sink(index, text[self.sent[row]:safe])
            self.sent[row] = safe


class _GenerateStreamer:
    """A transformers streamer over a whole batch: each new column of tokens goes to `RowText`."""

    def __init__(self, rows: RowText, eos: set[int]):
        self.rows = rows
        self.eos = eos
        self.ended = [False] * len(rows.sinks)
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt
            self._prompt_seen = True
            return
        column = value.reshape(len(self.ended), -1)
        for row, ids in enumerate(column.tolist()):
            if self.ended[row] or self.rows.sinks[row] is None:
                continue
            for t in ids:
                if t in self.eos:
                    self.ended[row] = True
                    break
                self.rows.add(row, t)

    def end(self) -> None:
        pass  # the caller sends each row's remainder from the final text


def reply_complete(raw: str, settings: DecodeSettings) -> bool:
    """Whether decoding of a row can stop: a stop string has appeared, or the call it opened has closed."""
    if any(s in raw for s in settings.stop):
        return True
    return settings.stop_at_call_end and call_end(settings.prefix + raw) is not None


def collect(rows: RowText, tokens: list[list[int]], truncated: list[bool], ns: list[int], prompt_lens: list[int],
            logprobs: list[list[dict[str, Any]]] | None) -> list[Decoded]:
    """Each request's `Decoded` from its rows' final tokens (end tokens already cut), in order."""
    texts = [rows.close(row, row_tokens) for row, row_tokens in enumerate(tokens)]
    results, at = [], 0
    for n, plen in zip(ns, prompt_lens):
        results.append(Decoded(texts=texts[at:at + n], prompt_tokens=int(plen),
                               completion_tokens=[len(t) for t in tokens[at:at + n]], truncated=truncated[at:at + n],
                               logprobs=logprobs[at:at + n] if logprobs is not None else None))
        at += n
    return results


def token_logprob(tokenizer: Any, token_id: int, logprob: float) -> dict[str, Any]:
    """One token's entry in OpenAI's `logprobs.content` shape."""
    text = tokenizer.decode([token_id])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


class Generator:
    """Runs decode requests through a transformers causal LM (see the module docs)."""

    def __init__(self, hf_model: Any, tokenizer: Any, *, prefix_cache: Any = None,
                 constrainer: Callable[[str], Any] | None = None):
        self.hf_model = hf_model
        self.tokenizer = tokenizer
        self.prefix_cache = prefix_cache
        self.constrainer = constrainer

    def run(self, requests: list[DecodeRequest]) -> list[Decoded]:
        """Decode requests with equal settings together; a result per request, in order."""
        import torch

        settings = requests[0].settings
        prompts = [r.prompt for r in requests]
        ns = [settings.n] * len(requests)
        tok = self.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        gen: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens, "pad_token_id": pad_id}
        if settings.temperature > 0:
            gen |= {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p}
        else:
            gen |= {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        if settings.stop:
            gen |= {"stop_strings": list(settings.stop), "tokenizer": tok}
        if settings.logprobs is not None:
            gen |= {"output_logits": True, "return_dict_in_generate": True}
        if len(prompts) == 1:
            enc = tok(prompts[0], return_tensors="pt", add_special_tokens=False)
            prompt_lens = [enc["input_ids"].shape[1]]
            ids = enc["input_ids"].repeat(ns[0], 1)
            mask = torch.ones_like(ids)
        else:  # several callers (equal n): left-padded to one length
            enc = tok(prompts, return_tensors="pt", add_special_tokens=False, padding=True, padding_side="left")
            prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
            ids, mask = enc["input_ids"], enc["attention_mask"]
        width = ids.shape[1]
        gen["stopping_criteria"] = []
        if settings.stop_at_call_end:
            gen["stopping_criteria"].append(_call_end_criteria(tok, width, settings.prefix))
        if any(r.cancelled is not None for r in requests):
            flags = [r.cancelled for r, n in zip(requests, ns) for _ in range(n)]
            gen["stopping_criteria"].append(_cancelled_criteria(flags))
        if settings.timeout_s is not None:
            from transformers import MaxTimeCriteria

            gen["stopping_criteria"].append(MaxTimeCriteria(settings.timeout_s))
        if settings.constrain and any(r.tools or r.schema for r in requests):
            constrainer = self.constrainer(settings.constrain)  # type: ignore[misc]
            many = settings.constrain_calls == "many"
            rows = [constrainer.row(r.schema or call_schema(r.tools or [], many=many), settings.prefix)
                    for r, n in zip(requests, ns) for _ in range(n)]
            gen["logits_processor"] = [constrainer.processor(rows, width)]
            if settings.temperature > 0:
                # generate() runs custom processors after its own warpers; a top-k cut made before the
                # grammar's mask can leave no allowed token. So the mask goes first and the same warpers
                # (temperature, the model's top-k, top-p) follow it here.
                from transformers import (
                    TemperatureLogitsWarper,
                    TopKLogitsWarper,
                    TopPLogitsWarper,
                )

                top_k = getattr(self.hf_model.generation_config, "top_k", None)
                gen["logits_processor"] += [TemperatureLogitsWarper(settings.temperature),
                                            *([TopKLogitsWarper(top_k)] if top_k else []),
                                            *([TopPLogitsWarper(settings.top_p)] if settings.top_p < 1 else [])]
                gen |= {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
        eos = {tok.eos_token_id, pad_id}

        def finish(raw: str) -> str:
            return finish_text(raw, stop=settings.stop, prefix=settings.prefix, stop_at_call_end=settings.stop_at_call_end)

        sinks = [(r.sink, i) if r.sink is not None else None for r, n in zip(requests, ns) for i in range(n)]
        rows = RowText(tok, sinks, finish, settings.stop)
        if any(sinks):
            gen["streamer"] = _GenerateStreamer(rows, eos)
        started = time.perf_counter()
        with torch.inference_mode():
            if settings.seed is not None:
                torch.manual_seed(settings.seed)
            if len(prompts) == 1 and width > 1:
                # One prefill of the prompt (all but its last token), reusing the longest cached prefix;
                # its KV cache is repeated for n candidates (num_return_sequences would redo it n times).
                if self.prefix_cache is not None:
                    cache = self.prefix_cache.prefill(self.hf_model, ids[0].tolist())
                else:
                    from transformers import DynamicCache

                    cache = DynamicCache()
                    self.hf_model(ids[:1, :-1], use_cache=True, **kv_cache_argument(self.hf_model, cache))
                if ns[0] > 1:
                    cache.batch_repeat_interleave(ns[0])
                out = self.hf_model.generate(ids, attention_mask=mask, **kv_cache_argument(self.hf_model, cache), **gen)
            elif ns[0] > 1 and width > 1:
                # Each prompt pre-filled once (positions counted from its first real token), then the
                # cache and the rows repeated for its n candidates.
                from transformers import DynamicCache

                cache = DynamicCache()
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                self.hf_model(ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                              use_cache=True, **kv_cache_argument(self.hf_model, cache))
                cache.batch_repeat_interleave(ns[0])
                ids, mask = ids.repeat_interleave(ns[0], dim=0), mask.repeat_interleave(ns[0], dim=0)
                out = self.hf_model.generate(ids, attention_mask=mask, **kv_cache_argument(self.hf_model, cache), **gen)
            else:
                out = self.hf_model.generate(ids, attention_mask=mask, **gen)
        logits = getattr(out, "logits", None)
        out = getattr(out, "sequences", out)
        # Stopped by `timeout_s`: rows that had not ended (no end token) were cut, as at the token limit.
        timed_out = settings.timeout_s is not None and time.perf_counter() - started >= settings.timeout_s
        tokens, cut_short = [], []
        for row_tokens in out[:, width:].tolist():
            cut = next((i for i, t in enumerate(row_tokens) if t in eos), len(row_tokens))
            tokens.append(row_tokens[:cut])
            cut_short.append(cut >= settings.max_new_tokens or (timed_out and cut == len(row_tokens)))
        rows_logprobs = _logprobs(tok, out[:, width:], logits, [len(t) for t in tokens], settings.logprobs) \
            if settings.logprobs is not None else None
        return collect(rows, tokens, cut_short, ns, prompt_lens, rows_logprobs)


def _logprobs(tok: Any, tokens: Any, logits: Any, counts: list[int], top: int) -> list[list[dict[str, Any]]]:
    """Each row's tokens with their log-probabilities under the model (its own distribution, before any
    grammar mask or temperature) and the `top` likeliest alternatives, in OpenAI's shape."""
    import torch

    rows = []
    steps = torch.stack(list(logits), dim=1).float().log_softmax(dim=-1)  # rows x steps x vocab
    for row, count in enumerate(counts):
        content = []
        for step in range(min(count, steps.shape[1])):
            dist = steps[row, step]
            chosen = int(tokens[row, step])
            item = token_logprob(tok, chosen, float(dist[chosen]))
            if top:
                values, ids = dist.topk(top)
                item["top_logprobs"] = [token_logprob(tok, int(i), float(v)) for v, i in zip(values, ids)]
            else:
                item["top_logprobs"] = []
            content.append(item)
        rows.append(content)
    return rows


def _cancelled_criteria(flags: list[Any]) -> Any:
    """A StoppingCriteria: a row stops once its request's `cancelled` event is set; the batch goes on."""
    import torch
    from transformers import StoppingCriteria

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            done = [flag is not None and flag.is_set() for flag in flags]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return Cancelled()


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
