"""Redaction of secrets and personal data before anything leaves the store for training.

Each rule replaces a match with a typed placeholder such as `<API_KEY>`; rules are configurable
(`Redactor(rules=[...])`, `Redactor.default().with_rule(...)`). Exports apply the default rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["Redactor", "RedactionRule", "DEFAULT_RULES"]


@dataclass(frozen=True)
class RedactionRule:
    kind: str  # the placeholder name, e.g. "API_KEY"
    pattern: re.Pattern[str]

    def apply(self, text: str) -> tuple[str, int]:
        return self.pattern.subn(f"<{self.kind}>", text)


def _rule(kind: str, pattern: str, flags: int = 0) -> RedactionRule:
    return RedactionRule(kind, re.compile(pattern, flags))


def _luhn_ok(digits: str) -> bool:
    total, alt = 0, False
    for ch in reversed(digits):
        d = int(ch)
        if alt:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
        alt = not alt
    return total % 10 == 0


# Order matters: specific provider keys before generic tokens, private keys before everything.
DEFAULT_RULES: list[RedactionRule] = [
    _rule("PRIVATE_KEY", r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
    _rule("API_KEY", r"\bsk-ant-[A-Za-z0-9_\-]{20,}"),  # Anthropic
    _rule("API_KEY", r"\bsk-(?:proj-|svcacct-)?[A-Za-z0-9_\-]{20,}"),  # OpenAI
    _rule("API_KEY", r"\b(?:ghp|gho|ghu|ghs|ghr|github_pat)_[A-Za-z0-9_]{20,}"),  # GitHub
    _rule("API_KEY", r"\bAKIA[0-9A-Z]{16}\b"),  # AWS access key id
    _rule("API_KEY", r"\bAIza[0-9A-Za-z_\-]{35}\b"),  # Google
    _rule("API_KEY", r"\bxox[abposr]-[A-Za-z0-9\-]{10,}"),  # Slack
    _rule("API_KEY", r"\bhf_[A-Za-z0-9]{30,}\b"),  # Hugging Face
    _rule("API_KEY", r"\b(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"),  # Stripe
    _rule("API_KEY", r"\blsv2_(?:pt|sk)_[A-Za-z0-9_]{20,}"),  # LangSmith
    _rule("JWT", r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"),
    _rule("BEARER_TOKEN", r"(?i)\bbearer\s+[A-Za-z0-9._~+/\-]{16,}=*"),
    _rule("SECRET", r"(?i)\b(?:password|passwd|secret|api[_-]?key|access[_-]?token)\s*[:=]\s*[\"']?[^\s\"',;]{6,}"),
    _rule("EMAIL", r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}\b"),
    _rule("IBAN", r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}(?: ?[A-Z0-9]{1,3})?\b"),
    _rule("SSN", r"\b\d{3}-\d{2}-\d{4}\b"),
    _rule("IP_ADDRESS", r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"),
]
_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
_PHONE = re.compile(r"(?<![\w.])(?:\+\d{1,3}[ .\-]?)?(?:\(\d{2,4}\)[ .\-]?|\d{2,4}[ .\-])\d{3,4}[ .\-]\d{3,4}(?![\w.])")


class Redactor:
    """Replaces secrets and personal data in text, recursively in JSON-like values."""

    def __init__(self, rules: list[RedactionRule] | None = None, *, cards: bool = True, phones: bool = True):
        self.rules = list(DEFAULT_RULES if rules is None else rules)
        self.cards = cards
        self.phones = phones
        self.counts: dict[str, int] = {}

    @classmethod
    def default(cls) -> Redactor:
        return cls()

    def with_rule(self, kind: str, pattern: str) -> Redactor:
        return Redactor([*self.rules, _rule(kind, pattern)], cards=self.cards, phones=self.phones)

    def _count(self, kind: str, n: int) -> None:
        if n:
            self.counts[kind] = self.counts.get(kind, 0) + n

    def redact(self, text: str) -> str:
        for rule in self.rules:
            text, n = rule.apply(text)
            self._count(rule.kind, n)
        if self.cards:
            def card(m: re.Match[str]) -> str:
                digits = re.sub(r"\D", "", m.group(0))
                if 13 <= len(digits) <= 19 and _luhn_ok(digits):
                    self._count("CARD_NUMBER", 1)
                    return "<CARD_NUMBER>"
                return m.group(0)
            text = _CARD.sub(card, text)
        if self.phones:
            text, n = _PHONE.subn("<PHONE>", text)
            self._count("PHONE", n)
        return text

    def redact_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {k: self.redact_value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.redact_value(v) for v in value]
        return value
