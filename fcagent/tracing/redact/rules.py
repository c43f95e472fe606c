"""The redaction rules: what each kind of secret or personal datum looks like, and the names that say a
value is secret (`secret_key_kind`). The package docs say how they keep to linear time.

Kept as one module: `DEFAULT_RULES` is a table whose rows call the checks above it (Luhn, IBAN checksums, DER
and base64 bodies, `.env` names); a rule is reviewed beside the check it calls, so they stay together."""

from __future__ import annotations

import base64
import binascii
import functools
import itertools
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_RULES", "RedactionRule", "Span", "secret_key_kind"]

Span = tuple[int, int, str, str]  # start, end, replacement, kind


@dataclass(frozen=True)
class RedactionRule:
    kind: str  # the placeholder name, e.g. "API_KEY"
    pattern: re.Pattern[str]
    # The rule can only match where one of these is in the text (lower-cased when `lower`): checked
    # first, a substring test in C. Empty: always run.
    triggers: tuple[str, ...] = ()
    lower: bool = False
    group: str | None = None  # replace only this named group (keep the key of `password=...`)
    # Decides per match: `(start, end, replacement[, kind])` to replace, None to keep it (a checksum,
    # a key name, a decoded body: what a regex cannot say).
    fn: Callable[[re.Match[str]], tuple | None] | None = None
    # Finds the spans itself (a backward scan, which a forward regex cannot do in linear time).
    finder: Callable[[str], Iterable[tuple[int, int, str]]] | None = None

    @property
    def placeholder(self) -> str:
        return f"<{self.kind}>"

    @property
    def simple(self) -> bool:
        return self.group is None and self.fn is None and self.finder is None

    def spans(self, text: str) -> list[Span]:
        """The replacements in `text`, in order, not overlapping."""
        kind = self.kind
        if self.finder is not None:
            return [(s, e, r, kind) for s, e, r in self.finder(text)]
        if self.fn is not None:
            out: list[Span] = []
            for m in self.pattern.finditer(text):
                hit = self.fn(m)
                if hit is not None:
                    out.append(hit if len(hit) == 4 else (*hit, kind))
            return out
        placeholder = self.placeholder
        if self.group is None:
            return [(m.start(), m.end(), placeholder, kind) for m in self.pattern.finditer(text)]
        return [(m.start(self.group), m.end(self.group), placeholder, kind) for m in self.pattern.finditer(text)
                if m.start(self.group) >= 0]

    def apply(self, text: str) -> tuple[str, int]:
        if self.simple:
            return self.pattern.subn(self.placeholder, text)
        spans = self.spans(text)
        return _splice(text, spans), len(spans)


def _rule(kind: str, pattern: str, *triggers: str, flags: int = 0, group: str | None = None,
          lower: bool = False, fn: Callable[[re.Match[str]], tuple | None] | None = None,
          finder: Callable[[str], Iterable[tuple[int, int, str]]] | None = None) -> RedactionRule:
    return RedactionRule(kind, re.compile(pattern, flags), tuple(triggers), lower, group, fn, finder)


def _splice(text: str, spans: list[Span]) -> str:
    parts, last = [], 0
    for s, e, repl, _ in spans:
        if s < last:  # overlapping an earlier span: already replaced
            continue
        parts.append(text[last:s])
        parts.append(repl)
        last = e
    parts.append(text[last:])
    return "".join(parts)


def _first_group(*names: str, kind: str | None = None) -> Callable[[re.Match[str]], tuple | None]:
    """Replace the first of these groups that took part in the match (quoted or bare alternatives)."""

    def fn(m: re.Match[str]) -> tuple | None:
        for name in names:
            s = m.start(name)
            if s >= 0:
                value = m.group(name)
                if not value or _PLACEHOLDER.fullmatch(value):
                    return None
                return (s, m.end(name), f"<{kind}>", kind) if kind else (s, m.end(name), "<SECRET>", "SECRET")
        return None

    return fn


def _luhn_ok(digits: str) -> bool:
    total, alt = 0, False
    for ch in reversed(digits):
        d = int(ch)
        if alt:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
        alt = not alt
    return total % 10 == 0


# --- Unicode normalisation (one character for one character) -------------------------------------


def _normalisation_table() -> dict[int, str]:
    table: dict[int, str] = {}
    for cp in (0x00A0, 0x1680, *range(0x2000, 0x200B), 0x202F, 0x205F, 0x3000):  # space separators (Zs)
        table[cp] = " "
    for cp in range(0xFF01, 0xFF5F):  # full-width ASCII: ＋４４, ＠, Ａ
        table[cp] = chr(cp - 0xFEE0)
    for cp in (*range(0x2010, 0x2016), 0x2043, 0x2212, 0xFE58, 0xFE63):  # hyphens, dashes, minus
        table[cp] = "-"
    table.update({0xFE6B: "@", 0xFE52: ".", 0x3002: ".", 0xFF61: "."})  # small @, ideographic full stops (IDN)
    for cp in itertools.chain(range(0x0660, 0x1C5A), range(0xA620, 0xAA5A), range(0xABF0, 0xABFA),
                              range(0x104A0, 0x104AA), range(0x1D7CE, 0x1D800)):
        d = unicodedata.decimal(chr(cp), None)
        if d is not None and cp not in table:
            table[cp] = str(d)
    return table


