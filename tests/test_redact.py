import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # secrets_corpus.py

from langchain_core.messages import HumanMessage
from langchain_core.tools import tool

from fcagent import build_agent_graph
from fcagent.agent.testing import ScriptedChatModel
from fcagent.tracing.recorder import TraceRecorder
from fcagent.tracing.redact import Redactor
from fcagent.tracing.store import TraceStore

SECRETS = {
    "openai key": "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z",
    "anthropic key": "sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345",
    "github token": "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "aws key id": "AKIAIOSFODNN7EXAMPLE",
    "google key": "AIzaSyA1234567890abcdefghijklmnopqrstuv",
    "slack token": "xoxb-123456789012-abcdefghijkl",
    "hf token": "hf_abcdefghijklmnopqrstuvwxyzABCDEFGH",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "bearer": "Bearer abcDEF123456ghiJKL789",
    "private key": "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----",
    "password": "password=Hunter2Secret!",
    "email": "jane.doe@example.com",
    "phone": "+1 415-555-0132",
    "card": "4111 1111 1111 1111",
    "ssn": "123-45-6789",
}


def test_each_kind_is_replaced_by_a_typed_placeholder():
    r = Redactor()
    for kind, secret in SECRETS.items():
        out = r.redact(f"before {secret} after")
        assert secret not in out and "<" in out, kind
        assert out.startswith("before ") and out.endswith(" after"), kind


def test_ordinary_numbers_and_text_survive():
    text = "Compute 1234 + 5678 = 6912 on 2024-01-01, area 3.14, id simple_python_97"
    assert Redactor().redact(text) == text


def test_configurable_rules():
    r = Redactor().with_rule("TICKET", r"TICKET-\d+")
    assert r.redact("see TICKET-42") == "see <TICKET>"


def test_planted_corpus_every_kind_redacted_in_text():
    from secrets_corpus import PLANTED, leaks

    r = Redactor()
    assert len(PLANTED) >= 30
    for kind, (text, _) in PLANTED.items():
        out = r.redact(f"before {text} after")
        assert leaks(out) == [], (kind, out)
        assert out.startswith("before ") and "<" in out, kind


