"""Planted secrets for the redaction tests: kind -> (how it appears in text, the part that must never leave).

`PLANTED` holds a case for every rule of `fcagent.tracing.redact`; the kinds starting with "hidden:"
are variants the rules were not written against (other spacing, casing, order, separators, scripts),
there to show the rules generalise. `TOOL_ARGS` are tool-call arguments whose keys name secrets
(and a card and a phone number given as JSON numbers): they must leave redacted by key name and
by value, structured (`traces export`) or rendered into text (pairs, SFT rows, `traces show`).
"""

import base64
import json

_AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
_PEM_EC = (b"-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBase64EncodedKeyBodyForTheRedactionCorpus01234567\n"
           b"-----END EC PRIVATE KEY-----\n")
_B64_PEM = base64.b64encode(_PEM_EC).decode()
_B64_TOKEN = base64.b64encode(b"sk-ant-api03-Base64WrappedAnthropicKey0123456789").decode()

PLANTED: dict[str, tuple[str, str]] = {
    "openai key": ("sk-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb3dEf6h",) * 2,
    "openai project key": ("sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z",) * 2,
    "anthropic key": ("sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345",) * 2,
    "github token": ("ghp_abcdefghijklmnopqrstuvwxyz0123456789",) * 2,
    "github fine-grained token": ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",) * 2,
    "gitlab token": ("glpat-xYz12345abcdeFGHIJ678",) * 2,
    "aws access key id": ("AKIAIOSFODNN7EXAMPLE",) * 2,
    "aws secret access key": (f"aws_secret_access_key = {_AWS_SECRET}", _AWS_SECRET),
    "aws env assignment": ("AWS_SECRET_ACCESS_KEY=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",
                           "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzAMPLEKEY"),
    "google api key": ("AIzaSyA1234567890abcdefghijklmnopqrstuv",) * 2,
    "google oauth secret": ("GOCSPX-abcdefghijklmnopqrstuvwxyz12",) * 2,
    "azure storage key": ("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=abcdEFGH1234ijklMNOP5678qrstUVWX9012yzAB==;",
                          "abcdEFGH1234ijklMNOP5678qrstUVWX9012yzAB"),
    "slack token": ("xoxb-123456789012-abcdefghijkl",) * 2,
    "slack webhook": ("https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
                      "XXXXXXXXXXXXXXXXXXXXXXXX"),
    "stripe key": ("sk_live_abcdefghijklmnopqrstuvwx",) * 2,
    "stripe webhook secret": ("whsec_abcdefghijklmnopqrstuvwxyz123456",) * 2,
    "hugging face token": ("hf_abcdefghijklmnopqrstuvwxyzABCDEFGH",) * 2,
    "langsmith key": ("lsv2_pt_abcdefghijklmnopqrstuvwxyz012345_abcdef",) * 2,
    "groq key": ("gsk_abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789",) * 2,
    "replicate token": ("r8_abcdefghijklmnopqrstuvwxyzABCDEFG",) * 2,
    "sendgrid key": ("SG.abcdefghijklmnopqrstuv.abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456",) * 2,
    "npm token": ("npm_abcdefghijklmnopqrstuvwxyz0123456789",) * 2,
    "pypi token": ("pypi-AgEIcHlwaS5vcmcCJGFiY2RlZmdoLWlqa2wtbW5vcC1xcnN0LXV2d3h5ejAxMjM0NTY3",) * 2,
    "twilio key": ("SK0123456789abcdef0123456789abcdef",) * 2,
    "mailgun key": ("key-0123456789abcdefghijklmnopqrstuv",) * 2,
    "shopify token": ("shpat_0123456789abcdef0123456789abcdef",) * 2,
    "digitalocean token": ("dop_v1_" + "a1" * 32,) * 2,
    "databricks token": ("dapi0123456789abcdef0123456789abcdef",) * 2,
    "jwt": ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",) * 2,
    "bearer header": ("Authorization: Bearer abcDEF123456ghiJKL789", "abcDEF123456ghiJKL789"),
    "basic auth header": ("Authorization: Basic dXNlcjpzdXBlcnNlY3JldHB3", "dXNlcjpzdXBlcnNlY3JldHB3"),
    "rsa private key": ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7abcdefghij\nklmnopqrstuv\n-----END RSA PRIVATE KEY-----",
                        "MIIEowIBAAKCAQEA7abcdefghij"),
    "openssh private key": ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAE\n-----END OPENSSH PRIVATE KEY-----",
                            "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAE"),
    "pgp private key": ("-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBF0AbCdEfGhIjKlMnOpQrStUvWxYz\n=AbCd\n-----END PGP PRIVATE KEY BLOCK-----",
                        "lQOYBF0AbCdEfGhIjKlMnOpQrStUvWxYz"),
    "postgres url": ("postgres://admin:S3cr3tPassw0rd@db.internal:5432/prod", "S3cr3tPassw0rd"),
    "mongodb url": ("mongodb+srv://app:Mongo-Pa55word@cluster0.abcde.mongodb.net/test", "Mongo-Pa55word"),
    "redis url": ("redis://:r3dis-pass-123@cache.internal:6379/0", "r3dis-pass-123"),
    "json password": ('{"user": "bob", "password": "Tr0ub4dor&3xyz"}', "Tr0ub4dor&3xyz"),
    "json api key": ('{"api_key": "abcd1234efgh5678ijkl"}', "abcd1234efgh5678ijkl"),
    "json secret": ('{"secret": "my-very-private-value-42"}', "my-very-private-value-42"),
    "env password": ("DB_PASSWORD=correcthorsebatterystaple", "correcthorsebatterystaple"),
    "client secret": ("client_secret=aBcDeFgHiJkLmNoP1234", "aBcDeFgHiJkLmNoP1234"),
    "x-api-key header": ("x-api-key: 9f8e7d6c5b4a3f2e1d0c", "9f8e7d6c5b4a3f2e1d0c"),
    "query api key": ("https://api.example.com/v1/data?api_key=qwertyuiop123456&page=2", "qwertyuiop123456"),
    "email": ("jane.doe@example.com",) * 2,
    "phone": ("+1 415-555-0132",) * 2,
    "bare 10-digit phone": ("4155550132",) * 2,
    "international phone": ("+44 20 7946 0958",) * 2,
    "card": ("4111 1111 1111 1111",) * 2,
    "ssn": ("123-45-6789",) * 2,
    "iban": ("GB82 WEST 1234 5698 7654 32",) * 2,
    "ip address": ("192.168.10.254",) * 2,
    # --- provider tokens (the hostile probe's list) ---
    "azure ad client secret": ("kZm8Q~Vh3.pL9_tR2-wX5yB7nC4qD6sF1gH0jKaM",) * 2,
    "slack app-level token": ("xapp-1-A04ABCDEFGH-5123456789012-0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6071",) * 2,
    "atlassian api token": ("ATATT3xFfGF0aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789_-aBcDeFgHiJkLmNoPqRsTuVwXyZ=A1B2C3D4",) * 2,
    "bitbucket app password": ("ATBB3kLmNoPqRsTuVwXyZaBcDeFgHiJ0123456",) * 2,
    "telegram bot token": ("https://api.telegram.org/bot5123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsawQ/getMe",
                           "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsawQ"),
    "discord webhook": ("https://discord.com/api/webhooks/1234567890123456789/Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Jh1Gf0EdCbA_-zyxwvutsrqpon",
                        "Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Jh1Gf0EdCbA_-zyxwvutsrqpon"),
    "discord bot token": ("MTA4NjQ2NzYxMjM0NTY3ODkw.GhIjKl.AbCdEfGhIjKlMnOpQrStUvWxYz0123456789ab",) * 2,
    "datadog application key": ("DD_APPLICATION_KEY=3f1c0a9b8e7d6c5b4a39281706f5e4d3c2b1a0f9",
                                "3f1c0a9b8e7d6c5b4a39281706f5e4d3c2b1a0f9"),
    "azure openai key after words": ("Azure key 8f14e45fceea167a5a36dedd4bea2543", "8f14e45fceea167a5a36dedd4bea2543"),
    "azure openai key assignment": ("azure_openai_key: 45c48cce2e2d7fbdea1afc51c7c6ad26", "45c48cce2e2d7fbdea1afc51c7c6ad26"),
    # --- passwords in connection strings and on command lines ---
    "odbc password in braces": ("Driver={ODBC Driver 18 for SQL Server};Server=tcp:db.example.net;Uid=app;Pwd={Sp4ce; qzx Semi7};",
                                "Sp4ce; qzx Semi7"),
    "ado.net password with spaces": ("Server=db01;Database=crm;User Id=svc_crm;Password=blu3 Hqrse 42x;", "blu3 Hqrse 42x"),
    "oracle connection string": ("Data Source=ORCL;User Id=hr;Password=Hr#Pass99;", "Hr#Pass99"),
    "oracle ez connect": ("sqlplus scott/Tiger_2024@//db.example.net:1521/ORCLPDB1", "Tiger_2024"),
    "curl -u": ("curl -u deploy:Curl-Pa55word https://api.example.com", "Curl-Pa55word"),
    "--password flag": ("backup-tool --db-host db1 --password 'Flxg Pa55 wqrd' --verbose", "Flxg Pa55 wqrd"),
    "mysql -p": ("mysql -h db1 -u root -pMyS9lPass app", "MyS9lPass"),
    "sshpass -p": ("sshpass -p 'Sxh Pa55 phrqse' ssh ops@bastion", "Sxh Pa55 phrqse"),
    ".env key-like name": ("\nENCRYPTION_KEY=Zq8vN2mR5tW1xY4b\n", "Zq8vN2mR5tW1xY4b"),
    # --- key bodies without BEGIN, glued and encoded keys, a split JWT ---
    "pem body without begin": (("MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
                                "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n"
                                "-----END RSA PRIVATE KEY-----"), "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK"),
    "der key body alone": ("MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQDHiddenBody42xyzAbCdEf",) * 2,
    "openssh key body alone": ("b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW",) * 2,
    "glued openai key": ("OPENAI_KEY_sk-proj-Gl7uEdKeY9x2Lm4Np6Qr8St0Uv", "sk-proj-Gl7uEdKeY9x2Lm4Np6Qr8St0Uv"),
    "glued github token": ("token-ghp_Gl7uedAbCdEfGhIjKlMnOpQrStUvWxYz0123", "ghp_Gl7uedAbCdEfGhIjKlMnOpQrStUvWxYz0123"),
    "base64-encoded pem key": (f"tls.key: {_B64_PEM}", _B64_PEM),
    "base64-encoded token": (f"ANTHROPIC_B64 {_B64_TOKEN}", _B64_TOKEN),
    "jwt split by a newline": (("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJqb2UiLCJhZG1pbiI6dHJ1ZX0\n"
                                ".c2lnbmF0dXJlLXNwbGl0LWJ5LWEtbmV3bGluZQ"), "c2lnbmF0dXJlLXNwbGl0LWJ5LWEtbmV3bGluZQ"),
    # --- personal data in other scripts and separators ---
    "phone with dots": ("+33.1.42.68.53.00",) * 2,
    "phone with parentheses": ("+49 (0)30 12345678",) * 2,
    "phone with no-break spaces": ("+1\u00a0415\u00a0555\u00a00199",) * 2,
    "phone with 00 prefix": ("0044 20 7946 0321",) * 2,
    "phone with dashes": ("+81-3-1234-5678",) * 2,
    "phone in full-width digits": ("＋４４ ２０ ７９４６ ０９５８",) * 2,
    "idn e-mail": ("josé.müller@bücher-straße.de",) * 2,
    "non-ascii e-mail": ("用户@例子.广告",) * 2,
    "lower-case iban": ("de89 3704 0044 0532 0130 00",) * 2,
    "iban with no-break spaces": ("FR14\u00a02004\u00a01010\u00a00505\u00a00001\u00a03M02\u00a0606",) * 2,
    "card with dots": ("5555.5555.5555.4444",) * 2,
    "card with no-break spaces": ("3782\u00a0822463\u00a010005",) * 2,
    "json number card": ('{"amount": 12.5, "payment": 4012888888881881}', "4012888888881881"),
    "json password with spaces": ('{"password": "cqrrect hqrse bqttery stqple"}', "cqrrect hqrse bqttery stqple"),
    # --- hidden: variants the rules were not written against ---
    "hidden: openai key after an em dash": ("Here's my OpenAI API key — 9c1185a5c5e9fc54612808977ee8f548",
                                            "9c1185a5c5e9fc54612808977ee8f548"),
    "hidden: upper-case odbc": ("SERVER=db02;UID=sa;PWD=Uqper Cqse Pw1;", "Uqper Cqse Pw1"),
    "hidden: curl --user=": ("curl --user=ops:Eq-Form-Pw9 https://x.example", "Eq-Form-Pw9"),
    "hidden: yaml password": ("db:\n  password: 'yqml Pqss 7'", "yqml Pqss 7"),
    "hidden: json pin number": ('{"PIN": 739146}', "739146"),
    "hidden: camelCase api key": ('{"apiKey": "cqmel Cqse Vqlue 1"}', "cqmel Cqse Vqlue 1"),
    "hidden: jdbc oracle thin": ("jdbc:oracle:thin:app/Thin_Pw42@db.example.net:1521/ORCL", "Thin_Pw42"),
    "hidden: inline env assignment": ("cd app && STRIPE_SIGNING_KEY=Inl1neEnvV4lue ./run.sh", "Inl1neEnvV4lue"),
    "hidden: glued aws key id": ("aws-AKIAI44QH8DHBEXAMPLE", "AKIAI44QH8DHBEXAMPLE"),
    "hidden: jwt split with crlf": ("eyJhbGciOiJIUzI1NiJ9.eyJ1c2VyIjoiYW5uYSIsInJvbGUi\r\nOiJhZG1pbiJ9.X2hpZGRlbl9zaWduYXR1cmVfMTIzNDU2Nzg",
                                    "X2hpZGRlbl9zaWduYXR1cmVfMTIzNDU2Nzg"),
    "hidden: phone in parentheses and dots": ("(+44) 20.7946.0958",) * 2,
    "hidden: brazilian mobile": ("+55 (11) 91234-5678",) * 2,
    "hidden: full-width e-mail": ("ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ",) * 2,
    "hidden: iban without spaces, lower-case": ("gb29nwbk60161331926819",) * 2,
    "hidden: dashed iban": ("nl91-abna-0417-1643-00",) * 2,
    "hidden: amex with dots": ("3782.822463.10005",) * 2,
    "hidden: full-width card": ("４０１２ ８８８８ ８８８８ １８８１",) * 2,
}
HIDDEN = [kind for kind in PLANTED if kind.startswith("hidden:")]

