"""Grammar-constrained decoding for the local model: every reply is one schema-valid call (or, for
structured output, one JSON value of the schema asked for).

The text protocol asks the model for `{"name": <function>, "arguments": {...}}`; a 135M model often
writes something close (a missing brace, an argument the function does not take, a string where a
number goes). A grammar built from the tools' JSON schemas masks, at each decoding step, every token
that could not continue a valid call, so the reply is always parsable, names a known function and
fits its schema — what a reply then gets wrong is the *values*, which is what training has to teach.

Two maintained libraries are wrapped behind one `LogitsProcessor` (`benchmarks/constrained.py`
compares them on this machine): `llguidance` (the default: Rust, lexer/parser split) and
`xgrammar`. lm-format-enforcer was also tried: its transformers integration does not import with
transformers 5 (measured), so it is not offered.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

from fcagent.core.errors import UserError

__all__ = ["BACKENDS", "Constrainer", "call_schema"]

BACKENDS: tuple[str, ...] = ("llguidance", "xgrammar")
# The exported training data writes calls with json.dumps' default separators; the grammar keeps
# the reply in that exact layout, so the constrained model is not pushed off what it learned.
_ITEM_SEPARATOR, _KEY_SEPARATOR = ", ", ": "


def call_schema(tools: list[dict[str, Any]], *, many: bool = False) -> dict[str, Any]:
    """JSON Schema of one call to one of `tools` (OpenAI-style function schemas); `many=True`: one call,
    or a list of calls (parallel calls, as `format_calls` writes them)."""
    options = []
    for tool in tools:
        fn = tool.get("function", tool)
        params = dict(fn.get("parameters") or {"type": "object", "properties": {}})
        params.setdefault("type", "object")
        params.setdefault("additionalProperties", False)
        options.append({"type": "object",
                        "properties": {"name": {"const": fn["name"]}, "arguments": params},
                        "required": ["name", "arguments"], "additionalProperties": False})
    if not options:
        raise UserError("constrained decoding needs at least one tool schema")
    one = options[0] if len(options) == 1 else {"anyOf": options}
    return {"anyOf": [one, {"type": "array", "items": one, "minItems": 1}]} if many else one


class _Row:
    """One sequence's matcher: advances on its sampled tokens, fills its row of the mask."""

    def __init__(self, backend: str, matcher: Any) -> None:
        self.backend, self.matcher, self.dead = backend, matcher, False
        if backend == "llguidance":  # resolved once, not per token
            import llguidance.torch

            self._fill = lambda bitmask, index: llguidance.torch.fill_next_token_bitmask(matcher, bitmask, index)
        else:
            self._fill = matcher.fill_next_token_bitmask

    def accept(self, token: int) -> None:
        if self.dead:
            return
        m = self.matcher
        if self.backend == "llguidance":
            stopped = m.is_stopped()
            ok = m.consume_token(token) if not stopped else False
        else:
            stopped = m.is_terminated()
            ok = m.accept_token(token) if not stopped else False
        if not ok or (self.backend == "xgrammar" and m.is_terminated()):
            # Finished (the row is padding now) or a token the grammar refused: unconstrained from here.
            self.dead = True

    def fill(self, bitmask: Any, index: int) -> bool:
        """Write this row's allowed tokens into `bitmask[index]`; False when the row is unconstrained."""
        if self.dead:
            return False
        self._fill(bitmask, index)
        return True