def test_adversarial_input_scales_linearly():
    """Text built to make a backtracking rule go quadratic: doubling it must not much more than double the
    time. A ratio, not a time limit (benchmarks/redaction.py measures the speed). CPU time, the best of
    three: on a shared machine wall time also measures the neighbours."""
    import time

    r = Redactor()

    def seconds(text: str) -> float:
        best = float("inf")
        for _ in range(3):
            started = time.process_time()
            r.redact(text)
            best = min(best, time.process_time() - started)
        return best

    units = [("a-a-", 12_500), ("@a", 25_000), ("1 2 ", 12_500), ("eyJ", 16_000), ("://a:b", 8_000),
             ("password=", 5_500), ("-----BEGIN PRIVATE KEY-----\n", 1_800), ("sk-", 16_000)]
    units += [(unit, 30_000 // len(unit)) for unit in ADVERSARIAL_UNITS]
    for unit, times in units:
        small, large = seconds(unit * times), seconds(unit * times * 4)
        assert large < 8 * small + 0.01, (unit, small, large)  # linear: ~4x; quadratic: ~16x


# Text that opens a match of each rule added for the hostile probe and never closes it (or closes it
# as late as it can), repeated: the shapes that make a backtracking rule quadratic.
ADVERSARIAL_UNITS = [
    "eyJ-", "_eyJaaaaaaaaaa", "eyJabc\n", "eyJabc\\n", "_sk--ghp_", "x_AKIA", "-----END PRIVATE KEY-----\n",
    "MIIaaaaaaaaaaaaaaaaaaaaaa\n", "QUJD" * 16 + "\n", "QUJDREVGR0g", "LS0tLS1CRUdJTi", "\"password\": \"", "'pass': 'x",
    '\\"token\\": \\"', "pin: 12", "Pwd=", ";Password=a ", "Pwd={a", "sqlplus a/", "a/b@", "thin:a/", "-u a:", "--user 'a:",
    "--password ", "--db-password=", "mysql -u ", "docker login ", "redis-cli ", "sshpass -p ", "-pass pass:", "A_KEY=\n",
    "AB_KEY=", "export X_TOKEN=", "Azure key ", "api key is ", "abc1Q~", "xapp-1-", "ATATT3", "12345:A", "M" * 24 + ".",
    "https://discord.com/api/webhooks/1/", "gb82 ", "de89-", "4111.", "4111\u00a0", "+44 ", "00 ", "(1) ", "12 34 ",
    "+1 2", "2024-01-01 ", "1\u00a02\u00a0", "\uff11\uff12 ", "\\u00a01", "josé@ü", "ｊ＠", "Pwd= mysql -u a/b@ x_",
]


def test_invocation_params_drop_secret_names_and_redact_values():
    from fcagent.tracing.episodes import _safe_params

    params = {"api-key": "x1", "x-api-key": "x2", "private_key": "x3", "passwd": "x4", "auth": "x5", "bearer": "x6",
              "session": "x7", "client_secret": "x8", "base_url": "https://user:sk-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z@api.host/v1",
              "endpoint": "https://api.host/v1?api_key=qwertyuiop123456", "model": "gpt-x", "max_tokens": 100,
              "temperature": 0.2}
    kept = _safe_params(params)
    assert set(kept) == {"base_url", "endpoint", "model", "max_tokens", "temperature"}
    assert "sk-Ab3" not in kept["base_url"] and "qwertyuiop" not in kept["endpoint"]


def test_no_planted_secret_leaves_through_any_export_or_field(tmp_path):
    """Secrets in the system prompt, the user message, tool arguments, tool outputs, a tool's error,
    label reasons and episode metadata: none in pairs.jsonl, sft.jsonl, the Arrow dataset, the
    stats, `traces export` or `traces show`."""
    import uuid

    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage
    from langchain_core.tools import ToolException
    from secrets_corpus import CUT_KEY, PLANTED, TOOL_ARGS, leaks
    from typer.testing import CliRunner

    from fcagent.cli.app import app
    from fcagent.core import keys
    from fcagent.data.export import export_preference_pairs, export_sft
    from fcagent.data.rows import load_pairs

    everything = " ; ".join(text for text, _ in PLANTED.values())

    @tool
    def lookup(query: str) -> str:
        """Looks things up."""
        return "found: " + everything

    @tool
    def connect(dsn: str) -> str:
        """Connects to a database."""
        raise ToolException("cannot connect with " + everything)

    @tool
    def login(user: str, password: str, aws_secret_access_key: str, credentials: dict, api_keys: list[str], card: int,
              callback: int, pin: int) -> str:
        """Logs in (its arguments are secrets by key name, a card and a phone number as JSON numbers)."""
        return "logged in"

    connect.handle_tool_error = True
    question = "my details: " + everything
    # Recorded traffic is split by request (a share held out as `test`, never exported): this one trains.
    train = {keys.PROBLEM_ID: "redaction-corpus", keys.SPLIT: "train"}

    def call(name, **args):
        calls = [{"name": name, "args": args, "id": None}, {"name": "login", "args": TOOL_ARGS, "id": None}]
        return AIMessage(content="", tool_calls=calls)

    store = TraceStore(tmp_path / "t.db")
    recorder = TraceRecorder(store, note="ops contact " + PLANTED["email"][0] + " " + PLANTED["openai key"][0])
    ids = []
    for replies, verdict in (([call("lookup", query=everything), "Done: " + everything], True),
                             ([call("connect", dsn=everything), "Failed: " + everything], False)):
        agent = create_agent(ScriptedChatModel(responses={question: replies}), [lookup, connect, login],
                             system_prompt="You help. Internal: " + everything)
        run_id = uuid.uuid4()
        agent.invoke({"messages": [HumanMessage(question)]}, {"run_id": run_id, "callbacks": [recorder], "metadata": train})
        ids.append(str(run_id))
        store.label(str(run_id), verdict, reason="user says: " + everything, source="feedback")
    # a key cut short by the graph's 2,000-character observation limit: no END line left
    graph_model = ScriptedChatModel(native=False, responses=['lookup(query="key")', 'final_answer(answer="ok")'])

    @tool
    def fetch_key(query: str) -> str:
        """Returns a key file."""
        return CUT_KEY

    fetch_key.name = "lookup"
    state = build_agent_graph(graph_model, [fetch_key]).invoke({"messages": [HumanMessage("key please")]},
                                                               {"callbacks": [recorder], "metadata": train})
    assert "-----END" not in state["messages"][2].content and "more characters cut" in state["messages"][2].content
    store.label(recorder.last_episode_id, True, "ok", "feedback")
    raw = json.dumps([t.model_dump() for t in store.traces()])
    assert len(leaks(raw, tool_args=True)) >= len(PLANTED)  # the store keeps the truth; redaction happens on the way out

    pairs = export_preference_pairs(store, tmp_path / "data")
    sft = export_sft(store, tmp_path / "data")
    assert pairs.rows >= 1 and sft.rows >= 2
    assert any(leaks(json.loads(line)["rejected_reason"]) == [] and "<" in json.loads(line)["rejected_reason"]
               for line in pairs.path.read_text().splitlines())
    dataset = json.dumps(load_pairs(tmp_path / "data" / "pairs.jsonl").to_list())
    runner = CliRunner()
    assert runner.invoke(app, ["export", "--store", str(tmp_path / "t.db"), "--out", str(tmp_path / "cli")]).exit_code == 0
    from datasets import load_from_disk

    arrow = json.dumps(load_from_disk(str(tmp_path / "cli" / "dataset-dpo")).to_list())
    store.export_jsonl(tmp_path / "traces.jsonl", redactor=Redactor())
    shown = "".join(runner.invoke(app, ["traces", "show", i, "--store", str(tmp_path / "t.db")], env={"COLUMNS": "300"}).output
                    for i in ids)
    listed = runner.invoke(app, ["traces", "ls", "--store", str(tmp_path / "t.db")], env={"COLUMNS": "300"}).output
    outputs = {"pairs.jsonl": pairs.path.read_text(), "sft.jsonl": sft.path.read_text(),
               "stats.dpo.json": (tmp_path / "data" / "stats.dpo.json").read_text(),
               "stats.sft.json": (tmp_path / "data" / "stats.sft.json").read_text(),
               "dataset": dataset, "arrow dataset": arrow, "traces export": (tmp_path / "traces.jsonl").read_text(),
               "cli pairs": (tmp_path / "cli" / "pairs.jsonl").read_text(), "traces show": shown, "traces ls": listed}
    for name, text in outputs.items():
        assert leaks(text, tool_args=True) == [], name
    assert "<PRIVATE_KEY>" in outputs["traces export"]
    exported = [json.loads(line) for line in outputs["traces export"].splitlines()]
    args = [r["args"] for e in exported for r in e["tool_runs"] if r["name"] == "login"]
    assert args and all(a["password"] == "<SECRET>" and a["credentials"] == "<SECRET>" and a["api_keys"] == "<SECRET>"
                        and a["card"] == "<CARD_NUMBER>" and a["callback"] == "<PHONE>" and a["user"] == "svc-billing"
                        for a in args)  # by key name whatever the value's type; JSON numbers by their shape
    raw_show = runner.invoke(app, ["traces", "show", ids[0], "--raw", "--store", str(tmp_path / "t.db")],
                             env={"COLUMNS": "300"}).output
    assert PLANTED["email"][1] in raw_show  # --raw opts out


def test_no_secret_survives_export_from_messages_tool_args_and_outputs(tmp_path):
    @tool
    def lookup(query: str) -> str:
        """Looks things up."""
        return "found: " + " | ".join(SECRETS.values())

    planted = " ; ".join(SECRETS.values())
    model = ScriptedChatModel(native=False, responses=[json.dumps({"name": "lookup", "arguments": {"query": planted}}),
                                                        "final_answer(answer='done')"])
    store = TraceStore(tmp_path / "t.db")
    build_agent_graph(model, [lookup]).invoke({"messages": [HumanMessage("my details: " + planted)]},
                                              {"callbacks": [TraceRecorder(store)]})
    raw = json.dumps(next(store.traces()).model_dump())
    assert SECRETS["email"] in raw  # the store keeps the truth; redaction happens on the way out
    store.export_jsonl(tmp_path / "out.jsonl", redactor=Redactor())
    exported = (tmp_path / "out.jsonl").read_text()
    for kind, secret in SECRETS.items():
        for piece in secret.split("\n"):
            assert piece not in exported, kind


def test_a_pair_that_differs_only_inside_a_secret_is_dropped_not_fatal(tmp_path):
    """A good reply to one address and a bad one to another are the same text once redacted: the pair
    teaches nothing (and unredacted would leak), so it is dropped and counted; the export goes on."""
    import uuid

    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage

    from fcagent.data.export import export_preference_pairs

    @tool
    def send_invoice(email: str) -> str:
        """Sends the invoice to an address."""
        return "sent"

    @tool
    def opening_hours(day: str) -> str:
        """Opening hours on a day."""
        return "8-16"

    def call(name, **args):
        return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": f"c{uuid.uuid4().hex[:6]}"}])

    question = "Send my invoice, please."
    store = TraceStore(tmp_path / "t.db")
    recorder = TraceRecorder(store)
    for first, verdict in ((call("send_invoice", email="ana.silva@example.com"), True),
                           (call("send_invoice", email="jo.berg@example.org"), False),
                           (call("opening_hours", day="monday"), False)):
        agent = create_agent(ScriptedChatModel(responses={question: [first, "Done."]}), [send_invoice, opening_hours])
        run_id = uuid.uuid4()
        agent.invoke({"messages": [HumanMessage(question)]}, {"run_id": run_id, "callbacks": [recorder]})
        store.label(str(run_id), verdict, reason="user feedback", source="feedback")
    result = export_preference_pairs(store, tmp_path / "data")
    rows = [json.loads(line) for line in result.path.read_text().splitlines()]
    assert [json.loads(r["rejected"][0]["content"])["name"] for r in rows] == ["opening_hours"]
    assert result.stats["dropped"]["identical after redaction"] == 1
    assert "ana.silva" not in result.path.read_text()


# --- the rules added for the hostile probe -------------------------------------------------------------


def _gone(text: str, secret: str, kind: str, r: Redactor | None = None) -> str:
    out = (r or Redactor()).redact(f"before {text} after")
    assert secret not in out and f"<{kind}>" in out, (text, out)
    assert out.startswith("before ") and out.endswith(" after"), (text, out)
    return out


def test_planted_corpus_has_a_case_for_every_new_rule_and_hidden_variants():
    from secrets_corpus import HIDDEN, PLANTED, leaks

    assert len(PLANTED) >= 100 and len(HIDDEN) >= 15
    everything = " ; ".join(text for text, _ in PLANTED.values())

    for rendered in (everything, json.dumps({"q": everything}), json.dumps({"q": everything}, ensure_ascii=False)):
        assert leaks(Redactor().redact(rendered)) == []  # side by side, and inside JSON text (escaped or not)


def test_secret_key_names():
    from fcagent.tracing.redact import secret_key_kind

    for name in ("password", "passwd", "pwd", "PASS", "secret", "client_secret", "token", "access_token", "id_token",
                 "api_key", "apikey", "apiKey", "APIKey", "x-api-key", "access_key", "private_key", "aws_secret_access_key",
                 "AWS_SECRET_ACCESS_KEY", "Authorization", "Proxy-Authorization", "cookie", "Set-Cookie", "session",
                 "session_id", "sessionToken", "credentials", "credential", "encryption_key", "api_keys", "refresh_tokens",
                 "pin", "cvv", "mnemonic"):
        assert secret_key_kind(name) == "SECRET", name
    assert secret_key_kind("ssn") == "SSN" and secret_key_kind("cardNumber") == "CARD_NUMBER" and secret_key_kind("iban") == "IBAN"
    for name in ("max_tokens", "input_tokens", "total_tokens", "tokens", "token_count", "token_type", "tokenizer", "key",
                 "keys", "sort_key", "primary_key", "key_signature", "password_policy", "password_length", "api_key_env",
                 "secret_name", "publishable_key", "public_key", "author", "authority", "passage", "bypass", "spin",
                 "keyboard", "monkey", "query", "user", "email"):
        assert secret_key_kind(name) is None, name


def test_structured_values_are_redacted_by_key_name_at_any_depth():
    r = Redactor()
    value = {"tool_calls": [{"name": "login", "args": {
        "user": "bob", "password": "correct horse", "aws_secret_access_key": "not forty chars", "pin": 1234,
        "credentials": {"user": "x", "pass": "y"}, "api_keys": ["k1", "k2"], "nested": [{"client_secret": 3.5},
                                                                                     {"Authorization": "Basic abc"}],
        "max_tokens": 100, "key": "C", "secret": None, "is_secret": True, "token": ""}}],
        "usage": {"input_tokens": 5, "total_tokens": 9},
        "tools": [{"type": "function", "function": {"name": "login", "parameters": {"type": "object", "properties": {
            "password": {"type": "string", "description": "the password"}, "api_key": {"type": "string"}},
            "required": ["password"]}}}],
        "logprobs": {"content": [{"token": "Hello", "logprob": -0.1, "top_logprobs": []}]}}
    out = r.redact_value(value)
    args = out["tool_calls"][0]["args"]
    assert args["password"] == args["aws_secret_access_key"] == args["pin"] == args["credentials"] == "<SECRET>"
    assert args["api_keys"] == "<SECRET>" and args["nested"] == [{"client_secret": "<SECRET>"}, {"Authorization": "<SECRET>"}]
    assert args["user"] == "bob" and args["max_tokens"] == 100 and args["key"] == "C"
    assert args["secret"] is None and args["is_secret"] is True and args["token"] == ""  # nothing to hide
    assert out["usage"] == {"input_tokens": 5, "total_tokens": 9}
    assert out["tools"] == value["tools"]  # a JSON schema's `properties` name parameters, they hold no values
    assert out["logprobs"] == value["logprobs"]  # a logprob entry's "token" is generated text
    assert r.counts["SECRET"] == 7
    assert value["tool_calls"][0]["args"]["password"] == "correct horse"  # the input is not modified
    # the same arguments rendered into text (an exported assistant turn, `traces show`)
    text = r.redact(json.dumps(value["tool_calls"]))
    for secret in ("correct horse", "not forty chars", "1234", '"y"', "3.5"):
        assert secret not in text, secret
    assert json.loads(text)[0]["args"]["password"] == "<SECRET>"  # still JSON


def test_json_numbers_shaped_like_cards_or_phones():
    r = Redactor()
    out = r.redact_value({"card": 4111111111111111, "amex": 378282246310005, "phone": 4155550132, "plus1": 14155550132,
                          "ms": 1700000000123, "epoch": 1700000000, "id": 1234567890123456789, "n": 42, "price": 19.99,
                          "flag": True, "not_luhn": 4111111111111112})
    assert out == {"card": "<CARD_NUMBER>", "amex": "<CARD_NUMBER>", "phone": "<PHONE>", "plus1": "<PHONE>",
                   "ms": 1700000000123, "epoch": 1700000000, "id": 1234567890123456789, "n": 42, "price": 19.99,
                   "flag": True, "not_luhn": 4111111111111112}
    assert r.redact_value(4111111111111111) == "<CARD_NUMBER>" and r.redact_value([4155550132]) == ["<PHONE>"]
    # in JSON text (tool arguments rendered into an exported turn) the placeholder is quoted: the JSON stays JSON
    text = r.redact('{"name": "pay", "arguments": {"card": 4111111111111111, "phone": 4155550132, "qty": 2}}')
    assert json.loads(text)["arguments"] == {"card": "<CARD_NUMBER>", "phone": "<PHONE>", "qty": 2}


def test_phone_formats():
    for phone in ("+44 20 7946 0958", "+44.20.7946.0958", "+44-20-7946-0958", "(+44) 20 7946 0958", "+44 (0)20 7946 0958",
                  "0044 20 7946 0958", "+33 1 42 68 53 00", "+49 (30) 1234567", "+81 3-1234-5678", "+91 98765 43210",
                  "+86 138 0013 8000", "+7 (495) 123-45-67", "+55 (11) 91234-5678", "+61 2 9374 4000", "+1.415.555.0132",
                  "(415) 555-0132", "415.555.0132", "415 555 0132", "1-415-555-0132", "4155550132", "+1 (212) 555-0147",
                  "＋４４ ２０ ７９４６ ０９５８", "４１５−５５５−０１３２", "+44\u00a020\u00a07946\u00a00958",
                  "+44\u202f20\u202f7946\u202f0958", "+44\u200920\u20097946\u20090958", "+44\u300020\u30007946\u30000958"):
        _gone(phone, phone, "PHONE")
    r = Redactor()
    assert r.redact("call 415 555 0132 or 415 555 0199") == "call <PHONE> or <PHONE>"
    assert r.redact("tel:+442079460958.") == "tel:<PHONE>."
    # national forms are read for `phone_regions` (US by default); international ones for every country
    assert Redactor().redact("ring 020 7946 0958") == "ring 020 7946 0958"
    assert Redactor(phone_regions=("GB",)).redact("ring 020 7946 0958") == "ring <PHONE>"
    assert Redactor(phone_regions=["gb", "US"]).with_rule("X", "x{9}").redact("07911 123456 / 415-555-0132") == "<PHONE> / <PHONE>"
    # escaped by json.dumps (what `traces show` prints tool calls with): the escapes are read as characters
    assert "<PHONE>" in r.redact(json.dumps({"to": "+44\u00a020\u00a07946\u00a00958"}))


def test_emails_with_idn_and_non_ascii_addresses():
    for email in ("josé.garcía@bücher.de", "用户@例子.广告", "почта@пример.рф", "jane@xn--bcher-kva.de", "ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ",
                  "user+tag@sub.example.co.uk", "ΑΒΓ@παράδειγμα.ελ"):
        _gone(email, email, "EMAIL")
    assert "<EMAIL>" in Redactor().redact(json.dumps({"to": "josé@bücher.de"}))  # \u00e9 escapes


def test_ibans_lower_case_and_spaced():
    for iban in ("gb82 west 1234 5698 7654 32", "GB82\u00a0WEST\u00a01234\u00a05698\u00a07654\u00a032", "de89-3704-0044-0532-0130-00",
                 "gb29nwbk60161331926819", "Fr14 2004 1010 0505 0001 3m02 606", "ch93 0076 2011 6238 5295 7"):
        _gone(iban, iban, "IBAN")
    r = Redactor()
    assert r.redact("gb82 west 1234 5698 7654 33") == "gb82 west 1234 5698 7654 33"  # a wrong checksum: not an IBAN
    assert r.redact("as12 this that what and more") == "as12 this that what and more"


def test_cards_with_dots_no_break_spaces_and_full_width_digits():
    for card in ("4111.1111.1111.1111", "5555.5555.5555.4444", "3782.822463.10005", "4111\u00a01111\u00a01111\u00a01111",
                 "4111\u202f1111\u202f1111\u202f1111", "４１１１ １１１１ １１１１ １１１１", "4111-1111-1111-1111"):
        _gone(card, card, "CARD_NUMBER")
    r = Redactor()
    for number in ("4111.1111.1111.1112", "3.14159265358979323846", "1234.5678.9012.3456"):  # no Luhn, or a decimal
        assert r.redact(number) == number


def test_provider_tokens():
    for token, kind in (("kZm8Q~Vh3.pL9_tR2-wX5yB7nC4qD6sF1gH0jKaM", "API_KEY"),  # Azure AD client secret
                        ("xapp-1-A04ABCDEFGH-5123456789012-0a1b2c3d4e5f60718293a4b5c6d7e8f9", "API_KEY"),  # Slack app-level
                        ("ATATT3xFfGF0aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789_-aBcDeFgHiJkLmNoP=A1B2C3D4", "API_KEY"),  # Atlassian
                        ("ATBB3kLmNoPqRsTuVwXyZaBcDeFgHiJ0123456", "API_KEY"),  # Bitbucket app password
                        ("5123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsawQ", "API_KEY"),  # Telegram bot
                        ("https://discord.com/api/webhooks/123456789012345678/Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Jh1Gf0EdCbA", "API_KEY"),
                        ("https://discordapp.com/api/v10/webhooks/123456789012345678/Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Jh1Gf0Ed", "API_KEY"),
                        ("MTA4NjQ2NzYxMjM0NTY3ODkw.GhIjKl.AbCdEfGhIjKlMnOpQrStUvWxYz0123456789ab", "API_KEY")):  # Discord bot
        _gone(token, token, kind)
    for text, secret in (("DD_APP_KEY=3f1c0a9b8e7d6c5b4a39281706f5e4d3c2b1a0f9", "3f1c0a9b8e7d6c5b4a39281706f5e4d3c2b1a0f9"),
                         ("Datadog application key: 3f1c0a9b8e7d6c5b4a39281706f5e4d3c2b1a0f9", "3f1c0a9b8e7d6c5b4a39281706f5e4d3c2b1a0f9"),
                         ("dd-application-key: 3f1c0a9b8e7d6c5b4a39281706f5e4d3c2b1a0f9", "3f1c0a9b8e7d6c5b4a39281706f5e4d3c2b1a0f9"),
                         ("the datadog api key is 0a1b2c3d4e5f60718293a4b5c6d7e8f9", "0a1b2c3d4e5f60718293a4b5c6d7e8f9"),
                         ("Azure key 8f14e45fceea167a5a36dedd4bea2543", "8f14e45fceea167a5a36dedd4bea2543"),
                         ("AZURE KEY: 8F14E45FCEEA167A5A36DEDD4BEA2543", "8F14E45FCEEA167A5A36DEDD4BEA2543"),
                         ("azure_openai_key = '45c48cce2e2d7fbdea1afc51c7c6ad26'", "45c48cce2e2d7fbdea1afc51c7c6ad26"),
                         ("AZURE_OPENAI_API_KEY=45c48cce2e2d7fbdea1afc51c7c6ad26", "45c48cce2e2d7fbdea1afc51c7c6ad26"),
                         ("my api key is 9c1185a5c5e9fc54612808977ee8f548", "9c1185a5c5e9fc54612808977ee8f548"),
                         ("Ocp-Apim-Subscription-Key: 9c1185a5c5e9fc54612808977ee8f548", "9c1185a5c5e9fc54612808977ee8f548")):
        out = Redactor().redact(text)
        assert secret not in out and "<" in out, (text, out)
    r = Redactor()
    for text in ("the api key is required", "Azure key vault", "api key rotation every 90 days", "Q~ 12345:A"):
        assert r.redact(text) == text


def test_password_forms():
    for text, secret in (
            ("Driver={ODBC Driver 18};Server=db;Uid=sa;Pwd={Sp4ce; and Semi};", "Sp4ce; and Semi"),
            ("Server=db01;Database=crm;User Id=svc;Password=blue Horse 42;", "blue Horse 42"),
            ("Data Source=ORCL;User Id=hr;Password=Hr#Pass99", "Hr#Pass99"),
            ("SERVER=db02;UID=sa;PWD=Upper Case Pw1;", "Upper Case Pw1"),
            ("sqlplus scott/Tiger_2024@orcl", "Tiger_2024"),
            ("sqlplus -s scott/Tiger_2024@//db.example.net:1521/ORCLPDB1", "Tiger_2024"),
            ("scott/Tiger_2024@//db.example.net:1521/ORCLPDB1", "Tiger_2024"),
            ("jdbc:oracle:thin:app/Thin_Pw42@db.example.net:1521/ORCL", "Thin_Pw42"),
            ("userid=scott/Tiger_2024", "Tiger_2024"),
            ("curl -u deploy:Curl-Pa55word https://api.example.com", "Curl-Pa55word"),
            ("curl --user 'ops:pa ss word' https://x", "pa ss word"),
            ("curl --user=ops:Eq-Form-Pw9 https://x", "Eq-Form-Pw9"),
            ("backup --password 'Flag Pa55 word' --verbose", "Flag Pa55 word"),
            ('backup --password "Flag Pa55 word" --verbose', "Flag Pa55 word"),
            ("deploy --db-password=Eq5ign4l --env prod", "Eq5ign4l"),
            ("gh auth --token T0kenFlagValue1", "T0kenFlagValue1"),
            ("mysql -h db1 -u root -pMyS9lPass app", "MyS9lPass"),
            ("mysqldump -uroot -p'Dump Pa55' shop", "Dump Pa55"),
            ("sshpass -p 'Ssh Pa55 phrase' ssh ops@bastion", "Ssh Pa55 phrase"),
            ("docker login -u bob -p D0ckerPw registry.example.com", "D0ckerPw"),
            ("redis-cli -h cache -a R3disCliPw ping", "R3disCliPw"),
            ("sqlcmd -S db -U sa -P SqlCmdPw9 -Q 'select 1'", "SqlCmdPw9"),
            ("openssl rsa -in k.pem -passin pass:Ssl-Pa55", "Ssl-Pa55"),
            ("\nENCRYPTION_KEY=Zq8vN2mR5tW1xY4b\n", "Zq8vN2mR5tW1xY4b"),
            ("export STRIPE_SIGNING_KEY='whsig value 9'\n", "whsig value 9"),
            ("SENTRY_DSN=https://abc123@o1.ingest.sentry.io/1", "https://abc123@o1.ingest.sentry.io/1"),
            ("cd app && MASTER_KEY=Inl1neEnvV4lue ./run.sh", "Inl1neEnvV4lue"),
            ('{"password": "correct horse battery staple"}', "correct horse battery staple"),
            ("login(user='bob', password='correct horse')", "correct horse"),
            ("password: 'yaml Pass 7'", "yaml Pass 7"),
            ('{\\"api_key\\": \\"escaped json value\\"}', "escaped json value"),
            ("login: `password` = 'Bq tick Pw' is not accepted", "Bq tick Pw")):  # a rejected reason
        out = Redactor().redact(f"before {text} after")
        assert secret not in out and "<SECRET>" in out, (text, out)
    r = Redactor()
    for text in ("mysql -u root -p mydb", "git push -u origin main", "docker run -u 1000:1000 image", "MAX_KEYS=100",
                 "SORT_KEY=name", "KEY_FILE=/etc/key.pem", "PUBLIC_KEY=abc", "set --password-stdin", "actions/checkout@v4",
                 "the connection string format is Server=host;Database=db;", "API_KEY=${OPENAI_API_KEY}"):
        assert r.redact(text) == text, text


def test_key_bodies_without_begin_glued_and_encoded_keys_and_split_jwts():
    import base64

    body = ("MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
            "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n")
    _gone(body + "-----END RSA PRIVATE KEY-----", "VTLw7onLRnrq0", "PRIVATE_KEY")  # BEGIN line gone
    _gone("key:\n" + body.replace("MIIEow", "XIIEow") + "-----END PRIVATE KEY-----", "VTLw7onLRnrq0", "PRIVATE_KEY")
    _gone(body, "VTLw7onLRnrq0", "PRIVATE_KEY")  # the body alone: its DER opens like a private key
    _gone("MC4CAQAwBQYDK2VwBCIEIAbCdEfGhIjKlMnOpQrStUvWxYz0123456789AbCdEfGhIjK", "MC4CAQAw", "PRIVATE_KEY")  # Ed25519
    _gone("b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW", "b3BlbnNzaC1rZXkt", "PRIVATE_KEY")
    middle = "\n".join(["QWxsIHRoZSBsaW5lcyBvZiBhIGtleSBib2R5IGN1dCBmcm9tIGl0cyBCRUdJTiBsaW5l"[:64]] * 4)
    _gone(middle, middle.splitlines()[1], "PRIVATE_KEY")  # lines wrapped at 64: a body cut from the middle
    cert = "MIIDdzCCAl+gAwIBAgIEAgAAuTANBgkqhkiG9w0BAQUFADBaMQswCQYDVQQGEwJJRTESMBAGA1UEChMJQmFsdGltb3JlMRMw"
    assert Redactor().redact(cert) == cert  # a certificate opens differently: public, kept
    # glued after `_` or `-`
    for text, secret in (("OPENAI_KEY_sk-proj-Gl7uEdKeY9x2Lm4Np6Qr8St0Uv", "sk-proj-Gl7uEdKeY9x2Lm4Np6Qr8St0Uv"),
                         ("token-ghp_Gl7uedAbCdEfGhIjKlMnOpQrStUvWxYz0123", "ghp_Gl7uedAbCdEfGhIjKlMnOpQrStUvWxYz0123"),
                         ("aws-AKIAI44QH8DHBEXAMPLE", "AKIAI44QH8DHBEXAMPLE"),
                         ("hf_token_hf_Gl7uedAbCdEfGhIjKlMnOpQrStUvWx12", "hf_Gl7uedAbCdEfGhIjKlMnOpQrStUvWx12"),
                         ("AUTH_eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJnbHVlZCJ9.c2lnbmF0dXJlX2dsdWVk", "c2lnbmF0dXJlX2dsdWVk")):
        out = Redactor().redact(text)
        assert secret not in out and "<" in out, (text, out)
    assert Redactor().redact("my-sk-learn-pipeline-notes-and-more") == "my-sk-learn-pipeline-notes-and-more"
    # base64-encoded: a PEM key, a provider token, a password assignment
    pem = b"-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBase64EncodedKeyBody0123456789\n-----END EC PRIVATE KEY-----\n"
    for raw, kind in ((pem, "PRIVATE_KEY"), (b"sk-ant-api03-Base64WrappedAnthropicKey0123456789", "API_KEY"),
                      (b'{"password": "hidden in base64"}', "SECRET")):
        encoded = base64.b64encode(raw).decode()
        _gone(f"data: {encoded}", encoded, kind)
        wrapped = "\n".join(encoded[i:i + 40] for i in range(0, len(encoded), 40))  # `base64` wraps its output
        out = Redactor().redact(f"data: {wrapped}")
        assert encoded[40:80] not in out, out
    harmless = base64.b64encode(b"just an ordinary sentence, nothing secret in it").decode()
    assert Redactor().redact(harmless) == harmless
    # a JWT split by line breaks (real, CRLF, or JSON-escaped), between or inside its segments
    for jwt, secret in (("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJqb2UifQ\n.c2lnbmF0dXJlLXNwbGl0", "c2lnbmF0dXJlLXNwbGl0"),
                        ("eyJhbGciOiJIUzI1NiJ9.eyJ1c2VyIjoiYW5uYSIsInJvbGUi\r\nOiJhZG1pbiJ9.X2hpZGRlbl9zaWduYXR1cmU", "X2hpZGRlbl9zaWdu"),
                        ("eyJhbGciOiJIUzI1NiJ9.\n  eyJ1c2VyIjoiYW5uYSJ9.\n  X2hpZGRlbl9zaWduYXR1cmU", "X2hpZGRlbl9zaWdu"),
                        ("eyJhbGciOiJIUzI1NiJ9.eyJ1c2VyIjoi\\nYW5uYSJ9.X2hpZGRlbl9zaWduYXR1cmU", "X2hpZGRlbl9zaWdu")):
        _gone(jwt, secret, "JWT")


def test_false_positives_stay_low():
    """Ordinary text a trace is full of: none of it is a secret, none of it may be replaced."""
    text = "\n".join([
        "Compute 1234 + 5678 = 6912 on 2024-01-01, area 3.14, id simple_python_97.",
        "The meeting is on 2024-03-15T10:30:00Z, the follow-up on 2024-04-01 at 09:00, the review on 15/04/2024.",
        "Upgrade from version 1.2.3 to v2.10.4 (Python 3.11.7, numpy==1.26.4, build 20240115, rev 4f3c2a1).",
        "The total is $1,299.99 (or €1.299,99, £45.00, ¥12,000, 1\u00a0299,99\u00a0€); tax 8.875%, tip 15 %.",
        "Order #123456789 shipped; order id ORD-2024-000123, invoice INV-88231, SKU 4006381333931, ticket JIRA-4521.",
        "We sold 12 345 678 units in 2023, up 15% from 10 734 503; 3 of 4 stores; steps 1, 2, 3, 4, 5, 6, 7, 8, 9, 10.",
        "The key insight: rotate the API key per the key management guide; the token expires in 3600 seconds.",
        "Use the password reset flow; session ends at 17:00; author: Jane; authority: the board; pass rate 92%.",
        "Set max_tokens=1024 and temperature=0.2; top_p: 0.9, seed=42, n=3, timeout=30.",
        "musical_scale(key='C', scale_type='major'); sort(key=len); {\"key\": \"value\", \"tokens\": 12}",
        '{"usage": {"input_tokens": 1200, "output_tokens": 340, "total_tokens": 1540}, "token_count": 12}',
        "latitude 37.7749, longitude -122.4194, elevation 16 m, population 883305, ZIP 94103, ext. 4412.",
        "epoch 1700000000, ms 1700000000123, pid 48213, port 8080, uuid 9eab5cfb-ebbb-438e-93f8-3856d7920fe7.",
        "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855, commit 76a6b95; the sums:",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752",
        "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
        "See https://example.com/docs/page?id=42&lang=en and actions/checkout@v4 for details.",
        "ISBN 978-3-16-148410-0, DOI 10.1000/182, arXiv 2401.01234, RFC 7519, ISO 8601, UTF-8.",
        "It costs 4,500 USD per month for 1 000 seats; call 911 in emergencies; room 101; flight UA 857.",
        "matrix [[1 2 3] [4 5 6] [7 8 9]]; pi 3.14159265358979; e 2.718281828459045; 0.12345678901234.",
        "counting: 1 2 3 4 5 6 7 8 9 10 11 12, then 2 3 4 5 6 7 8 9 0 1; scores 98 87 76 65 54.",
        "Le rendez-vous est le 12 mars à 14 h ; prix : 45,90 € ; réf. FR-2024-118.",
        "東京の会議は２０２４年３月１５日です。参加者は１２名。",
        "mysql -u root -p mydb; git push -u origin main; docker run -p 8080:80 image; ls -la /tmp",
        "def add(a: int, b: int) -> int:\n    return a + b  # the secret sauce is recursion",
        # from NESTFUL's API specs (the demo traffic): a date and time, and names that start like `pass`/`token`
        "Create an event 'Movie Night' from 2022-03-15 19:00 to 2022-03-15 22:00; due 03/15/2022 10:30.",
        "passengers: Number of passengers in the booking; tokenizer: bert; authorID: string; passage: text",
    ])
    r = Redactor()
    assert r.redact(text) == text, [line for line in r.redact(text).splitlines() if line not in text.splitlines()]
    assert r.counts == {}
    value = {"order_id": 123456789, "qty": 3, "price": 19.99, "year": 2024, "date": "2024-01-01", "version": "1.2.3",
             "key": "C", "max_tokens": 1024, "tokens": 12, "author": "Jane"}
    assert r.redact_value(value) == value


def test_uuids_whose_digits_pass_luhn_are_no_card_numbers():
    """A UUID's trailing groups can be an all-digit run that passes Luhn (`aa76-002321490703`): ids in exported
    traces (episode, call, parent run) stayed redacted one run in a few."""
    from fcagent.tracing.redact.redactor import _luhn_ok

    ids = ["01a24311-682e-7489-aa76-002321490703", "01a24311-6820-7489-1176-002321490703x",
           "call_4111111111111111", "run-4111111111111111"]
    assert _luhn_ok("76002321490703")
    redactor = Redactor()
    for value in ids:
        assert redactor.redact(value) == value, value
    assert redactor.redact("card 4111-1111-1111-1111, thanks") == "card <CARD_NUMBER>, thanks"


def test_the_phone_matcher_runs_on_a_bounded_number_of_candidates(monkeypatch):
    """libphonenumber's matcher (~0.15 ms a call) only sees candidates its metadata cannot decide, at
    most `_MATCHER_BUDGET` per text: a text built from thousands of distinct undecidable runs falls
    back to the regexes instead of taking seconds."""
    from fcagent.tracing.redact import redactor as redact  # where `Redactor` looks `_matched` up

    calls = []
    real = redact._matched.__wrapped__

    def counting(candidate, regions):
        calls.append(candidate)
        return real(candidate, regions)

    monkeypatch.setattr(redact, "_matched", counting)
    text = " x ".join(f"+44 20 7946 {n:04d} 12 {n % 97:02d}" for n in range(3 * redact._MATCHER_BUDGET))
    out = Redactor(cards=False).redact(text)  # (a phone with digits after it may pass Luhn: not the point here)
    assert len(calls) == redact._MATCHER_BUDGET
    assert out.count("<PHONE>") == 3 * redact._MATCHER_BUDGET  # the rest by the regexes: still redacted