_NORMALISE = _normalisation_table()
_JSON_ESCAPE = re.compile(r"(?<!\\)\\u([0-9a-fA-F]{4})(?:\\u(d[c-f][0-9a-fA-F]{2}))?")


def _unescape_non_ascii(text: str) -> str:
    """`\\u00a0`, `\\uff14`, `\\u00e9` (json.dumps' ASCII escapes, as in `json.dumps(tool_calls)`) -> the
    character, so an escaped no-break space, full-width digit or accented e-mail is matched like the
    character itself (the same JSON either way). ASCII escapes (`\\u0022`) and lone surrogates stay."""

    def one(m: re.Match[str]) -> str:
        hi = int(m.group(1), 16)
        if m.group(2):
            lo = int(m.group(2), 16)
            if 0xD800 <= hi < 0xDC00 and 0xDC00 <= lo < 0xE000:
                return chr(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
            return m.group(0)
        return chr(hi) if hi >= 0x80 and not 0xD800 <= hi < 0xE000 else m.group(0)

    return _JSON_ESCAPE.sub(one, text)


# --- key names --------------------------------------------------------------------------------------

_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_SECRET_WORDS = frozenset(
    "password passwords passwd pwd passphrase passcode secret secrets token credential credentials creds cookie "
    "cookies setcookie authorization auth bearer jwt session pin pincode cvv cvc cvv2 otp totp mnemonic apikey "
    "apitoken accesstoken authtoken refreshtoken idtoken clientsecret sessionid sessiontoken privatekey secretkey "
    "accesskey xapikey privkey".split())
# `..._key` is a secret after these (an `api_key`, not a `sort_key`, `primary_key` or a musical `key`)
_KEY_QUALIFIERS = frozenset(
    "api access secret private client encryption decryption signing sign license licence master ssh gpg pgp "
    "account subscription shared storage app application auth session consumer deploy webhook admin service root "
    "hmac jwt crypto aes openai anthropic azure stripe aws gcp google datadog dd github gitlab slack sendgrid "
    "twilio mailgun groq mistral cohere together huggingface hf langsmith langchain pinecone mapbox algolia "
    "firebase supabase".split())
_TOKEN_QUALIFIERS = frozenset("access refresh api auth bearer oauth session id personal github slack bot".split())
# The last word says the value is about the secret, not the secret (`token_count`, `password_policy`, `api_key_env`).
_DESCRIPTORS = frozenset(
    "name names type types kind format length len count counts size limit limits usage ids policy policies "
    "required enabled disabled hint hints label title description desc prompt expires expiry expiration expired "
    "ttl lifetime rotation version field fields param params parameter location source provider budget index idx "
    "position pos rate ratio per second seconds logprob logprobs strength score set exists present valid changed "
    "updated created at on time date timestamp env var variable file path url uri endpoint header mode method "
    "scheme scope scopes status state flow pattern regex min max chars characters dir directory template config "
    "settings options placeholder".split())
_PII_KEYS = {"ssn": "SSN", "socialsecuritynumber": "SSN", "iban": "IBAN", "cardnumber": "CARD_NUMBER",
             "creditcard": "CARD_NUMBER", "creditcardnumber": "CARD_NUMBER", "ccnumber": "CARD_NUMBER"}
_PUBLIC = frozenset(("public", "publishable", "pub"))


@functools.lru_cache(maxsize=8192)
def secret_key_kind(name: str) -> str | None:
    """The placeholder kind for a value stored under this key name (`"SECRET"`, `"SSN"`, ...), None if
    the name says nothing secret. `password`, `aws_secret_access_key`, `apiKey`, `x-api-key`,
    `Authorization`, `session_id`, `client_secret`, `credentials`: secret; `max_tokens`, `token_count`,
    `key`, `sort_key`, `password_policy`, `api_key_env`: not."""
    words = [w.lower() for w in _WORDS.findall(name)]
    if not words:
        return None
    joined = "".join(words)
    if joined in _PII_KEYS:
        return _PII_KEYS[joined]
    if len(words) > 1 and words[-1] in _DESCRIPTORS or _PUBLIC.intersection(words):
        return None
    if joined in _SECRET_WORDS or joined == "pass":
        return "SECRET"
    for i, w in enumerate(words):
        if w in _SECRET_WORDS:
            return "SECRET"
        if i and (w in ("key", "keys") and words[i - 1] in _KEY_QUALIFIERS or w == "tokens" and words[i - 1] in _TOKEN_QUALIFIERS):
            return "SECRET"
    return None


_PLACEHOLDER = re.compile(r"<[A-Z_]+>")
# A secret-named key contains one of these (lower-cased): the trigger of the rules that read key names.
_KEY_STEMS = ("pass", "pwd", "secret", "token", "key", "auth", "cookie", "session", "cred", "bearer", "jwt", "pin",
              "cvv", "cvc", "otp", "ssn", "iban", "card", "mnemonic")


def _has_content(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return False
    if isinstance(value, str):
        return bool(value.strip()) and not _PLACEHOLDER.fullmatch(value)
    if isinstance(value, dict | list | tuple):
        return bool(value)
    return True


# --- rule helpers -------------------------------------------------------------------------------------

_B = r"(?<![A-Za-z0-9_\-])"  # a token starts here: not inside a longer identifier
_SECRET_NAMES = (r"pass(?:word|wd|phrase)?|pwd|secret|token|api[_\-]?key|apikey|access[_\-]?key|private[_\-]?key|"
                 r"credentials?|auth(?:orization)?(?!or|ent)|session(?:[_\-]?id)?|cookie|signature|client[_\-]?secret")
_BR = r"(?:\r?\n|(?:\\r)?\\n)"  # a line break, real or JSON-escaped
_B64_BREAKS = re.compile(r"\\r|\\n|\s")
_JSON_NUMBER_BEFORE = re.compile(r"(\\?)\"[ \t]{0,3}:[ \t]{0,3}$")
_JSON_NUMBER_AFTER = re.compile(r"[ \t]{0,3}(?:[,}\]]|$)")


def _json_safe(text: str, s: int, e: int, placeholder: str) -> str:
    """A placeholder for a bare JSON number (`"card": 4111...`) is quoted, so the JSON stays JSON."""
    if text[s:e].isdigit():
        before = _JSON_NUMBER_BEFORE.search(text, max(0, s - 8), s)
        if before and _JSON_NUMBER_AFTER.match(text, e):
            q = '\\"' if before.group(1) else '"'
            return f"{q}{placeholder}{q}"
    return placeholder


def _b64decode(chars: str) -> bytes | None:
    chars = chars[: len(chars) // 4 * 4]
    try:
        return base64.b64decode(chars, validate=True) if chars else None
    except (binascii.Error, ValueError):
        return None


def _printable(data: bytes) -> bool:
    return bool(data) and sum(32 <= b < 127 or b in (9, 10, 13) for b in data) >= 0.95 * len(data)


_HEX = frozenset("0123456789abcdefABCDEF")
_PBE_OIDS = (bytes.fromhex("2a864886f70d01050d"), bytes.fromhex("2a864886f70d010c01"))  # PBES2, PKCS#12 PBE


def _der_private(head: bytes) -> bool:
    """The first bytes of a DER private key: SEQUENCE then INTEGER version 0/1 (PKCS#1, PKCS#8, SEC1,
    DSA) or 3 (PKCS#12), or an encrypted PKCS#8 (its PBE OID). Certificates and public keys differ."""
    if len(head) < 8 or head[0] != 0x30:
        return False
    i = 2 + (head[1] & 0x7F if head[1] & 0x80 else 0)
    if head[i:i + 2] == b"\x02\x01" and head[i + 2:i + 3] in (b"\x00", b"\x01", b"\x03"):
        return True
    return head[i:i + 1] == b"\x30" and any(oid in head[:48] for oid in _PBE_OIDS)


def _der_body(m: re.Match[str]) -> tuple | None:
    raw = _B64_BREAKS.sub("", m.group(0))
    if len(raw) < 60:
        return None
    if raw.startswith("b3BlbnNzaC1rZXktdjE"):  # "openssh-key-v1"
        return m.start(), m.end(), "<PRIVATE_KEY>"
    head = _b64decode(raw[:64])
    return (m.start(), m.end(), "<PRIVATE_KEY>") if head and _der_private(head) else None


def _wrapped_body(m: re.Match[str]) -> tuple | None:
    """Lines of exactly 64 (PEM) or 70 (OpenSSH) base64 characters: a key body cut from its BEGIN
    line, unless it opens like a certificate or a public key."""
    raw = _B64_BREAKS.sub("", m.group(0))
    if all(c in _HEX for c in raw):  # a list of digests (sha256 sums), not base64
        return None
    head = _b64decode(raw[:64])
    if head and head[0] == 0x30 and not _der_private(head):
        i = 2 + (head[1] & 0x7F if head[1] & 0x80 else 0)
        if head[i:i + 1] == b"\x30":  # certificate (TBSCertificate) or SubjectPublicKeyInfo
            return None
    return m.start(), m.end(), "<PRIVATE_KEY>"


_PEM_END = re.compile(r"-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
_REVERSED_BODY = re.compile(r"(?:\n[\r\x00]*[ \t]*[A-Za-z0-9+/=]{4,}+(?:[ \t]+(?=\n))?)+")


def _bodies_before_end(text: str) -> Iterable[tuple[int, int, str]]:
    """A key body whose BEGIN line is gone (cut, or never pasted): the base64 lines right above an
    END line. Read backwards from each END, never past the previous one: linear."""
    prev = 0
    for m in _PEM_END.finditer(text):
        lo = max(prev, m.start() - 262_144)
        window = text[lo:m.start()].replace("\\n", "\x00\n").replace("\\r", "\x00\x00")
        body = _REVERSED_BODY.match(window[::-1])
        if body and sum(c.isalnum() or c in "+/=" for c in body.group(0)) >= 40:
            yield m.start() - body.end(), m.end(), "<PRIVATE_KEY>"
        prev = m.end()


def _encoded_secret(m: re.Match[str]) -> tuple | None:
    """A base64 run that decodes to text holding a secret (a PEM key, a provider token, ...)."""
    raw = _B64_BREAKS.sub("", m.group(0))
    head = _b64decode(raw[:64])
    if head is None or not _printable(head):
        return None
    decoded = _b64decode(raw[:400_000] + "=" * (-len(raw) % 4))
    if decoded is None:
        return None
    kind = _secret_kind_in(decoded.decode("utf-8", "replace"))
    return (m.start(), m.end(), f"<{kind}>", kind) if kind else None


def _has_digit_and_letter(m: re.Match[str]) -> tuple | None:
    """A provider token glued to a name (`MY_TOKEN_ghp_...`): real ones are random, so they mix
    letters and digits (`my-sk-learn-pipeline-notes` does not)."""
    text = m.group(0)
    if any(c.isdigit() for c in text) and sum(c.isalpha() for c in text) >= 4:
        return m.start(), m.end(), "<API_KEY>"
    return None


def _jwt(m: re.Match[str]) -> tuple | None:
    parts = _B64_BREAKS.sub("", m.group(0)).split(".")
    return (m.start(), m.end(), "<JWT>") if len(parts) == 3 and all(len(p) >= 8 for p in parts) else None


def _assigned(m: re.Match[str]) -> tuple | None:
    """`"password": "a b c"`, `password="x"`, `'pin': 1234`, `"api_keys": ["a", "b"]`: the whole quoted
    value, the number, or the list, when the key names a secret (`secret_key_kind`)."""
    kind = secret_key_kind(m.group("k"))
    if kind is None:
        return None
    for g in ("v1", "v2", "v3"):
        s = m.start(g)
        if s >= 0:
            value = m.group(g)
            if not value.strip() or _PLACEHOLDER.fullmatch(value) or value.lower() in ("true", "false", "null", "none"):
                return None
            return s, m.end(g), f"<{kind}>", kind
    g = "n" if m.start("n") >= 0 else "a"
    s, e = m.span(g)
    q = m.group("kq")
    return s, e, f"{q}<{kind}>{q}" if q and q != "`" else f"<{kind}>", kind


_ENV_WORDS = frozenset(("key", "keys", "dsn", "salt", "pepper", "pass", "mnemonic", "seed", "secret", "token"))
# `SORT_KEY=name`, `PRIMARY_KEY=id`: keys of a table or a cache, not credentials
_DATA_KEYS = frozenset("sort primary foreign partition cache group dict map index lookup unique composite row shard "
                       "routing idempotency dedupe dedup music musical hot".split())
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _env_line(m: re.Match[str]) -> tuple | None:
    """`.env` / shell lines: `STRIPE_KEY=...`, `export SENTRY_DSN="..."`, `ENCRYPTION_KEY=...`."""
    key = m.group("k")
    words = [w for w in re.split(r"[_.\-]+", key.lower()) if w]
    if not (secret_key_kind(key) or len(words) > 1 and _ENV_WORDS.intersection(words) and words[-1] not in _DESCRIPTORS
            and not _PUBLIC.intersection(words) and not _DATA_KEYS.intersection(words)):
        return None
    for g in ("v1", "v2", "v4", "v3"):
        s = m.start(g)
        if s >= 0:
            value = m.group(g)
            if (_PLACEHOLDER.search(value) or _NUMBER.fullmatch(value) or value.startswith("$")
                    or value.lower() in ("true", "false", "yes", "no", "null", "none", "''", '""')):
                return None
            return s, m.end(g), "<SECRET>"
    return None


_IBAN_LENGTHS = {
    c[:2]: int(c[2:]) for c in
    "AD24 AE23 AL28 AT20 AZ28 BA20 BE16 BG22 BH22 BI27 BR29 BY28 CH21 CR22 CY28 CZ24 DE22 DJ27 DK18 DO28 EE20 EG29 "
    "ES24 FI18 FK18 FO18 FR27 GB22 GE22 GI23 GL18 GR27 GT28 HN28 HR21 HU28 IE22 IL23 IQ23 IS26 IT27 JO30 KW30 KZ20 "
    "LB28 LC32 LI21 LT20 LU20 LV21 LY25 MC27 MD24 ME22 MK19 MN20 MR27 MT31 MU30 NI28 NL18 NO15 OM23 PK24 PL28 PS29 "
    "PT25 QA29 RO24 RS22 RU33 SA24 SC31 SD18 SE24 SI19 SK24 SM27 SO23 ST25 SV28 TL23 TN24 TR26 UA29 VA22 VG24 XK20 "
    "YE30".split()}


_IBAN_DIGITS = {ord(c): str(10 + i) for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ")}
_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]+")


@functools.cache
def _nth_alnum(n: int) -> re.Pattern[str]:
    return re.compile(r"(?:[^A-Za-z0-9]*[A-Za-z0-9]){%d}" % n)


def _iban(m: re.Match[str]) -> tuple | None:
    """A lower-case, mixed-case or dash-separated IBAN: its country's length and the mod-97 checksum."""
    text = m.group(0)
    want = _IBAN_LENGTHS.get(text[:2].upper())
    if want is None:
        return None
    code = _NOT_ALNUM.sub("", text)[:want].upper()
    end = _nth_alnum(want).match(text)
    if len(code) != want or end is None or text[end.end():end.end() + 1].isalnum():
        return None
    if int((code[4:] + code[:4]).translate(_IBAN_DIGITS)) % 97 != 1:
        return None
    return m.start(), m.start() + end.end(), "<IBAN>"


# Tokens a provider prefixes, for keys glued after `_` or `-` (`OPENAI_KEY_sk-proj-...`): every
# alternative fails within a bounded scan, so a start after each `_`/`-` stays linear.
_GLUED = (
    r"(?<=[_\-])(?=[sgAGyxpwhlrnSdkK])(?:sk-ant-[A-Za-z0-9_\-]{20,300}|sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,300}"
    r"|(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{30,255}|github_pat_[A-Za-z0-9_]{22,255}|glpat-[A-Za-z0-9_\-]{20,64}"
    r"|(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}(?![0-9A-Za-z])|AIza[0-9A-Za-z_\-]{35}|GOCSPX-[A-Za-z0-9_\-]{28}"
    r"|ya29\.[0-9A-Za-z_\-]{20,500}|xox[abposre]-[A-Za-z0-9\-]{10,250}|xapp-\d-[A-Za-z0-9\-]{20,250}"
    r"|(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{16,250}|whsec_[A-Za-z0-9]{24,100}|hf_[A-Za-z0-9]{30,100}"
    r"|lsv2_(?:pt|sk)_[A-Za-z0-9_]{20,100}|gsk_[A-Za-z0-9]{40,100}|r8_[A-Za-z0-9]{30,100}|(?:pplx|xai)-[A-Za-z0-9]{32,100}"
    r"|SG\.[A-Za-z0-9_\-]{16,32}\.[A-Za-z0-9_\-]{16,64}|npm_[A-Za-z0-9]{36}|pypi-AgE[A-Za-z0-9_\-]{50,300}"
    r"|SK[0-9a-fA-F]{32}(?![0-9A-Za-z])|key-[0-9a-zA-Z]{32}(?![0-9A-Za-z])|shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}"
    r"|dop_v1_[a-f0-9]{64}|dapi[a-f0-9]{32}(?:-\d)?(?![0-9A-Za-z])|(?:ATATT|ATCTT|ATSTT)3[A-Za-z0-9_\-=]{40,300}"
    r"|ATBB[A-Za-z0-9_\-=]{28,100})")
# A line that continues a wrapped token or body: long, or with a digit or symbol in it (not the word
# "Thanks" on the line after a key)
_MORE = r"(?=[A-Za-z0-9+/_\-]{16}|[A-Za-z]{0,15}[0-9+/=_\-])"
# The last line of a wrapped body: full, or short, base64-looking and ending the line
_LAST_LINE = (r"(?:[A-Za-z0-9+/]{%(n)d}(?![A-Za-z0-9+/])|" + _MORE +
              r"[A-Za-z0-9+/]{1,%(n)d}={0,2}(?=[ \t]*(?:[\r\n\\\"'<,;)\]}]|-----|$)))?")
# A JWT segment, possibly broken over lines (a terminal or an e-mail wrapped it).
_JWT_SEG = r"[A-Za-z0-9_\-]{1,%d}+(?:" + _BR + r"[ \t]{0,8}" + _MORE + r"[A-Za-z0-9_\-]{1,%d}+){0,8}+"
_JWT_DOT = r"(?:" + _BR + r"[ \t]{0,8})?\.(?:" + _BR + r"[ \t]{0,8})?"
_JWT_REST = _JWT_DOT + (_JWT_SEG % (8000, 8000)) + _JWT_DOT + (_JWT_SEG % (4000, 4000))
# A base64 run, possibly wrapped (possessive: once it has 32 characters it never fails, so never rescans)
_B64_RUN = r"[A-Za-z0-9+/]{%d,8000}+(?:" + _BR + r"[ \t]{0,8}" + _MORE + r"[A-Za-z0-9+/]{1,8000}+){0,2000}+={0,2}"
_VALUE_SEP = r"\b[\"'`]?[ \t]{0,3}(?:(?:is|was|=>|:=|->|-)[ \t]{0,3})?[:=]?[ \t]{0,3}[\"'`]?"
_CONTEXT_NAMES = (r"(?i:azure(?:[ _\-]?open[ _\-]?ai)?|open[ _\-]?ai|anthropic|datadog|dd|cognitive[ _\-]?services?|"
                  r"subscription|api|app(?:lication)?|access|secret|private|account|master|admin|client|service|"
                  r"atlassian|jira|confluence|bitbucket|primary|secondary|personal[ _\-]access)"
                  r"[ _\-]?(?i:api[ _\-]?)?(?i:key|token|secret|password)s?")
_ENV_VALUE = (r"(?:\"(?P<v1>[^\"\n]{1,500})\"|'(?P<v2>[^'\n]{1,500})'|\\\"(?P<v4>[^\"\\\n]{1,500})\\\""
              r"|(?P<v3>[^\s\"'#\\][^\s\\]{0,500}))")
# A JSON scalar, in plain or escaped JSON text (a list of them under a secret name goes whole)
_SCALAR = (r"(?:\"(?:[^\"\\\n]|\\.){0,300}\"|'(?:[^'\\\n]|\\.){0,300}'|\\\"(?:[^\"\\\n]|\\(?!\")){0,300}\\\""
           r"|-?\d[\d.eE+\-]{0,40}|true|false|null)")
# Up to 8 arguments of a command line before the one sought (a token at a time: a bounded scan per command)
_ARGS = r"(?:[ \t]{1,3}[^\s|;&]{1,80}+){0,8}?"
_QUOTED = (r"(?:\"(?P<v1>[^\"\n]{1,300})\"|'(?P<v2>[^'\n]{1,300})'|\\\"(?P<v4>[^\"\\\n]{1,300})\\\""
           r"|(?P<v3>(?![\-\\])[^\s\"']{1,300}))")  # "x y", 'x y', \"x y\" (in JSON text), or one word

# Order matters: private keys first, provider keys before generic tokens, assignments before PII.
DEFAULT_RULES: list[RedactionRule] = [
    # A key block, to its END line or, where a length limit cut it off, to the end of the text.
    _rule("PRIVATE_KEY", r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----(?:(?!-----END )[\s\S]){0,200000}"
          r"(?:-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----)?", "-----BEGIN"),
    _rule("PRIVATE_KEY", r"PuTTY-User-Key-File-\d: [\s\S]{0,5000}?Private-MAC: [0-9a-f]+", "PuTTY-User-Key"),
    # Its body without the BEGIN line: the lines above an END line; a DER/OpenSSH body on its own
    # (decoded: a private key's structure, not a certificate's); lines wrapped at 64/70 characters.
    _rule("PRIVATE_KEY", _PEM_END.pattern, "-----END", finder=_bodies_before_end),
    _rule("PRIVATE_KEY", r"(?<![A-Za-z0-9+/=_\-])(?:M[A-Za-z0-9+/]{15,8000}+|b3BlbnNzaC1rZXktdjE[A-Za-z0-9+/]{0,8000}+)"
          r"(?:" + _BR + r"[ \t]{0,8}" + _MORE + r"[A-Za-z0-9+/]{1,8000}+){0,2000}+={0,2}", "M", "b3BlbnNzaC1rZXkt",
          fn=_der_body),
    _rule("PRIVATE_KEY", r"(?<![A-Za-z0-9+/=])(?:(?:[A-Za-z0-9+/]{64}" + _BR + r"[ \t]{0,8}){3,}+" + _LAST_LINE % {"n": 64} +
          r"|(?:[A-Za-z0-9+/]{70}" + _BR + r"[ \t]{0,8}){3,}+" + _LAST_LINE % {"n": 70} + ")", "\n", "\\n",
          fn=_wrapped_body),
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
    # Azure (Entra ID) client secret: three characters, a digit, `Q~`, 31-34 more
    _rule("API_KEY", r"(?<![A-Za-z0-9])[A-Za-z0-9_~.\-]{3}\dQ~[A-Za-z0-9_~.\-]{31,34}(?![A-Za-z0-9_~.\-])", "Q~"),
    _rule("API_KEY", _B + r"xox[abposre]-[A-Za-z0-9\-]{10,250}", "xox"),  # Slack tokens
    _rule("API_KEY", _B + r"xapp-\d-[A-Za-z0-9\-]{20,250}", "xapp-"),  # Slack app-level token
    _rule("API_KEY", r"https://hooks\.slack\.com/services/[A-Za-z0-9/_]{10,200}", "hooks.slack.com"),
    _rule("API_KEY", r"https?://(?:(?:canary|ptb)\.)?discord(?:app)?\.com/api/(?:v\d{1,2}/)?webhooks/\d{5,30}/"
          r"[A-Za-z0-9_\-]{20,200}", "discord"),  # Discord webhook
    _rule("API_KEY", r"(?<![A-Za-z0-9_\-.])[MNO][A-Za-z0-9_\-]{23,27}\.[A-Za-z0-9_\-]{6}\.[A-Za-z0-9_\-]{27,40}"
          r"(?![A-Za-z0-9_\-.])", "."),  # Discord bot token
    _rule("API_KEY", r"(?<![0-9])\d{5,16}:A[A-Za-z0-9_\-]{32,34}(?![A-Za-z0-9_\-])", ":A"),  # Telegram bot token
    _rule("API_KEY", _B + r"(?:ATATT|ATCTT|ATSTT)3[A-Za-z0-9_\-=]{40,300}", "ATATT3", "ATCTT3", "ATSTT3"),  # Atlassian
    _rule("API_KEY", _B + r"ATBB[A-Za-z0-9_\-=]{28,100}", "ATBB"),  # Bitbucket app password
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
    _rule("API_KEY", _GLUED, "_", "-", fn=_has_digit_and_letter),  # any of them glued after `_` or `-`
    # A JWT, also with its segments broken across lines; one glued after `_`/`-` (its header has no `_`/`-`).
    _rule("JWT", _B + r"eyJ" + (_JWT_SEG % (4000, 4000)) + _JWT_REST, "eyJ", fn=_jwt),
    _rule("JWT", r"(?<=[_\-])eyJ[A-Za-z0-9]{5,4000}+" + _JWT_REST, "eyJ", fn=_jwt),
    # A key after words that name one: "Azure key 0123...", "azure_openai_key: ...", "the API key is ..."
    _rule("API_KEY", r"(?<![A-Za-z0-9])(?=[aodcspmjbAODCSPMJB])" + _CONTEXT_NAMES + _VALUE_SEP +
          r"(?P<v>(?<![A-Za-z0-9_\-+/=.~])(?=[A-Za-z_\-+/=.~]{0,299}\d)(?=[0-9_\-+/=.~]{0,299}[A-Za-z])"
          r"[A-Za-z0-9_\-+/=.~]{16,300}+)", "key", "token", "secret", "password", group="v", lower=True),
    _rule("BEARER_TOKEN", r"(?i:bearer)\s{1,5}[A-Za-z0-9._~+/\-]{16,4000}=*", "bearer", lower=True),
    _rule("BASIC_AUTH", r"(?i:basic)\s{1,5}[A-Za-z0-9+/]{12,1000}={0,2}(?![A-Za-z0-9+/=])", "basic", lower=True),
    # A base64 run that decodes to a secret (a PEM key, `sk-...`, `password=...`): Kubernetes secrets, env dumps.
    _rule("API_KEY", r"(?<![A-Za-z0-9+/=_\-])" + (_B64_RUN % 32), fn=_encoded_secret),
    # Credentials inside a URL: scheme://user:password@host (databases, brokers, proxies).
    _rule("CREDENTIALS", r"(?<=://)[^\s:/@\"'<>]{0,200}:[^\s@/\"'<>]{1,300}(?=@)", "://"),
    _rule("SECRET", r"(?i)[?&](?:api[_\-]?key|key|token|access[_\-]?token|secret|password|passwd|sig|signature|"
          r"client[_\-]?secret|auth)=(?P<v>[^&\s\"'<>#]{4,500})", "=", group="v"),
    # ODBC / ADO.NET / JDBC connection strings: `Pwd={a;b}`, `Password=my pass;` (the value runs to the `;`),
    # `...;Password=my pass` as the last pair (to the end of the line); otherwise the `password=` rule takes a word
    _rule("SECRET", r"(?i)(?<![A-Za-z0-9_])(?:password|passwd|pwd)[ \t]{0,3}=[ \t]{0,3}(?P<v>\{(?:[^}\n]|\}\}){1,300}\}"
          r"|(?![ \t{\"'])[^;=\n\"'<>\\]{1,300}?(?=[ \t]{0,3};))", "pass", "pwd", group="v", lower=True),
    _rule("SECRET", r"(?i)(?<=;)[ \t]{0,3}(?:password|passwd|pwd)[ \t]{0,3}=[ \t]{0,3}"
          r"(?P<v>(?![ \t{\"'<])[^;=\n\"'<>\\]{1,300}?)(?=[ \t]{0,3}(?:[\"'<\\]|$))", "pass", "pwd", flags=re.MULTILINE,
          group="v", lower=True),
    # Oracle: `sqlplus scott/tiger@orcl`, `scott/tiger@//host:1521/svc`, `userid=scott/tiger`, `thin:scott/tiger@`
    _rule("SECRET", r"(?i)(?<![\w\-])(?:sqlplus|rman|sqlldr|expdp|impdp|exp|imp|dgmgrl|connect|conn)(?:[ \t]{1,3}-{1,2}"
          r"[A-Za-z]{1,10}){0,3}[ \t]{1,3}[\"']?[A-Za-z0-9_$#.]{1,64}/(?P<v>\"[^\"\n]{1,128}\"|[^\s/@\"';]{1,128})"
          r"(?=@|[\s\"';]|$)", "sqlplus", "rman", "sqlldr", "exp", "imp", "dgmgrl", "conn", group="v", lower=True),
    _rule("SECRET", r"(?<![\w/@.\-])[A-Za-z0-9_$#]{1,64}/(?P<v>[^\s/@\"']{1,128})@(?=//|\(|[A-Za-z0-9.\-]{1,100}:\d{2,5}[/:])",
          "@", group="v"),
    _rule("SECRET", r"(?i)(?:userid|user_id|thin:|oci:)[ \t]{0,3}=?[ \t]{0,3}[A-Za-z0-9_$#]{1,64}/(?P<v>[^\s/@\"']{1,128})",
          "userid", "user_id", "thin:", "oci:", group="v", lower=True),
    # Command lines: `curl -u user:pass`, `--password X`, `--db-password=X`, `--token X`, `mysql -pX`,
    # `sshpass -p X`, `docker login -p X`, `redis-cli -a X`, `sqlcmd -P X`, `openssl ... -passin pass:X`
    _rule("SECRET", r"(?<![\w\-])(?:-u|-U|--user|--proxy-user)(?:[ \t]{1,3}|=)(?:(?P<q>[\"'])[^:\n\"']{0,100}:"
          r"(?P<v>[^\n\"']{1,300})(?P=q)|[^\s:\"']{0,100}:(?P<w>(?!\d{1,10}(?![^\s\"']))[^\s\"']{1,300}))",
          "-u", "-U", fn=_first_group("v", "w")),
    _rule("SECRET", r"(?i)(?<![\w\-])--(?:[A-Za-z0-9]{1,20}-){0,3}(?:password|passwd|pass|pwd|token|secret|api-?key|"
          r"access-key|secret-key|client-secret|auth-token|access-token|credentials?)(?:[ \t]{1,3}|=)" + _QUOTED,
          "--", fn=_first_group("v1", "v2", "v4", "v3")),
    _rule("SECRET", r"(?<![\w\-])(?:mysql|mysqldump|mysqladmin|mysqlimport|mysqlshow|mysqlcheck|mysqlsh|mariadb"
          r"(?:-dump|-admin)?)\b" + _ARGS + r"[ \t]{1,3}-p(?![ \t])" + _QUOTED, "mysql", "mariadb",
          fn=_first_group("v1", "v2", "v4", "v3")),
    _rule("SECRET", r"(?<![\w\-])(?:sshpass[ \t]{1,3}-p|(?:docker|podman|nerdctl|buildah|skopeo|helm)(?:[ \t]{1,3}registry)?"
          r"[ \t]{1,3}login\b" + _ARGS + r"[ \t]{1,3}-p|redis-cli\b" + _ARGS + r"[ \t]{1,3}-a|(?:sqlcmd|bcp|osql|isql)"
          r"\b" + _ARGS + r"[ \t]{1,3}-P)[ \t]{0,3}" + _QUOTED, "sshpass", "login", "redis-cli", "sqlcmd", "bcp",
          "osql", "isql", fn=_first_group("v1", "v2", "v4", "v3")),
    _rule("SECRET", r"(?<![\w\-])-(?:passin|passout|pass|password)[ \t]{1,3}pass:(?P<v>[^\s\"']{1,300})", "pass:",
          group="v"),
    # `.env` and shell lines with key-like names: `STRIPE_KEY=...`, `export SENTRY_DSN="..."`
    _rule("SECRET", r"(?m)(?:^|(?<=\\n))[ \t]{0,16}(?:export[ \t]{1,4})?(?P<k>[A-Za-z_][A-Za-z0-9_.\-]{0,80}+)[ \t]{0,3}="
          r"[ \t]{0,3}" + _ENV_VALUE, *_KEY_STEMS, "dsn", "salt", "pepper", "seed", lower=True, fn=_env_line),
    # ... and an environment-style name anywhere on a line (`... && ENCRYPTION_KEY=... ./run`)
    _rule("SECRET", r"(?<![A-Za-z0-9_.\-$])(?P<k>[A-Z][A-Z0-9_]{0,80}+)[ \t]{0,3}=[ \t]{0,3}" + _ENV_VALUE, "_",
          fn=_env_line),
    # A quoted value or a number under a secret-named key: `"password": "a b c"`, `\"pin\": 1234`, `api_key='x'`,
    # and a validation message's `` `password` = 'x' ``
    _rule("SECRET", r"(?<![A-Za-z0-9_.\-$@\\])(?P<kq>\\?[\"'`])?"
          r"(?P<k>[A-Za-z_$@][A-Za-z0-9_.\-$@]{0,60}+)(?(kq)(?P=kq))[ \t]{0,3}[:=][ \t]{0,3}"
          # the value in a look-ahead: a match ends at the `:`, so pairs nested in a value (JSON in a JSON
          # string) are still read, and only a secret name's value is replaced
          r"(?=\"(?P<v1>(?:[^\"\\\n]|\\.){0,1000})\"|'(?P<v2>(?:[^'\\\n]|\\.){0,1000})'"
          r"|\\\"(?P<v3>(?:[^\"\\\n]|\\(?!\")){0,1000})\\\""
          r"|(?P<n>-?\d[\d.eE+\-]{2,40})(?=[ \t]{0,3}(?:[,;}\]\r\n]|\\[nr]|$))"
          r"|(?P<a>\[[ \t]{0,3}" + _SCALAR + r"(?:[ \t]{0,3},[ \t]{0,3}" + _SCALAR + r"){0,50}[ \t]{0,3}\]))",
          *_KEY_STEMS, lower=True, fn=_assigned),
    # `password=...`, `CLIENT_SECRET: ...`, `"api_key": "..."`, `x-api-key: ...`: the value after a secret-ish name.
    # (Quotes may come escaped: a JSON document inside a JSON string, as in a tool call's arguments.)
    _rule("SECRET", r"(?i)(?=[pstac])(?:" + _SECRET_NAMES + r")(?:(?-i:[_.\-0-9A-Z])[A-Za-z0-9_.\-]{0,29})?"
          r"\\{0,2}[\"']?\s{0,3}[:=]\s{0,3}\\{0,2}[\"']?"
          r"(?P<v>(?!<[A-Z_]+>)(?![0-9.]+(?![^\s\"',;{}\\]))(?!(?:true|false|null|none)\b)[^\s\"',;{}<>\\]{4,300})",
          "pass", "pwd", "secret", "token", "key", "credential", "auth", "session", "cookie", "signature",
          group="v", lower=True),
    # E-mail addresses, also with non-ASCII local parts and IDN domains (`josé@bücher.de`, `用户@例子.广告`).
    _rule("EMAIL", r"(?<![\w.%+\-])[\w.%+\-]{1,64}@[\w\-]{1,63}(?:\.[\w\-]{1,63}){0,8}"
          r"\.(?:[^\W\d_]{2,24}|xn--[A-Za-z0-9\-]{1,59})(?![\w\-])", "@"),
    _rule("IBAN", r"(?<![A-Z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}(?: ?[A-Z0-9]{1,3})?(?![A-Z0-9])"),
    # Lower-case, mixed-case or dash-separated: only with its country's length and a valid checksum.
    _rule("IBAN", r"(?i)(?<![A-Z0-9])[A-Z]{2}\d{2}(?:[ \-]?[A-Z0-9]){11,30}(?![A-Z0-9])", fn=_iban),
    _rule("SSN", r"(?<![\d\-])\d{3}-\d{2}-\d{4}(?![\d\-])", "-"),
    _rule("IP_ADDRESS", r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])", "."),
]
# What a base64 run may decode to for `_encoded_secret` (not PII, and not itself: no recursion).
_SECRET_KINDS = frozenset(("PRIVATE_KEY", "API_KEY", "JWT", "BEARER_TOKEN", "BASIC_AUTH", "CREDENTIALS", "SECRET"))
_SECRET_RULES = [r for r in DEFAULT_RULES if r.kind in _SECRET_KINDS and r.fn is not _encoded_secret]


def _secret_kind_in(text: str) -> str | None:
    from fcagent.tracing.redact.redactor import Redactor  # the rules' own runner (imported late: it imports them)

    probe = Redactor(rules=_SECRET_RULES, cards=False, phones=False)
    probe.redact(text)
    return next(iter(probe.counts), None)


