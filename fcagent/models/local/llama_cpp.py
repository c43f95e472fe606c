"""The llama.cpp runtime: a GGUF decoded by llama.cpp (through llama-cpp-python) behind `LocalChatModel`.

Everything a call decides (the prompt, tool choice, the call grammar, stop rules, streaming, parsing
the reply) is the chat model's and `generation`'s, shared with the transformers runtime; this module
only turns prompt tokens into reply tokens, the way llama.cpp does it fastest:

- **Batched sequences.** A batch's prompts are pre-filled together; each candidate of each request is
  a sequence of one llama.cpp context, and every decode step evaluates one token of every live
  sequence in one `llama_decode`. The `n` candidates of a prompt share its KV cells
  (`llama_memory_seq_cp` tags cells, it copies nothing).
- **Prompt cache.** Recent prompts stay in the context as sequences of their own ("slots"); a new
  prompt starts from the slot that shares its longest prefix, so step k+1 of an episode evaluates only
  the tokens step k did not have. The KV buffer is unified and attention is llama.cpp's flash
  attention, whose CPU kernel skips the cells of other sequences.
- **The same tokens and text.** The prompt is tokenized and the reply detokenized by the model's
  Hugging Face tokenizer, exactly as on the transformers runtime; the GGUF's vocabulary is the same, so
  the call grammar (compiled for that tokenizer) masks llama.cpp's logits directly.
- **Sampling** is llama.cpp's sampler chain (temperature, top-k, top-p, a seeded draw; greedy at
  temperature 0), after the grammar's mask is written into the logits.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fcagent.core.errors import UserError
from fcagent.models.local.constrained import call_schema
from fcagent.models.local.generation import (
    Decoded,
    DecodeRequest,
    DecodeSettings,
    RowText,
    collect,
    finish_text,
    reply_complete,
    token_logprob,
)

__all__ = ["LlamaCppEngine", "INSTALL"]

INSTALL = "pip install 'fcagent[llama-cpp]' (builds llama-cpp-python from source, a few minutes)"
_SLOTS = 64  # sequence ids 0..63 hold prompts (kept ones and this batch's), 64..127 the rows being decoded
_MAX_ROWS = 64
_BATCH = 512  # tokens per llama_decode while pre-filling
_TOP_K = 50  # transformers' `generate` default: both runtimes sample from the same truncated distribution
_BACKEND = threading.Lock()
_backend_ready = False


def _llama() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise UserError(f"the llama.cpp runtime needs llama-cpp-python: {INSTALL} ({exc})") from None
    global _backend_ready
    with _BACKEND:
        if not _backend_ready:
            import logging

            from llama_cpp._logger import logger

            if logger.level == logging.NOTSET:  # llama.cpp logs every tensor it loads unless told otherwise
                logger.setLevel(logging.ERROR)
            llama_cpp.llama_backend_init()
            _backend_ready = True
    return llama_cpp


@dataclass
class _Slot:
    tokens: list[int] = field(default_factory=list)  # what the slot's sequence holds, position by position
    used: float = 0.0  # when a request last started from it (least recently used goes first)


@dataclass(eq=False)
class _Row:
    request: int
    seq: int
    sampler: Any
    grammar: Any = None  # the call grammar's matcher (constrained decoding), or None
    done: bool = False
    truncated: bool = False
    logprobs: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Step:
    """One batch's decoding state."""

    settings: DecodeSettings
    text: RowText  # each row's tokens and streamed text
    rows: list[_Row]
    requests: list[DecodeRequest]
    grammar: Any  # the Constrainer, when the batch is constrained
    last: list[int] = field(default_factory=list)  # each row's last sampled token, evaluated next

    def __post_init__(self) -> None:
        self.last = [0] * len(self.rows)


