"""`Redactor`: runs the rules over text (on its normalised copy), then the card and phone checks, and over
JSON-like values by key name."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from fcagent.tracing.redact.numbers import (
    _CARD,
    _DATE_HEAD,
    _DIGITS,
    _DOT_CARD,
    _MATCHER_BUDGET,
    _MAX_CANDIDATE,
    _PHONE,
    _PHONE_CANDIDATE,
    _grouped_like_a_phone,
    _matched,
    _merge,
    _verdict,
)
from fcagent.tracing.redact.rules import (
    _NORMALISE,
    DEFAULT_RULES,
    RedactionRule,
    Span,
    _has_content,
    _json_safe,
    _luhn_ok,
    _rule,
    _splice,
    _unescape_non_ascii,
    secret_key_kind,
)

__all__ = ["Redactor"]


@dataclass
class Redactor:
    """Replaces secrets and personal data in text, recursively in JSON-like values."""

    rules: list[RedactionRule] = field(default_factory=lambda: list(DEFAULT_RULES))
    cards: bool = True
    phones: bool = True
    counts: dict[str, int] = field(default_factory=dict)
    # Where national phone numbers (no `+`/`00`) are read as from; international forms match for every country.
    phone_regions: tuple[str, ...] = ("US",)

    def __post_init__(self) -> None:
        self.phone_regions = tuple(r.upper() for r in self.phone_regions)

    @classmethod
    def default(cls) -> Redactor:
        return cls()

    def with_rule(self, kind: str, pattern: str) -> Redactor:
        return Redactor([*self.rules, _rule(kind, pattern)], cards=self.cards, phones=self.phones,
                        phone_regions=self.phone_regions)

    def _count(self, kind: str, n: int) -> None:
        if n:
            self.counts[kind] = self.counts.get(kind, 0) + n

    def _splice(self, text: str, norm: str, spans: list[Span]) -> tuple[str, str]:
        """Replace the spans (found in `norm`) in both texts; they stay aligned character for character."""
        kept: list[Span] = []
        last = 0
        for span in spans:
            if span[0] >= last:
                kept.append(span)
                last = span[1]
                self._count(span[3], 1)
        if norm is text:
            new = _splice(text, kept)
            return new, new
        return _splice(text, kept), _splice(norm, kept)

    def redact(self, text: str) -> str:
        if not text:
            return text
        if "\\u" in text:
            text = _unescape_non_ascii(text)
        norm = text
        if not text.isascii():
            norm = text.translate(_NORMALISE)
            if norm == text:
                norm = text
        lowered = None
        for rule in self.rules:
            if rule.triggers:
                if rule.lower:
                    lowered = lowered if lowered is not None else norm.lower()
                    haystack = lowered
                else:
                    haystack = norm
                if not any(t in haystack for t in rule.triggers):
                    continue
            if norm is text and rule.simple:
                text, n = rule.pattern.subn(rule.placeholder, text)
                norm = text
                if n:
                    lowered = None
                    self._count(rule.kind, n)
                continue
            spans = rule.spans(norm)
            if spans:
                text, norm = self._splice(text, norm, spans)
                lowered = None
        if (self.cards or self.phones) and _DIGITS.search(norm):
            if self.cards:
                spans = self._card_spans(norm)
                if spans:
                    text, norm = self._splice(text, norm, spans)
            if self.phones:
                spans = self._phone_spans(norm)
                if spans:
                    text, norm = self._splice(text, norm, spans)
        return text

    @staticmethod
    def _card_spans(norm: str) -> list[Span]:
        out: list[Span] = []
        for m in itertools.chain(_CARD.finditer(norm), _DOT_CARD.finditer(norm)):
            digits = re.sub(r"\D", "", m.group(0))
            if 13 <= len(digits) <= 19 and _luhn_ok(digits):
                out.append((m.start(), m.end(), _json_safe(norm, m.start(), m.end(), "<CARD_NUMBER>"), "CARD_NUMBER"))
        out.sort()
        return out

    def _phone_spans(self, norm: str) -> list[Span]:
        found: list[tuple[int, int]] = []
        budget = _MATCHER_BUDGET
        for m in _PHONE_CANDIDATE.finditer(norm):
            cand, base = m.group(0), m.start()
            if _DATE_HEAD.match(cand):
                continue
            spans: list[tuple[int, int]] = []
            if len(cand) > _MAX_CANDIDATE:  # a long run of digit groups (a table): the regexes, and its opening
                spans += [x.span() for x in _PHONE.finditer(cand)]
                cut = cand.rfind(" ", 0, _MAX_CANDIDATE)
                cand = cand[:cut if cut > 0 else _MAX_CANDIDATE]
            verdict = _verdict(cand, self.phone_regions) if _grouped_like_a_phone(cand) else None
            if verdict:
                spans.append((0, len(cand)))
            elif verdict is None and budget > 0:  # more digits than one number: the matcher, then windows
                budget -= 1
                spans += _matched(cand, self.phone_regions)
            elif verdict is None:  # the budget is spent (text built to exhaust it): the regexes
                spans += [x.span() for x in _PHONE.finditer(cand)]
            found += [(base + s, base + e) for s, e in spans]
        return [(s, e, _json_safe(norm, s, e, "<PHONE>"), "PHONE") for s, e in _merge(found)]

    def _redact_number(self, value: int) -> Any:
        """A JSON number shaped like a card (13-19 digits, a card network's first digit, Luhn) or a
        phone number (10-15 digits, valid for `phone_regions`) becomes the placeholder string."""
        if value < 10**9:
            return value
        digits = str(value)
        if self.cards and 13 <= len(digits) <= 19 and digits[0] in "23456" and _luhn_ok(digits):
            self._count("CARD_NUMBER", 1)
            return "<CARD_NUMBER>"
        if self.phones and 10 <= len(digits) <= 15 and _verdict(digits, self.phone_regions):
            self._count("PHONE", 1)
            return "<PHONE>"
        return value

    def redact_value(self, value: Any) -> Any:
        """Every string in a JSON-like value, dict keys included (iterative: any depth). A value under a
        key that names a secret (`secret_key_kind`) is replaced whole, whatever it is (string, number,
        list, object; not None or a bool), except in a JSON schema's `properties`; an int shaped like a
        card or phone number becomes its placeholder."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return self._redact_number(value)
        if not isinstance(value, dict | list | tuple):
            return value
        root: list[Any] = [None]
        stack: list[tuple[Any, Any, Any, bool]] = [(value, root, 0, False)]
        while stack:
            src, parent, key, schema = stack.pop()
            if isinstance(src, dict):
                out: Any = {}
                by_name = not schema and "logprob" not in src  # a logprobs entry's "token" is text
                for k, v in src.items():
                    k2 = self.redact(k) if isinstance(k, str) else k
                    kind = secret_key_kind(k) if by_name and isinstance(k, str) else None
                    if kind is not None and _has_content(v):
                        out[k2] = f"<{kind}>"
                        self._count(kind, 1)
                        continue
                    out[k2] = None
                    stack.append((v, out, k2, k == "properties" and isinstance(v, dict)))
            elif isinstance(src, list | tuple):
                out = [None] * len(src)
                for i, v in enumerate(src):
                    stack.append((v, out, i, False))
            elif isinstance(src, str):
                out = self.redact(src)
            elif isinstance(src, int) and not isinstance(src, bool):
                out = self._redact_number(src)
            else:
                out = src
            parent[key] = out
        return root[0]
