"""Card and phone numbers: digit runs found by one C-speed pass, then checked (cards by Luhn, phones by
libphonenumber's metadata and matcher, the old regexes where it is missing or its budget is spent)."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any

# Numbers with separators, checked after the rules (cards by Luhn, so ordinary numbers stay).
# A digit run glued to letters is part of an identifier, not a card: a UUID's `aa76-002321490703` (14 digits,
# Luhn-valid one time in ten) was redacted in episode ids.
_CARD = re.compile(r"(?<![\w\-+])\d(?:[ \-]?\d){12,18}(?![\w\-])")  # (`+44 20 7946 0958 12 34` is no card)
_DOT_CARD = re.compile(r"(?<![\d.])\d{4}\.(?:\d{4}\.\d{4}\.\d{4}(?:\.\d{1,3})?|\d{6}\.\d{4,5})(?![\d.])")  # 4111.1111...
# The regexes phones were found with before libphonenumber: the fallback inside long digit runs
# and when the package is missing.
_PHONE = re.compile(
    r"(?<![\w.+\-])(?:\+\d{1,3}[ .\-]?)?(?:\(\d{2,4}\)[ .\-]?|\d{2,4}[ .\-])\d{3,4}[ .\-]\d{3,4}(?![\w.])"  # formatted
    r"|(?<![\w.+\-])\+\d{1,3}[ .\-]?\d{6,12}(?![\w.])"  # +44 2079460958
    r"|(?<![\w.+\-])[2-9]\d{9}(?![\w.])")  # a bare 10-digit North American number (never a 1... epoch second)
# A phone candidate: a run of digit groups joined by single separators, with 7+ digits, starting
# where the run starts (possessive: one pass over the run).
_PHONE_CANDIDATE = re.compile(r"(?<![\w+.\-/@])(?:\(?\+[ ]?\(?|\()?(?=(?:[ .\-/()]{0,3}\d){7})"
                              r"\d(?:[\d()]|[ .\-/](?=[\d(]))*+")
_DIGITS = re.compile(r"\d[ .\-/()]{0,3}\d")  # the cheap gate: digits close together
# A run that opens with a calendar date is a date and maybe a time (`2022-03-15 19:00`, `03/15/2022 10`),
# never a phone number, though its digits may spell a valid one (libphonenumber skips time stamps too).
_DATE_HEAD = re.compile(r"(?:1[89]|2\d)\d\d([\-/.])(?:0?[1-9]|1[0-2])\1(?:0?[1-9]|[12]\d|3[01])(?!\d)"
                        r"|(?:0?[1-9]|[12]\d|3[01])([\-/.])(?:0?[1-9]|[12]\d|3[01])\2(?:1[89]|2\d)\d\d(?!\d)")
_MAX_CANDIDATE = 64
_MATCHER_BUDGET = 1000  # candidates per text for the matcher (~0.15 ms each): beyond them, the regexes


@functools.cache
def _phonenumbers() -> Any:
    try:
        import phonenumbers
    except ImportError:  # a core dependency; without it, the regexes above
        return None
    return phonenumbers


_Numbering = tuple[frozenset[int], tuple[str, ...], tuple[re.Pattern[str], ...], re.Pattern[str]]


def _numbering(pn: Any, regions: Iterable[str], country_code: int = 0) -> _Numbering | None:
    """Several regions' metadata as one: the possible national lengths, the national prefixes (literal
    and for-parsing patterns), and one pattern the valid national numbers of any of them match."""
    lengths: set[int] = set()
    prefixes: set[str] = set()
    npps: set[str] = set()
    patterns: list[str] = []
    for region in regions:
        md = (pn.PhoneMetadata.metadata_for_nongeo_region(country_code) if region == "001"
              else pn.PhoneMetadata.metadata_for_region(region))
        if md is None or md.general_desc is None or not md.general_desc.national_number_pattern:
            continue
        lengths.update(md.general_desc.possible_length or ())
        prefixes.update([md.national_prefix] if md.national_prefix else [])
        npps.update([md.national_prefix_for_parsing] if md.national_prefix_for_parsing else [])
        # the number types `is_valid_number` checks (the general pattern alone admits unassigned ranges)
        patterns += [d.national_number_pattern for d in (md.fixed_line, md.mobile, md.toll_free, md.premium_rate,
                                                         md.shared_cost, md.personal_number, md.voip, md.pager,
                                                         md.uan, md.voicemail) if d is not None and d.national_number_pattern]
    if not patterns or not lengths:
        return None
    return (frozenset(lengths), tuple(sorted(prefixes)), tuple(re.compile(p) for p in sorted(npps)),
            re.compile("|".join(f"(?:{p})" for p in patterns)))


@functools.cache
def _country_numbering(country_code: int) -> _Numbering | None:
    pn = _phonenumbers()
    regions = pn.COUNTRY_CODE_TO_REGION_CODE.get(country_code) if pn else None
    return _numbering(pn, regions, country_code) if regions else None


@functools.cache
def _national_numbering(regions: tuple[str, ...]) -> _Numbering | None:
    """A national number dialled in `regions` may belong to any region sharing their country codes
    (a Toronto number read as "US" is valid: +1)."""
    pn = _phonenumbers()
    if pn is None:
        return None
    everywhere = [r for region in regions for r in pn.COUNTRY_CODE_TO_REGION_CODE.get(pn.country_code_for_region(region), ())]
    return _numbering(pn, dict.fromkeys(everywhere or regions))


def _fits(digits: str, numbering: _Numbering | None) -> bool | None:
    """True: `digits` (a national number, maybe with its trunk prefix) is a valid number by the
    metadata; False: it cannot hold one; None: longer than any, the matcher decides."""
    if numbering is None:
        return None
    lengths, prefixes, npps, pattern = numbering
    options = [digits]
    options += [digits[len(p):] for p in prefixes if digits.startswith(p)]
    options += [digits[m.end():] for npp in npps if (m := npp.match(digits)) and m.end()]
    if any(len(nsn) in lengths and pattern.fullmatch(nsn) for nsn in options):
        return True
    longest = max(lengths) + max([len(p) for p in prefixes] + [1])
    return None if len(digits) > longest else False


@functools.lru_cache(maxsize=65536)
def _verdict(candidate: str, regions: tuple[str, ...]) -> bool | None:
    """The cheap test, from libphonenumber's metadata: is the whole candidate one valid number (True),
    can it hold none (False), or must the matcher look (None)?"""
    pn = _phonenumbers()
    if pn is None:
        return None  # no metadata: the regexes decide
    digits = "".join(c for c in candidate if c.isdigit())
    head = candidate.lstrip("( ")
    if head.startswith(("+", "00")):  # international: the country code's own regions
        if not head.startswith("+"):
            digits = digits[2:]
        undecided = False
        for n in (1, 2, 3):
            if len(digits) > n and int(digits[:n]) in pn.COUNTRY_CODE_TO_REGION_CODE:
                fit = _fits(digits[n:], _country_numbering(int(digits[:n])))
                if fit:
                    return True
                undecided |= fit is None
        return None if undecided else False
    return _fits(digits, _national_numbering(regions))


@functools.lru_cache(maxsize=65536)
def _matched(candidate: str, regions: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """libphonenumber's `PhoneNumberMatcher` (VALID leniency) on a candidate the metadata could not
    decide (more digits than one number has): `+` and `00` forms for any country, national forms for
    `regions`; where it finds nothing, runs of digit groups the metadata validates."""
    pn = _phonenumbers()
    if pn is None:
        return tuple(m.span() for m in _PHONE.finditer(candidate))
    head = candidate.lstrip("( ")
    lead00 = len(candidate) - len(head) if head.startswith("00") else None
    # 00 44 ...: the international prefix most of the world dials; read as `+` (same length, same offsets)
    text = candidate if lead00 is None else candidate[:lead00] + " +" + candidate[lead00 + 2:]
    found: set[tuple[int, int]] = set()
    for region in regions[:1] if lead00 is not None or head.startswith("+") else regions:
        for match in pn.PhoneNumberMatcher(text, region, leniency=pn.Leniency.VALID):
            start = lead00 if lead00 is not None and match.start == lead00 + 1 else match.start
            if _grouped_like_a_phone(candidate[start:match.end]):
                found.add((start, match.end))
    return tuple(sorted(found)) or _windows(candidate, regions)


def _grouped_like_a_phone(text: str) -> bool:
    """Digits grouped as phone numbers are written: at most one single-digit group after the first
    (`+33 1 42 68 53 00`, `1 415 555 0132`), not a count (`2 3 4 5 6 7 8 9 10 11`)."""
    groups = re.findall(r"\d+", text)
    return sum(len(g) == 1 for g in groups[1:]) <= 1


_GROUP = re.compile(r"\(?\+?\d+\)?")
_MAX_WINDOWS = 48


def _windows(candidate: str, regions: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """Numbers side by side, or among other digits, in one candidate (`415 555 0132 415 555 0199`,
    `12 415 555 0132`): runs of whole digit groups the metadata calls a valid number, longest first."""
    groups = [(m.start(), m.end(), sum(c.isdigit() for c in m.group(0))) for m in _GROUP.finditer(candidate)]
    found: list[tuple[int, int]] = []
    tries = 0
    i = 0
    while i < len(groups) and tries < _MAX_WINDOWS:
        hit = None
        digits = 0
        ends = []
        for j in range(i, len(groups)):
            digits += groups[j][2]
            if digits > 17:
                break
            if digits >= 7:
                ends.append(j)
        for j in reversed(ends):
            tries += 1
            window = candidate[groups[i][0]:groups[j][1]]
            if _grouped_like_a_phone(window) and _verdict(window, regions):
                hit = j
                break
        if hit is None:
            i += 1
        else:
            found.append((groups[i][0], groups[hit][1]))
            i = hit + 1
    return tuple(found)


def _merge(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(spans):
        if out and s < out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