class LlamaCppEngine:
    """A GGUF loaded into one llama.cpp context; `run(requests)` decodes a batch (see the module docs)."""

    def __init__(self, gguf: Path, tokenizer: Any, *, threads: int | None = None, n_ctx: int = 8192,
                 keep_prompts: int = 8):
        llama_cpp = _llama()
        self.gguf = Path(gguf)
        self.tokenizer = tokenizer
        self.keep_prompts = keep_prompts
        self.threads = threads or len(os.sched_getaffinity(0))
        model_params = llama_cpp.llama_model_default_params()
        # llama.cpp's extra CPU buffer types repack weights for AMX and some quantisations; their AMX path
        # segfaults on first inference on Xeons with AMX (llama.cpp issue #20824), and the repacks do not
        # cover the types fcagent writes (f16, q8_0) or the bundled Q4_1.
        model_params.use_extra_bufts = False
        self._model = llama_cpp.llama_model_load_from_file(str(self.gguf).encode(), model_params)
        if not self._model:
            raise UserError(f"llama.cpp cannot load {self.gguf} (not a GGUF of a supported architecture?)")
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = _BATCH
        params.n_seq_max = _SLOTS + _MAX_ROWS
        params.n_threads = params.n_threads_batch = self.threads
        params.kv_unified = True  # rows share their prompt's cells
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        params.no_perf = True
        self._ctx = llama_cpp.llama_init_from_model(self._model, params)
        if not self._ctx:
            llama_cpp.llama_model_free(self._model)
            raise UserError(f"llama.cpp cannot make a context for {self.gguf} ({n_ctx} cells)")
        weakref.finalize(self, _free, llama_cpp, self._ctx, self._model)
        self.n_ctx = n_ctx
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        # The reply ends at the tokenizer's end tokens (as on the transformers runtime) and at any token
        # llama.cpp knows ends a generation for this model.
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        ends = {t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)}
        self.eos = {tokenizer.eos_token_id, pad} | ends
        self._slots = [_Slot() for _ in range(_SLOTS)]
        self._batch = llama_cpp.llama_batch_init(params.n_batch, 0, 1)
        weakref.finalize(self, llama_cpp.llama_batch_free, self._batch)
        self._llama_cpp = llama_cpp
        self._lock = threading.Lock()
        self.prefilled = 0  # prompt tokens evaluated (the prompt cache saves the rest), for tests and benchmarks

    # --- the prompt cache ------------------------------------------------------------------------

    def clear(self) -> None:
        """Forget every kept prompt."""
        self._llama_cpp.llama_memory_clear(self._memory, True)
        self._slots = [_Slot() for _ in range(_SLOTS)]

    def kept_prompts(self) -> int:
        return sum(1 for s in self._slots if s.tokens)

    def _slot_for(self, tokens: list[int], taken: set[int], min_shared: int = 16) -> tuple[int, int]:
        """The slot to pre-fill `tokens` in and how many of its tokens are already there: the free slot
        sharing the longest prefix (at least `min_shared` tokens), else the least recently used one."""
        best, shared = None, 0
        for i, slot in enumerate(self._slots):
            if i in taken or not slot.tokens:
                continue
            n = _common_prefix(slot.tokens, tokens)
            if n > shared:
                best, shared = i, n
        if best is None or shared < min_shared:
            best = min((i for i in range(_SLOTS) if i not in taken), key=lambda i: self._slots[i].used)
            shared = 0
        shared = min(shared, len(tokens) - 1)  # the last token is always evaluated: its logits start the reply
        self._llama_cpp.llama_memory_seq_rm(self._memory, best, shared, -1)
        self._slots[best].tokens = self._slots[best].tokens[:shared]
        self._slots[best].used = time.monotonic()
        return best, shared

    def _evict(self, taken: set[int]) -> bool:
        """Free the cells of the least recently used kept prompt outside this batch; False if none is left."""
        kept = [i for i, s in enumerate(self._slots) if s.tokens and i not in taken]
        if not kept:
            return False
        i = min(kept, key=lambda k: self._slots[k].used)
        self._llama_cpp.llama_memory_seq_rm(self._memory, i, -1, -1)
        self._slots[i] = _Slot()
        return True

    def _trim(self) -> None:
        """Keep the `keep_prompts` most recently used prompts; free the rest."""
        kept = sorted((i for i, s in enumerate(self._slots) if s.tokens), key=lambda i: -self._slots[i].used)
        for i in kept[self.keep_prompts:]:
            self._llama_cpp.llama_memory_seq_rm(self._memory, i, -1, -1)
            self._slots[i] = _Slot()

    # --- decoding --------------------------------------------------------------------------------

    def _decode(self, entries: list[tuple[int, int, int, bool]], taken: set[int]) -> None:
        """One `llama_decode` of (token, position, sequence, wants logits) entries; a full KV buffer
        frees kept prompts until the batch fits."""
        lc, batch = self._llama_cpp, self._batch
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, logits
        batch.n_tokens = len(entries)
        while (status := lc.llama_decode(self._ctx, batch)) == 1:
            if not self._evict(taken):
                raise RuntimeError(f"llama.cpp's KV buffer ({self.n_ctx} cells) cannot hold this batch: fewer "
                                   "concurrent requests, shorter prompts or fewer new tokens")
        if status != 0:
            raise RuntimeError(f"llama_decode failed ({status})")

    def _logits(self, index: int) -> Any:
        import numpy as np

        pointer = self._llama_cpp.llama_get_logits_ith(self._ctx, index)
        return np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,))

    def _sampler(self, settings: DecodeSettings, index: int) -> Any:
        lc = self._llama_cpp
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if settings.temperature <= 0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
        else:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(settings.temperature))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(_TOP_K))
            if settings.top_p < 1:
                lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(settings.top_p, 1))
            seed = (settings.seed + index) & 0xFFFFFFFF if settings.seed is not None else lc.LLAMA_DEFAULT_SEED
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed))
        return chain

    def _next(self, rows: list[_Row], index: int, settings: DecodeSettings, constrainer: Any) -> list[int]:
        """The next token of each of `rows`, all sampled from the logits at batch position `index`
        (the rows of one prompt share its last position's logits at the first step)."""
        import numpy as np

        logits = self._logits(index)
        if settings.logprobs is not None:
            raw = logits.astype(np.float64)
            logp = raw - (raw.max() + np.log(np.exp(raw - raw.max()).sum()))
        if any(r.grammar is not None for r in rows):
            allowed, active = constrainer.allowed([r.grammar for r in rows if r.grammar is not None])
            for mask, on in zip(allowed, active):
                if on:  # rows sharing these logits are at the same grammar state: the same mask
                    width = min(len(mask), self.n_vocab)
                    logits[:width][~mask[:width]] = -np.inf
                    logits[width:] = -np.inf  # ids past the tokenizer's vocabulary are never a token
                    break
        out = []
        for row in rows:
            token = self._llama_cpp.llama_sampler_sample(row.sampler, self._ctx, index)
            if settings.logprobs is not None and token not in self.eos:
                item = token_logprob(self.tokenizer, token, float(logp[token]))
                top = np.argsort(-logp)[:settings.logprobs] if settings.logprobs else []  # rare: full sort is fine
                item["top_logprobs"] = [token_logprob(self.tokenizer, int(t), float(logp[t])) for t in top]
                row.logprobs.append(item)
            if row.grammar is not None:
                row.grammar.accept(token)
            out.append(token)
        return out

    def run(self, requests: list[DecodeRequest], constrainer: Callable[[str], Any] | None = None) -> list[Decoded]:
        """Decode requests with equal settings together; a result per request, in order."""
        with self._lock:  # one context: model copies and separately built models may share this engine
            return self._run(requests, constrainer)

    def _run(self, requests: list[DecodeRequest], constrainer: Callable[[str], Any] | None) -> list[Decoded]:
        settings = requests[0].settings
        n = settings.n
        if n * len(requests) > _MAX_ROWS:
            raise UserError(f"the llama.cpp runtime decodes at most {_MAX_ROWS} sequences at once; "
                            f"got {len(requests)} requests x n={n}")
        prompts = [self.tokenizer(r.prompt, add_special_tokens=False)["input_ids"] for r in requests]
        if any(not p for p in prompts):
            raise UserError("cannot decode an empty prompt")
        grammar = constrainer(settings.constrain) if settings.constrain and constrainer is not None else None
        many = settings.constrain_calls == "many"
        rows: list[_Row] = []
        for i, request in enumerate(requests):
            for _ in range(n):
                matcher = None
                if grammar is not None and (request.tools or request.schema):
                    schema = request.schema or call_schema(request.tools or [], many=many)
                    matcher = grammar.row(schema, settings.prefix)
                rows.append(_Row(request=i, seq=_SLOTS + len(rows), sampler=self._sampler(settings, len(rows)),
                                 grammar=matcher))
        sinks = [(r.sink, j) if r.sink is not None else None for r in requests for j in range(n)]

        def finish(raw: str) -> str:
            return finish_text(raw, stop=settings.stop, prefix=settings.prefix,
                               stop_at_call_end=settings.stop_at_call_end)

        step = _Step(settings, RowText(self.tokenizer, sinks, finish, settings.stop), rows, requests, grammar)
        lc = self._llama_cpp
        started = time.perf_counter()
        try:
            self._prefill(prompts, step)
            while live := [k for k, r in enumerate(rows) if not r.done]:
                if settings.timeout_s is not None and time.perf_counter() - started >= settings.timeout_s:
                    for k in live:
                        rows[k].done = rows[k].truncated = True
                    break
                self._decode([(step.last[k], len(prompts[rows[k].request]) + len(step.text.tokens[k]) - 1,
                               rows[k].seq, True) for k in live], set())
                for index, k in enumerate(live):
                    self._take(step, [k], index)
        finally:
            for r in rows:
                lc.llama_memory_seq_rm(self._memory, r.seq, -1, -1)
                lc.llama_sampler_free(r.sampler)
            self._trim()
        return collect(step.text, [list(t) for t in step.text.tokens], [r.truncated for r in rows],
                       [n] * len(requests), [len(p) for p in prompts],
                       [r.logprobs for r in rows] if settings.logprobs is not None else None)

    def _prefill(self, prompts: list[list[int]], step: _Step) -> None:
        """Each prompt into a slot (after its longest kept prefix), in chunks of at most one llama.cpp
        batch; once a prompt's last token is in, its rows take the slot's cells and their first tokens."""
        taken: set[int] = set()
        entries: list[tuple[int, int, int, bool]] = []
        ends: list[tuple[int, int, int]] = []  # (request, slot, index of its last token in `entries`)
        for i, tokens in enumerate(prompts):
            slot, shared = self._slot_for(tokens, taken)
            taken.add(slot)
            for pos in range(shared, len(tokens)):
                entries.append((tokens[pos], pos, slot, pos == len(tokens) - 1))
                if pos == len(tokens) - 1:
                    ends.append((i, slot, len(entries) - 1))
                if len(entries) == _BATCH or (i == len(prompts) - 1 and pos == len(tokens) - 1):
                    self._decode(entries, taken)
                    self.prefilled += len(entries)
                    for request, at, index in ends:
                        mine = [k for k, r in enumerate(step.rows) if r.request == request]
                        for k in mine:
                            self._llama_cpp.llama_memory_seq_cp(self._memory, at, step.rows[k].seq, -1, -1)
                        self._take(step, mine, index)
                    entries, ends = [], []
            self._slots[slot].tokens = list(tokens)

    def _take(self, step: _Step, ks: list[int], index: int) -> None:
        """Rows `ks` sample their next tokens from the logits at batch position `index` and take them."""
        for k, token in zip(ks, self._next([step.rows[k] for k in ks], index, step.settings, step.grammar)):
            step.last[k] = token
            self._advance(k, step.rows[k], token, step)

    def _advance(self, k: int, row: _Row, token: int, step: _Step) -> None:
        """Take a row's sampled token: an end token ends it; else it joins the reply, which may now be
        complete (a stop string, its call closed) or at the token limit."""
        if token in self.eos:
            row.done = True
            return
        raw = step.text.add(k, token)
        if reply_complete(raw, step.settings):
            row.done = True
        elif len(step.text.tokens[k]) >= step.settings.max_new_tokens:
            row.done = row.truncated = True
        elif (flag := step.requests[row.request].cancelled) is not None and flag.is_set():
            row.done = True


def _common_prefix(a: list[int], b: list[int]) -> int:
    n, limit = 0, min(len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def _free(llama_cpp: Any, ctx: Any, model: Any) -> None:
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
