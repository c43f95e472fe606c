"""Redaction of secrets and personal data before anything leaves the store.

Each rule replaces a match with a typed placeholder such as `<API_KEY>`; rules are configurable
(`Redactor(rules=[...])`, `Redactor().with_rule(kind, pattern)`). Every export applies the default
rules to every string it writes (messages, tool arguments and outputs, label reasons, metadata),
and `fcagent traces show` prints through them.

The default rules cover what users of LangSmith's anonymizer, Presidio and gitleaks expect: private
key blocks (also one cut short by a length limit), cloud and provider keys (AWS, Google, Azure,
OpenAI, Anthropic, GitHub, GitLab, Slack, Stripe, Hugging Face, LangSmith, Groq, ...), tokens
(JWT, bearer, basic auth), credentials in URLs and query strings, `password=` / `"api_key": ...`
style assignments, e-mail addresses, phone numbers, card numbers (Luhn-checked), SSNs, IBANs, IP
addresses.

**Linear time.** Python's `re` backtracks, so a pattern with an unbounded repeat that may start
anywhere inside a long run (`a-a-a-...`) is tried from every position: quadratic. Every rule here
either starts with a literal that must be present, or opens with a look-behind that lets it start
only where its run starts, and bounds its repeats; a rule runs only when its trigger substring is in
the text. `benchmarks/redaction.py` times adversarial megabytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Redactor", "RedactionRule", "DEFAULT_RULES"]


@dataclass(frozen=True)
class RedactionRule:
    kind: str  # the placeholder name, e.g. "API_KEY"
    pattern: re.Pattern[str]
    # The rule can only match where one of these is in the text (lower-cased when `lower`): checked
    # first, a substring test in C. Empty: always run.
    triggers: tuple[str, ...] = ()
    lower: bool = False
    group: str | None = None  # replace only this named group (keep the key of `password=...`)

    def apply(self, text: str) -> tuple[str, int]:
        if self.group is None:
            return self.pattern.subn(f"<{self.kind}>", text)
        placeholder = f"<{self.kind}>"

        def keep_the_rest(m: re.Match[str]) -> str:
            start, end = m.span(self.group)
            return m.group(0)[: start - m.start()] + placeholder + m.group(0)[end - m.start():]

        return self.pattern.subn(keep_the_rest, text)


def _rule(kind: str, pattern: str, *triggers: str, flags: int = 0, group: str | None = None,
          lower: bool = False) -> RedactionRule:
    return RedactionRule(kind, re.compile(pattern, flags), tuple(triggers), lower, group)


def _luhn_ok(digits: str) -> bool:
    total, alt = 0, False
    for ch in reversed(digits):
        d = int(ch)
        if alt:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
        alt = not alt
    return total % 10 == 0


_B = r"(?<![A-Za-z0-9_\-])"  # a token starts here: not inside a longer identifier
_SECRET_NAMES = (r"pass(?:word|wd|phrase)?|pwd|secret|token|api[_\-]?key|apikey|access[_\-]?key|private[_\-]?key|"
                 r"credentials?|auth(?:orization)?|session(?:[_\-]?id)?|cookie|signature|client[_\-]?secret")

# Order matters: private keys first, provider keys before generic tokens, assignments before PII.
DEFAULT_RULES: list[RedactionRule] = [
    # A key block, to its END line or, where a length limit cut it off, to the end of the text.
    _rule("PRIVATE_KEY", r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----(?:(?!-----END )[\s\S]){0,200000}"
          r"(?:-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----)?", "-----BEGIN"),
    _rule("PRIVATE_KEY", r"PuTTY-User-Key-File-\d: [\s\S]{0,5000}?Private-MAC: [0-9a-f]+", "PuTTY-User-Key"),
    _rule("API_KEY", _B + r"sk-ant-[A-Za-z0-9_\-]{20,300}", "sk-ant-"),  # Anthropic
    _rule("API_KEY", _B + r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,300}", "sk-"),  # OpenAI
    _rule("API_KEY", _B + r"(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{30,255}", "gh"),  # GitHub
    _rule("API_KEY", _B + r"github_pat_[A-Za-z0-9_]{22,255}", "github_pat_"),
    _rule("API_KEY", _B + r"glpat-[A-Za-z0-9_\-]{20,64}", "glpat-"),  # GitLab
    _rule("API_KEY", _B + r"(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}(?![0-9A-Za-z])", "AKIA", "ASIA", "ABIA", "ACCA"),  # AWS id
    _rule("API_KEY", r"(?i:aws)[A-Za-z0-9_\- ]{0,30}(?i:secret)[A-Za-z0-9_\- ]{0,30}\\{0,2}[\"']?\s{0,3}[:=]\s{0,3}\\{0,2}[\"']?"
          r"(?P<v>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])", "aws", group="v", lower=True),  # AWS secret, in context
    _rule("API_KEY", _B + r"AIza[0-9A-Za-z_\-]{35}", "AIza"),  # Google API key
    _rule("API_KEY", _B + r"GOCSPX-[A-Za-z0-9_\-]{28}", "GOCSPX-"),  # Google OAuth client secret
    _rule("API_KEY", _B + r"ya29\.[0-9A-Za-z_\-]{20,500}", "ya29."),  # Google OAuth access token
    _rule("API_KEY", r"(?i:AccountKey|SharedAccessKey)=(?P<v>[A-Za-z0-9+/]{20,200}={0,2})", "accountkey=",
          "sharedaccesskey=", group="v", lower=True),  # Azure storage / service bus
    _rule("API_KEY", _B + r"xox[abposre]-[A-Za-z0-9\-]{10,250}", "xox"),  # Slack tokens
    _rule("API_KEY", r"https://hooks\.slack\.com/services/[A-Za-z0-9/_]{10,200}", "hooks.slack.com"),
    _rule("API_KEY", _B + r"(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{16,250}", "_live_", "_test_"),  # Stripe
    _rule("API_KEY", _B + r"whsec_[A-Za-z0-9]{24,100}", "whsec_"),  # Stripe webhook secret
    _rule("API_KEY", _B + r"hf_[A-Za-z0-9]{30,100}", "hf_"),  # Hugging Face
    _rule("API_KEY", _B + r"lsv2_(?:pt|sk)_[A-Za-z0-9_]{20,100}", "lsv2_"),  # LangSmith
    _rule("API_KEY", _B + r"gsk_[A-Za-z0-9]{40,100}", "gsk_"),  # Groq
    _rule("API_KEY", _B + r"r8_[A-Za-z0-9]{30,100}", "r8_"),  # Replicate
    _rule("API_KEY", _B + r"(?:pplx|xai)-[A-Za-z0-9]{32,100}", "pplx-", "xai-"),  # Perplexity, xAI
    _rule("API_KEY", _B + r"SG\.[A-Za-z0-9_\-]{16,32}\.[A-Za-z0-9_\-]{16,64}", "SG."),  # SendGrid
    _rule("API_KEY", _B + r"npm_[A-Za-z0-9]{36}", "npm_"),  # npm
    _rule("API_KEY", _B + r"pypi-AgE[A-Za-z0-9_\-]{50,300}", "pypi-AgE"),  # PyPI
    _rule("API_KEY", _B + r"SK[0-9a-fA-F]{32}(?![0-9A-Za-z])", "SK"),  # Twilio API key
    _rule("API_KEY", _B + r"key-[0-9a-zA-Z]{32}(?![0-9A-Za-z])", "key-"),  # Mailgun
    _rule("API_KEY", _B + r"shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}", "shp"),  # Shopify
    _rule("API_KEY", _B + r"dop_v1_[a-f0-9]{64}", "dop_v1_"),  # DigitalOcean
    _rule("API_KEY", _B + r"dapi[a-f0-9]{32}(?:-\d)?(?![0-9A-Za-z])", "dapi"),  # Databricks
    _rule("JWT", _B + r"eyJ[A-Za-z0-9_\-]{8,4000}\.[A-Za-z0-9_\-]{8,8000}\.[A-Za-z0-9_\-]{8,4000}", "eyJ"),
    _rule("BEARER_TOKEN", r"(?i:bearer)\s{1,5}[A-Za-z0-9._~+/\-]{16,4000}=*", "bearer", lower=True),
    _rule("BASIC_AUTH", r"(?i:basic)\s{1,5}[A-Za-z0-9+/]{12,1000}={0,2}(?![A-Za-z0-9+/=])", "basic", lower=True),
    # Credentials inside a URL: scheme://user:password@host (databases, brokers, proxies).
    _rule("CREDENTIALS", r"(?<=://)[^\s:/@\"'<>]{0,200}:[^\s@/\"'<>]{1,300}(?=@)", "://"),
    _rule("SECRET", r"(?i)[?&](?:api[_\-]?key|key|token|access[_\-]?token|secret|password|passwd|sig|signature|"
          r"client[_\-]?secret|auth)=(?P<v>[^&\s\"'<>#]{4,500})", "=", group="v"),
    # `password=...`, `CLIENT_SECRET: ...`, `"api_key": "..."`, `x-api-key: ...`: the value after a secret-ish name.
    # (Quotes may come escaped: a JSON document inside a JSON string, as in a tool call's arguments.)
    _rule("SECRET", r"(?i)(?:" + _SECRET_NAMES + r")[A-Za-z0-9_.\-]{0,30}\\{0,2}[\"']?\s{0,3}[:=]\s{0,3}\\{0,2}[\"']?"
          r"(?P<v>(?!<[A-Z_]+>)(?![0-9.]+(?![^\s\"',;{}\\]))(?!(?:true|false|null|none)\b)[^\s\"',;{}<>\\]{4,300})",
          "pass", "pwd", "secret", "token", "key", "credential", "auth", "session", "cookie", "signature",
          group="v", lower=True),
    _rule("EMAIL", r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63}){0,8}"
          r"\.[A-Za-z]{2,24}(?![A-Za-z0-9\-])", "@"),
    _rule("IBAN", r"(?<![A-Z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}(?: ?[A-Z0-9]{1,3})?(?![A-Z0-9])"),
    _rule("SSN", r"(?<![\d\-])\d{3}-\d{2}-\d{4}(?![\d\-])", "-"),
    _rule("IP_ADDRESS", r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])", "."),
]
# Numbers with separators, checked after the rules (cards by Luhn, so ordinary numbers stay).
_CARD = re.compile(r"(?<![\d\-])\d(?:[ \-]?\d){12,18}(?![\d\-])")
_PHONE = re.compile(
    r"(?<![\w.+\-])(?:\+\d{1,3}[ .\-]?)?(?:\(\d{2,4}\)[ .\-]?|\d{2,4}[ .\-])\d{3,4}[ .\-]\d{3,4}(?![\w.])"  # formatted
    r"|(?<![\w.+\-])\+\d{1,3}[ .\-]?\d{6,12}(?![\w.])"  # +44 2079460958
    r"|(?<![\w.+\-])[2-9]\d{9}(?![\w.])")  # a bare 10-digit North American number (never a 1... epoch second)
_DIGITS = re.compile(r"\d{3}")


@dataclass
class Redactor:
    """Replaces secrets and personal data in text, recursively in JSON-like values."""

    rules: list[RedactionRule] = field(default_factory=lambda: list(DEFAULT_RULES))
    cards: bool = True
    phones: bool = True
    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def default(cls) -> Redactor:
        return cls()

    def with_rule(self, kind: str, pattern: str) -> Redactor:
        return Redactor([*self.rules, _rule(kind, pattern)], cards=self.cards, phones=self.phones)

    def _count(self, kind: str, n: int) -> None:
        if n:
            self.counts[kind] = self.counts.get(kind, 0) + n

    def redact(self, text: str) -> str:
        if not text:
            return text
        lowered = None
        for rule in self.rules:
            if rule.triggers:
                if rule.lower:
                    lowered = lowered if lowered is not None else text.lower()
                    haystack = lowered
                else:
                    haystack = text
                if not any(t in haystack for t in rule.triggers):
                    continue
            text, n = rule.apply(text)
            if n:
                lowered = None
                self._count(rule.kind, n)
        if (self.cards or self.phones) and _DIGITS.search(text):
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
        """Every string in a JSON-like value, dict keys included (iterative: any depth)."""
        if isinstance(value, str):
            return self.redact(value)
        if not isinstance(value, dict | list | tuple):
            return value
        root: list[Any] = [None]
        stack: list[tuple[Any, Any, Any]] = [(value, root, 0)]
        while stack:
            src, parent, key = stack.pop()
            if isinstance(src, dict):
                out: Any = {}
                for k, v in src.items():
                    k2 = self.redact(k) if isinstance(k, str) else k
                    out[k2] = None
                    stack.append((v, out, k2))
            elif isinstance(src, list | tuple):
                out = [None] * len(src)
                for i, v in enumerate(src):
                    stack.append((v, out, i))
            else:
                out = self.redact(src) if isinstance(src, str) else src
            parent[key] = out
        return root[0]
