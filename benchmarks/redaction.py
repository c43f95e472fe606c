"""Redaction time on adversarial text: fcagent's rules vs the previous rules, in one run.

The previous rules (session 3, kept here verbatim as the alternative) used unanchored repeats such as
`\\b[A-Za-z0-9._%+\\-]+@...`, which Python's backtracking `re` retries from every position of a long
run: time grows with the square of the length (400 kB of `a-a-a...` took 155 s). fcagent's rules
start only where their run starts and bound their repeats (see `fcagent/tracing/redact.py`). Reported:
seconds per input at each size, and how the time grows when the size doubles (2x is linear, 4x
quadratic). The inputs cover every rule, the ones added for the hostile probe too (glued keys, key
bodies without BEGIN, base64 runs, connection strings, command lines, `.env` lines, phones through
libphonenumber, IBANs, cards with dots, Unicode digits and separators).

    python -m benchmarks.redaction [--mb 1.0]
"""

from __future__ import annotations

import argparse
import json
import re
import time

from fcagent.tracing.redact import Redactor
from fcagent.tracing.redact.rules import _rule

PREVIOUS_RULES = [
    _rule("PRIVATE_KEY", r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
    _rule("API_KEY", r"\bsk-ant-[A-Za-z0-9_\-]{20,}"),
    _rule("API_KEY", r"\bsk-(?:proj-|svcacct-)?[A-Za-z0-9_\-]{20,}"),
    _rule("API_KEY", r"\b(?:ghp|gho|ghu|ghs|ghr|github_pat)_[A-Za-z0-9_]{20,}"),
    _rule("API_KEY", r"\bAKIA[0-9A-Z]{16}\b"),
    _rule("API_KEY", r"\bAIza[0-9A-Za-z_\-]{35}\b"),
    _rule("API_KEY", r"\bxox[abposr]-[A-Za-z0-9\-]{10,}"),
    _rule("API_KEY", r"\bhf_[A-Za-z0-9]{30,}\b"),
    _rule("API_KEY", r"\b(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"),
    _rule("API_KEY", r"\blsv2_(?:pt|sk)_[A-Za-z0-9_]{20,}"),
    _rule("JWT", r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"),
    _rule("BEARER_TOKEN", r"(?i)\bbearer\s+[A-Za-z0-9._~+/\-]{16,}=*"),
    _rule("SECRET", r"(?i)\b(?:password|passwd|secret|api[_-]?key|access[_-]?token)\s*[:=]\s*[\"']?[^\s\"',;]{6,}"),
    _rule("EMAIL", r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}\b"),
    _rule("IBAN", r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}(?: ?[A-Z0-9]{1,3})?\b"),
    _rule("SSN", r"\b\d{3}-\d{2}-\d{4}\b"),
    _rule("IP_ADDRESS", r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"),
]
_PREVIOUS_PHONE = re.compile(r"(?<![\w.])(?:\+\d{1,3}[ .\-]?)?(?:\(\d{2,4}\)[ .\-]?|\d{2,4}[ .\-])\d{3,4}[ .\-]\d{3,4}(?![\w.])")

# Each repeats a unit to the requested size: text that once made a rule quadratic, or just looks busy.
ADVERSARIAL = {
    "a-a-a-": "a-",
    "no-@ local parts": "abc.def-",
    "@@@": "@a",
    "digit runs": "1 2 ",
    "eyJ...": "eyJ",
    "BEGIN without END": "-----BEGIN PRIVATE KEY-----\n",
    "://user:": "://a:b",
    "password=": "password=",
    "sk-": "sk-",
    "mixed secrets": "x@y.com 415-555-0132 key=abcdefgh token: zzzzzzzz ",
    # the rules added for the hostile probe (#36): each unit opens a rule's match and never closes it
    "eyJ-eyJ- (glued JWT)": "eyJ-",
    "_eyJ... (glued JWT, no dot)": "_eyJaaaaaaaaaa",
    "JWT split by newlines": "eyJabc\n",
    "_sk-/-ghp_ (glued keys)": "_sk--ghp_",
    "END without BEGIN": "-----END PRIVATE KEY-----\n",
    "MII... lines (DER body)": "MIIaaaaaaaaaaaaaaaaaaaaaa\n",
    "64-char base64 lines": "QUJD" * 16 + "\n",
    "base64 run": "QUJDREVGR0g",
    "\"password\": \" (quoted value)": "\"password\": \"",
    "Pwd= (connection string)": "Pwd=",
    ";Password=a (connection string)": ";Password=a ",
    "scott/tiger@ (Oracle)": "sqlplus a/b@",
    "curl -u a:": "-u a:",
    "--password ": "--password ",
    "mysql ... -p": "mysql -u ",
    "docker login": "docker login ",
    ".env KEY= lines": "A_KEY=\n",
    "api key / Azure key": "Azure key api key 0",
    "Q~ (Azure AD secret)": "abc1Q~",
    "12345:A (Telegram)": "12345:A",
    "gb82 (IBAN, lower-case)": "gb82 ",
    "4111. (card, dots)": "4111.",
    "+44 / 00 (phones)": "+44 00 ",
    "2024-01-01 (dates)": "2024-01-01 ",
    "NBSP and full-width digits": "1\u00a02\u00a0\uff11\uff12 ",
    "josé@ (IDN e-mail)": "josé@ü",
    "every new kind": ("jane@example.com +44 20 7946 0958 4111.1111.1111.1111 password=\"a b\" "
                       "Azure key 0123456789abcdef0123456789abcdef Pwd={x;y}; curl -u a:b mysql -pX gb82west12345698765432 "),
}


def _distinct_phones(size: int, seed: int = 0) -> str:
    """Every phone number different (no cache helps): the worst case for the libphonenumber path."""
    import random

    rng = random.Random(seed)
    parts: list[str] = []
    n = 0
    while n < size:
        part = (f"call {rng.randint(201, 989)}-{rng.randint(200, 999)}-{rng.randint(0, 9999):04d} or "
                f"+44 20 {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}; ")
        parts.append(part)
        n += len(part)
    return "".join(parts)[:size]


def _previous(text: str) -> str:
    for rule in PREVIOUS_RULES:
        text = rule.pattern.sub(f"<{rule.kind}>", text)
    return _PREVIOUS_PHONE.sub("<PHONE>", text)


def _time(fn, text: str, repeat: int = 3, clock=time.perf_counter) -> float:
    """The best of `repeat` runs: on a shared machine one run also measures its neighbours (the CPU
    time, `clock=time.process_time`, leaves them out)."""
    best = float("inf")
    for _ in range(repeat):
        started = clock()
        fn(text)
        best = min(best, clock() - started)
    return best


def run(mb: float = 1.0, previous_kb: tuple[int, int] = (25, 50)) -> dict:
    redactor = Redactor()
    out: dict = {"fcagent_s_per_input": {}, "fcagent_cpu_s_per_input": {}, "fcagent_growth_when_doubled": {},
                 "previous_s": {}, "previous_growth_when_doubled": {}, "size_mb": mb}
    size = int(mb * 1_000_000)
    inputs = {name: (unit * (size // len(unit) + 1))[:size] for name, unit in ADVERSARIAL.items()}
    inputs["distinct phone numbers"] = _distinct_phones(size)
    halves = {"distinct phone numbers": _distinct_phones(size // 2, seed=1)}  # other numbers: nothing cached
    for name, text in inputs.items():
        unit = ADVERSARIAL.get(name) or text[:1000]
        half = halves.get(name) or text[: size // 2]
        full_s = _time(redactor.redact, text)
        out["fcagent_s_per_input"][name] = round(full_s, 3)
        out["fcagent_cpu_s_per_input"][name] = round(_time(redactor.redact, text, clock=time.process_time), 3)
        out["fcagent_growth_when_doubled"][name] = round(full_s / max(_time(redactor.redact, half), 1e-6), 2)
        small, big = ((unit * 100_000)[: k * 1000] for k in previous_kb)
        t_small, t_big = _time(_previous, small, 1), _time(_previous, big, 1)
        out["previous_s"][name] = {f"{previous_kb[0]}kB": round(t_small, 3), f"{previous_kb[1]}kB": round(t_big, 3)}
        out["previous_growth_when_doubled"][name] = round(t_big / max(t_small, 1e-6), 2)
    worst = max(out["fcagent_s_per_input"], key=out["fcagent_s_per_input"].get)
    out["fcagent_worst"] = {"input": worst, "seconds": out["fcagent_s_per_input"][worst]}
    worst_cpu = max(out["fcagent_cpu_s_per_input"], key=out["fcagent_cpu_s_per_input"].get)
    out["fcagent_worst_cpu"] = {"input": worst_cpu, "cpu_seconds": out["fcagent_cpu_s_per_input"][worst_cpu]}
    worst_prev = max(out["previous_s"], key=lambda k: out["previous_s"][k][f"{previous_kb[1]}kB"])
    per_mb_prev = out["previous_s"][worst_prev][f"{previous_kb[1]}kB"] * (1000 / previous_kb[1]) ** 2  # quadratic
    out["previous_worst"] = {"input": worst_prev, "extrapolated_seconds_per_mb": round(per_mb_prev, 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=1.0)
    print(json.dumps(run(parser.parse_args().mb), indent=2))


if __name__ == "__main__":
    main()
