"""Redaction of secrets and personal data before anything leaves the store.

Each rule replaces a match with a typed placeholder such as `<API_KEY>`; rules are configurable
(`Redactor(rules=[...])`, `Redactor().with_rule(kind, pattern)`). Every export applies the default
rules to every string it writes (messages, tool arguments and outputs, label reasons, metadata),
and `fcagent traces show` prints through them. `Redactor.redact_value` also redacts structured
values by key name (`{"password": ...}`, `{"aws_secret_access_key": ...}`, nested objects and lists
under such a key alike: `secret_key_kind` names them) and JSON numbers shaped like a card or a phone
number.

The default rules cover what users of LangSmith's anonymizer, Presidio and gitleaks expect: private
key blocks (also one cut short by a length limit, a body without its BEGIN line, a DER or OpenSSH
body on its own, a base64-encoded key), cloud and provider keys (AWS, Google, Azure storage and
Entra ID client secrets, OpenAI, Anthropic, GitHub, GitLab, Slack bot, user and app-level tokens,
Stripe, Hugging Face, LangSmith, Groq, Atlassian, Telegram bots, Discord webhooks and bot tokens,
...; also glued to a name by `_` or `-`), a hex or token-shaped key after words such as "Azure key"
or "api key", tokens (JWT, also split across lines; bearer, basic auth), credentials in URLs and
query strings, passwords in ODBC/ADO/JDBC/Oracle connection strings and on command lines (`curl -u`,
`--password X`, `mysql -pX`, ...), `password=` / `"api_key": "..."` style assignments (a quoted
value whole, a number too) and `.env` lines with key-like names, e-mail addresses (also IDN and
non-ASCII), phone numbers (valid by libphonenumber's metadata, its `PhoneNumberMatcher` where a
run holds more digits than one number: international `+`/`00` forms for every country, national
forms for `phone_regions`, "US" by default), card numbers (Luhn-checked; spaces, dashes, dots),
SSNs, IBANs (also lower-case or oddly spaced, checksum-validated), IP addresses.

**Unicode.** Matching runs on a normalised copy of the text, one character for one character (so
every position maps back): full-width forms become ASCII, other scripts' decimal digits become
0-9, no-break and other space separators become a space, dash variants a hyphen. The placeholders
replace the same spans of the original text; the rest of it is left as it was. A JSON `\\uXXXX`
escape of a non-ASCII character (what `json.dumps` writes by default) is decoded first.

**Linear time.** Python's `re` backtracks, so a pattern with an unbounded repeat that may start
anywhere inside a long run (`a-a-a-...`) is tried from every position: quadratic. Every rule here
either starts with a literal that must be present, or opens with a look-behind that lets it start
only where its run starts, bounds its repeats, and where a failed attempt could scan far uses a
possessive repeat; a rule runs only when its trigger substring is in the text. Phone candidates
are runs of digit groups a C-speed pass finds (at most 64 characters go further); libphonenumber's
metadata decides most of them with one compiled pattern (cached), and its matcher, ~0.15 ms a
call, sees at most `_MATCHER_BUDGET` candidates per text (the regexes take the rest).
`benchmarks/redaction.py` times adversarial megabytes, and one of all-distinct phone numbers.
"""

from __future__ import annotations

from fcagent.tracing.redact.redactor import Redactor
from fcagent.tracing.redact.rules import DEFAULT_RULES, RedactionRule, secret_key_kind

__all__ = ["DEFAULT_RULES", "RedactionRule", "Redactor", "secret_key_kind"]
