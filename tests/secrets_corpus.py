"""Planted secrets for the redaction tests: kind -> (how it appears in text, the part that must never leave)."""

_AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

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
}
# A PEM key cut off by a length limit (the graph's 2,000-character observation cap): no END line.
CUT_KEY = "-----BEGIN PRIVATE KEY-----\n" + "\n".join(f"MIIEvQIBADANBgkqhkiG9w0BAQEFAASC{i:04d}BKcwggSjAgEAAoIBAQC7" for i in range(49)) \
    + "\n-----END PRIVATE KEY-----"
CUT_KEY_LINES = CUT_KEY.splitlines()[1:-1]


def leaks(text: str) -> list[str]:
    """The planted kinds whose secret part appears in `text`."""
    found = [kind for kind, (_, secret) in PLANTED.items() if secret in text]
    found += ["cut private key line"] * any(line in text for line in CUT_KEY_LINES)
    return found
