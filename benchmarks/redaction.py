"""Redaction time on adversarial text: fcagent's rules vs the previous rules, in one run.

The previous rules (session 3, kept here verbatim as the alternative) used unanchored repeats such as
`\\b[A-Za-z0-9._%+\\-]+@...`, which Python's backtracking `re` retries from every position of a long
run: time grows with the square of the length (400 kB of `a-a-a...` took 155 s). fcagent's rules
start only where their run starts and bound their repeats (see `fcagent/redact.py`). Reported: seconds
per input at each size, and how the time grows when the size doubles (2x is linear, 4x quadratic).

    python -m benchmarks.redaction [--mb 1.0]
"""

from __future__ import annotations

import argparse
import json
import re
import time

from fcagent.tracing.redact import Redactor, _rule

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
}


def _previous(text: str) -> str:
    for rule in PREVIOUS_RULES:
        text = rule.pattern.sub(f"<{rule.kind}>", text)
    return _PREVIOUS_PHONE.sub("<PHONE>", text)


def _time(fn, text: str) -> float:
    started = time.perf_counter()
    fn(text)
    return time.perf_counter() - started


def run(mb: float = 1.0, previous_kb: tuple[int, int] = (25, 50)) -> dict:
    redactor = Redactor()
    out: dict = {"fcagent_s_per_input": {}, "fcagent_growth_when_doubled": {}, "previous_s": {},
                 "previous_growth_when_doubled": {}, "size_mb": mb}
    size = int(mb * 1_000_000)
    for name, unit in ADVERSARIAL.items():
        text = (unit * (size // len(unit) + 1))[:size]
        half = text[: size // 2]
        full_s = _time(redactor.redact, text)
        out["fcagent_s_per_input"][name] = round(full_s, 3)
        out["fcagent_growth_when_doubled"][name] = round(full_s / max(_time(redactor.redact, half), 1e-6), 2)
        small, big = ((unit * 100_000)[: k * 1000] for k in previous_kb)
        t_small, t_big = _time(_previous, small), _time(_previous, big)
        out["previous_s"][name] = {f"{previous_kb[0]}kB": round(t_small, 3), f"{previous_kb[1]}kB": round(t_big, 3)}
        out["previous_growth_when_doubled"][name] = round(t_big / max(t_small, 1e-6), 2)
    worst = max(out["fcagent_s_per_input"], key=out["fcagent_s_per_input"].get)
    out["fcagent_worst"] = {"input": worst, "seconds": out["fcagent_s_per_input"][worst]}
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
