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
    time. A ratio, not a time limit (benchmarks/redaction.py measures the speed)."""
    import time

    r = Redactor()

    def seconds(text: str) -> float:
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            r.redact(text)
            best = min(best, time.perf_counter() - started)
        return best

    for unit, times in (("a-a-", 12_500), ("@a", 25_000), ("1 2 ", 12_500), ("eyJ", 16_000), ("://a:b", 8_000),
                        ("password=", 5_500), ("-----BEGIN PRIVATE KEY-----\n", 1_800), ("sk-", 16_000)):
        small, large = seconds(unit * times), seconds(unit * times * 4)
        assert large < 8 * small + 0.01, (unit, small, large)  # linear: ~4x; quadratic: ~16x


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
    from secrets_corpus import CUT_KEY, PLANTED, leaks
    from typer.testing import CliRunner

    from fcagent.cli.app import app
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

    connect.handle_tool_error = True
    question = "my details: " + everything

    def call(name, **args):
        return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": None}])

    store = TraceStore(tmp_path / "t.db")
    recorder = TraceRecorder(store, note="ops contact " + PLANTED["email"][0] + " " + PLANTED["openai key"][0])
    ids = []
    for replies, verdict in (([call("lookup", query=everything), "Done: " + everything], True),
                             ([call("connect", dsn=everything), "Failed: " + everything], False)):
        agent = create_agent(ScriptedChatModel(responses={question: replies}), [lookup, connect],
                             system_prompt="You help. Internal: " + everything)
        run_id = uuid.uuid4()
        agent.invoke({"messages": [HumanMessage(question)]}, {"run_id": run_id, "callbacks": [recorder]})
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
                                                               {"callbacks": [recorder]})
    assert "-----END" not in state["messages"][2].content and "more characters cut" in state["messages"][2].content
    store.label(recorder.last_episode_id, True, "ok", "feedback")
    raw = json.dumps([t.model_dump() for t in store.traces()])
    assert len(leaks(raw)) >= 40  # the store keeps the truth; redaction happens on the way out

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
        assert leaks(text) == [], name
    assert "<PRIVATE_KEY>" in outputs["traces export"]
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