class Constrainer:
    """Compiles (and caches) call grammars for one tokenizer; makes per-request logits processors."""

    def __init__(self, tokenizer: Any, backend: str = "llguidance", cache_size: int = 256) -> None:
        if backend not in BACKENDS:
            raise UserError(f"unknown constrained-decoding backend `{backend}`; choose one of {', '.join(BACKENDS)}")
        self.backend, self.tokenizer = backend, tokenizer
        self._compiled: OrderedDict[str, Any] = OrderedDict()
        self._cache_size = cache_size
        eos = tokenizer.eos_token_id
        try:
            if backend == "llguidance":
                import llguidance.hf

                self._ll = llguidance.hf.from_tokenizer(tokenizer, eos_token=eos)
                self.vocab_size = self._ll.vocab_size
            else:
                import xgrammar as xgr

                info = xgr.TokenizerInfo.from_huggingface(tokenizer, stop_token_ids=[eos])
                self._compiler = xgr.GrammarCompiler(info, max_threads=1)
                self.vocab_size = info.vocab_size
        except ImportError as exc:
            raise UserError(f"constrained decoding with `{backend}` needs it installed: "
                            f"pip install 'fcagent[constrained]' ({exc})") from exc

    def _grammar(self, schema: dict[str, Any]) -> Any:
        key = json.dumps(schema, sort_keys=True, default=str)
        if key in self._compiled:
            self._compiled.move_to_end(key)
            return self._compiled[key]
        if self.backend == "llguidance":
            import llguidance

            grammar = llguidance.LLMatcher.grammar_from_json_schema(
                schema, defaults={"whitespace_flexible": False, "item_separator": _ITEM_SEPARATOR,
                                  "key_separator": _KEY_SEPARATOR})
            error = llguidance.LLMatcher.validate_grammar(grammar, self._ll)
            if error:
                raise UserError(f"cannot build a grammar from this JSON schema: {error}")
        else:
            try:
                grammar = self._compiler.compile_json_schema(
                    json.dumps(schema), any_whitespace=False, separators=(_ITEM_SEPARATOR, _KEY_SEPARATOR))
            except RuntimeError as exc:
                raise UserError(f"cannot build a grammar from this JSON schema: {exc}") from exc
        self._compiled[key] = grammar
        while len(self._compiled) > self._cache_size:
            self._compiled.popitem(last=False)
        return grammar

    def row(self, schema: dict[str, Any] | list[dict[str, Any]], prefix: str = "", *, many: bool = False) -> _Row:
        """A fresh matcher for one reply that must be a JSON value of `schema` and starts with `prefix`
        (already in the prompt). Given a list of tools instead, the reply is a call to one of them
        (`call_schema(tools, many=many)`)."""
        grammar = self._grammar(call_schema(schema, many=many) if isinstance(schema, list) else schema)
        if self.backend == "llguidance":
            import llguidance

            matcher = llguidance.LLMatcher(self._ll, grammar, log_level=0)
            if prefix and not matcher.consume_tokens(self._ll.tokenize_str(prefix)):
                raise UserError(f"the response prefix {prefix!r} cannot start a reply of this schema "
                                f"({matcher.get_error()})")
        else:
            import xgrammar as xgr

            matcher = xgr.GrammarMatcher(grammar)
            if prefix and not matcher.accept_string(prefix):
                raise UserError(f"the response prefix {prefix!r} cannot start a reply of this schema")
        return _Row(self.backend, matcher)

    def accepts(self, tools: list[dict[str, Any]], text: str, *, complete: bool = True, many: bool = False) -> bool:
        """Whether `text` is one complete call (`many`: or a list of calls) the grammar for `tools` allows
        (`complete=False`: the start of one, as a reply cut at its token limit is)."""
        m = self.row(call_schema(tools, many=many)).matcher
        if self.backend == "llguidance":
            return bool(m.consume_tokens(self._ll.tokenize_str(text)) and (m.is_accepting() or not complete))
        return bool(m.accept_string(text) and (m.is_completed() or not complete))

    def allowed(self, rows: list[_Row]) -> tuple[Any, list[bool]]:
        """Each row's allowed next tokens, as a numpy bool array (rows x vocab), and whether the row is
        still constrained (a finished or refused row is not: its line of the array means nothing). Both
        runtimes mask with this."""
        import numpy as np
        import torch

        words = (self.vocab_size + 31) // 32
        bitmask = np.full((len(rows), words), -1, dtype=np.int32)
        view = torch.from_numpy(bitmask)  # the matchers fill a torch tensor; it shares the array's memory
        active = [row.fill(view, i) for i, row in enumerate(rows)]
        bits = np.unpackbits(bitmask.view(np.uint8), axis=1, bitorder="little")  # token 32*w + b = bit b of word w
        return bits[:, :self.vocab_size].astype(bool), active

    def processor(self, rows: list[_Row], prompt_width: int) -> Any:
        """A transformers LogitsProcessor masking each batch row with its own matcher."""
        import torch
        from transformers import LogitsProcessor

        allowed_of = self.allowed
        vocab = self.vocab_size

        class CallGrammarProcessor(LogitsProcessor):
            def __call__(self, input_ids: Any, scores: Any) -> Any:
                if input_ids.shape[1] > prompt_width:  # a token was sampled since the last call
                    for row, token in zip(rows, input_ids[:, -1].tolist()):
                        row.accept(token)
                allowed, active = allowed_of(rows)
                if not any(active):
                    return scores
                mask = torch.zeros_like(scores, dtype=torch.bool)
                width = min(vocab, scores.shape[1])
                mask[:, :width] = ~torch.from_numpy(allowed[:, :width])
                mask[:, vocab:] = True  # padding rows of the embedding are never a token
                mask[[i for i, a in enumerate(active) if not a]] = False
                return scores.masked_fill(mask, float("-inf"))

        return CallGrammarProcessor()
