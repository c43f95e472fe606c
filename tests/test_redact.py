import json

from langchain_core.messages import HumanMessage
from langchain_core.tools import tool

from fcagent import build_agent_graph
from fcagent.recorder import TraceRecorder
from fcagent.redact import Redactor
from fcagent.store import TraceStore
from fcagent.testing import ScriptedChatModel

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