# Tool-call arguments: secret-named keys (any value type), a card and a phone number as JSON numbers.
TOOL_ARGS = {"user": "svc-billing", "password": "tqol arg pqss phrqse 9", "aws_secret_access_key": "not-forty chars/but+secret",
             "credentials": {"login": "svc", "token": "nested-token-value-77"}, "api_keys": ["list-key-one-1", "list-key-two-2"],
             "card": 5105105105105100, "callback": 2125550147, "pin": 4812}
TOOL_ARG_SECRETS = ["tqol arg pqss phrqse 9", "not-forty chars/but+secret", "nested-token-value-77", "list-key-one-1",
                    "list-key-two-2", "5105105105105100", "2125550147"]

# A PEM key cut off by a length limit (the graph's 2,000-character observation cap): no END line.
CUT_KEY = "-----BEGIN PRIVATE KEY-----\n" + "\n".join(f"MIIEvQIBADANBgkqhkiG9w0BAQEFAASC{i:04d}BKcwggSjAgEAAoIBAQC7" for i in range(49)) \
    + "\n-----END PRIVATE KEY-----"
CUT_KEY_LINES = CUT_KEY.splitlines()[1:-1]


def _forms(secret: str) -> set[str]:
    """The secret as written, as JSON writes it inside a string (escaped newlines; \\u escapes), and,
    for one of several words, each word of 4+ characters but digits or hex (a rule that stops at the
    first space leaks the rest: the corpus's multi-word secrets use words nothing else in a trace has)."""
    forms = {secret}
    for ascii_only in (True, False):
        forms.add(json.dumps(secret, ensure_ascii=ascii_only)[1:-1])
    if len(secret.split()) > 1:
        words = (word.strip(";,'\"") for word in secret.split())
        forms.update(w for w in words if len(w) >= 4 and not all(c in _HEX for c in w))  # not digits or hex: ids have those
    return {f for f in forms if f}


_HEX = set("0123456789abcdefABCDEF")


_PLANTED_FORMS = {kind: _forms(secret) for kind, (_, secret) in PLANTED.items()}
_TOOL_ARG_FORMS = {secret: _forms(secret) for secret in TOOL_ARG_SECRETS}


def leaks(text: str, tool_args: bool = False) -> list[str]:
    """The planted kinds whose secret part appears in `text` (as written or JSON-escaped)."""
    found = [kind for kind, forms in _PLANTED_FORMS.items() if any(f in text for f in forms)]
    found += ["cut private key line"] * any(line in text for line in CUT_KEY_LINES)
    if tool_args:
        found += [f"tool argument {s!r}" for s, forms in _TOOL_ARG_FORMS.items() if any(f in text for f in forms)]
    return found
