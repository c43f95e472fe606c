"""OpenTelemetry in and out: GenAI spans recorded by real instrumentation packages (OpenLLMetry's and
OpenInference's LangChain instrumentations, on a `create_agent` agent with tools) import into episodes
that export valid TRL rows; fcagent's own episodes exported as OTLP import back field by field."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from typer.testing import CliRunner
from weather_tools import call, convert, get_weather

from fcagent import ReferenceTeacher, build_agent_graph, get_task
from fcagent.agent.testing import ScriptedChatModel
from fcagent.cli.app import app
from fcagent.data.export import export_preference_pairs, export_sft
from fcagent.data.rows import load_pairs
from fcagent.tracing.middleware import TraceMiddleware
from fcagent.tracing.recorder import TraceRecorder
from fcagent.tracing.store import TraceStore

pytest.importorskip("opentelemetry.sdk")
runner = CliRunner()


class OtlpReceiver:
    """An OTLP/HTTP endpoint in the test: keeps every request body as the exporter sent it."""

    def __init__(self) -> None:
        bodies = self.bodies = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # the http.server hook
                bodies.append((self.path, self.rfile.read(int(self.headers["Content-Length"])),
                               {k.lower(): v for k, v in self.headers.items()}))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def save(self, folder: Path) -> Path:
        """The bodies as they came, one protobuf file each (what an OTLP/HTTP capture holds)."""
        folder.mkdir(parents=True, exist_ok=True)
        for i, (_, body, _) in enumerate(self.bodies):
            (folder / f"request-{i}.binpb").write_bytes(body)
        return folder

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receiver():
    r = OtlpReceiver()
    yield r
    r.close()


def record_with(instrumentor, receiver, runs):
    """Run `runs(agent_factory)` under a real instrumentation package, its spans sent by the SDK's OTLP/HTTP
    exporter to `receiver`."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=receiver.url)))
    instrumentor.instrument(tracer_provider=provider)
    try:
        runs()
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


def weather_runs():
    """Two requests answered well, one answered with the wrong city (the same question as the first)."""
    good = ScriptedChatModel(model_name="big-model", responses={
        "Weather in Paris in F?": [call("get_weather", {"city": "Paris"}, "c1"), call("convert", {"celsius": 20}, "c2"),
                                   "Sunny and 68F in Paris."],
        "Weather in Oslo?": [call("get_weather", {"city": "Oslo"}, "c3"), "Sunny in Oslo."]})
    bad = ScriptedChatModel(model_name="big-model", responses=[call("get_weather", {"city": "London"}, "c4"),
                                                               "Sunny in London."])
    for model, question in ((good, "Weather in Paris in F?"), (good, "Weather in Oslo?"), (bad, "Weather in Paris in F?")):
        agent = create_agent(model, [get_weather, convert], system_prompt="You answer weather questions.")
        agent.invoke({"messages": [HumanMessage(question)]})


def first_question(trace):
    return next(m.content for m in trace.completions[0].messages if m.role == "user")


def check_imported(store: TraceStore):
    traces = sorted(store.traces(), key=lambda t: t.episode.started_at)
    assert len(traces) == 3
    paris, oslo, london = traces
    # the exact input of every model call: the system prompt, the question, the calls and their results
    assert [(m.role, m.content) for m in paris.completions[0].messages] == [
        ("system", "You answer weather questions."), ("user", "Weather in Paris in F?")]
    last = paris.completions[2].messages
    assert [m.role for m in last] == ["system", "user", "assistant", "tool", "assistant", "tool"]
    assert last[2].tool_calls == [{"id": "c1", "name": "get_weather", "args": {"city": "Paris"}}]
    assert (last[3].content, last[3].tool_call_id) == ("sunny in Paris", "c1")
    assert (last[5].content, last[5].tool_call_id) == ("68.0", "c2")
    assert paris.completions[0].candidates[0].calls == [{"name": "get_weather", "args": {"city": "Paris"}}]
    assert paris.completions[2].candidates[0].message.content == "Sunny and 68F in Paris."
    for trace in traces:
        for c in trace.completions:
            assert {t["function"]["name"] for t in c.tools} == {"get_weather", "convert"}
            assert c.tools[0]["function"]["parameters"]["properties"]["city"] == {"type": "string"}
    assert [(t.name, t.args, t.output, t.tool_call_id) for t in paris.tool_runs] == [
        ("get_weather", {"city": "Paris"}, "sunny in Paris", "c1"), ("convert", {"celsius": 20}, "68.0", "c2")]
    assert paris.episode.model == "big-model" and paris.episode.metadata["source"] == "otlp"
    assert first_question(oslo) == "Weather in Oslo?" and first_question(london) == "Weather in Paris in F?"
    return paris, oslo, london


def label_and_export(store: TraceStore, out: Path, paris, oslo, london):
    """The users' feedback, then TRL rows: SFT rows of the good episodes and a pair where London diverged."""
    store.label(paris.episode.id, True, "right", "feedback")
    store.label(oslo.episode.id, True, "right", "feedback")
    store.label(london.episode.id, False, "asked for Paris", "feedback")
    sft = export_sft(store, out, test_fraction=0.0)
    rows = [json.loads(line) for line in sft.path.read_text().splitlines()]
    assert len(rows) == 2 and len(load_pairs(sft.path, "sft")) == 2  # TRL's loader validates them
    for row in rows:
        assert {t["function"]["name"] for t in json.loads(row["tools"])} == {"get_weather", "convert"}
        assert "get_weather" in row["messages"][0]["content"]  # the student sees the tools in its prompt
    pairs = export_preference_pairs(store, out, test_fraction=0.0)
    (pair,) = [json.loads(line) for line in pairs.path.read_text().splitlines()]
    assert len(load_pairs(pairs.path, "dpo")) == 1
    assert pair["prompt"][-1] == {"role": "user", "content": "Weather in Paris in F?"}
    assert "Paris" in pair["chosen"][0]["content"] and "London" in pair["rejected"][0]["content"]
    assert {t["function"]["name"] for t in json.loads(pair["tools"])} == {"get_weather", "convert"}


def test_openllmetry_spans_of_a_create_agent_run_become_episodes_and_trl_rows(tmp_path, receiver):
    from opentelemetry.instrumentation.langchain import LangchainInstrumentor

    # Context propagation wraps langchain_openai for good (its uninstrument leaves those wrappers): not needed here.
    record_with(LangchainInstrumentor(disable_trace_context_propagation=True), receiver, weather_runs)
    folder = receiver.save(tmp_path / "spans")
    result = runner.invoke(app, ["traces", "import-otlp", str(folder), "--store", str(tmp_path / "t.db")])
    assert result.exit_code == 0, result.output
    assert "3 episodes, 3 added" in result.output
    store = TraceStore(tmp_path / "t.db")
    paris, oslo, london = check_imported(store)
    label_and_export(store, tmp_path / "out", paris, oslo, london)
    again = runner.invoke(app, ["traces", "import-otlp", str(folder), "--store", str(tmp_path / "t.db")])
    assert "0 added, 3 already present" in again.output  # a trace's id is the episode's


def test_openinference_spans_of_a_create_agent_run_become_episodes_and_trl_rows(tmp_path, receiver):
    from openinference.instrumentation.langchain import LangChainInstrumentor

    record_with(LangChainInstrumentor(), receiver, weather_runs)
    store = TraceStore(tmp_path / "t.db")
    from fcagent.tracing.otlp.inbound import import_otlp

    report = import_otlp(store, [receiver.save(tmp_path / "spans")])
    assert (report.episodes, report.added) == (3, 3)
    paris, oslo, london = check_imported(store)
    assert paris.completions[0].params["model_name"] == "big-model"  # llm.invocation_parameters
    label_and_export(store, tmp_path / "out", paris, oslo, london)


def test_the_older_flat_gen_ai_prompt_attributes_are_read(tmp_path, receiver):
    """OpenLLMetry until 0.54 wrote `gen_ai.prompt.N.*` / `gen_ai.completion.N.*` and `llm.request.functions.N.*`;
    those versions no longer run with wrapt 2 (they call `wrap_function_wrapper(module=...)`) nor beside the
    current one, so the spans are made here, through the SDK, with the attributes its `span_utils` set (names and
    layout as it wrote them)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=receiver.url)))
    tracer = provider.get_tracer("opentelemetry.instrumentation.langchain")
    params = json.dumps({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
    with tracer.start_as_current_span("LangGraph.workflow", attributes={"traceloop.span.kind": "workflow"}):
        with tracer.start_as_current_span("ChatOpenAI.chat", attributes={
                "llm.request.type": "chat", "gen_ai.request.model": "gpt-4.1", "gen_ai.response.model": "gpt-4.1",
                "llm.request.functions.0.name": "get_weather", "llm.request.functions.0.description": "Weather.",
                "llm.request.functions.0.parameters": params,
                "gen_ai.prompt.0.role": "system", "gen_ai.prompt.0.content": "Be brief.",
                "gen_ai.prompt.1.role": "user", "gen_ai.prompt.1.content": "Weather in Oslo?",
                "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.finish_reason": "tool_calls",
                "gen_ai.completion.0.tool_calls.0.id": "call_9", "gen_ai.completion.0.tool_calls.0.name": "get_weather",
                "gen_ai.completion.0.tool_calls.0.arguments": '{"city": "Oslo"}',
                "gen_ai.usage.prompt_tokens": 31, "gen_ai.usage.completion_tokens": 9}):
            pass
        with tracer.start_as_current_span("get_weather.tool", attributes={
                "traceloop.span.kind": "tool", "traceloop.entity.name": "get_weather",
                "traceloop.entity.input": json.dumps({"input_str": "{'city': 'Oslo'}", "tags": [], "metadata": {},
                                                      "kwargs": {}, "inputs": None}),
                "traceloop.entity.output": json.dumps({"output": "rain", "kwargs": {}})}):
            pass
        with tracer.start_as_current_span("ChatOpenAI.chat", attributes={
                "llm.request.type": "chat", "gen_ai.request.model": "gpt-4.1",
                "gen_ai.prompt.0.role": "system", "gen_ai.prompt.0.content": "Be brief.",
                "gen_ai.prompt.1.role": "user", "gen_ai.prompt.1.content": "Weather in Oslo?",
                "gen_ai.prompt.2.role": "assistant", "gen_ai.prompt.2.content": "",
                "gen_ai.prompt.2.tool_calls.0.id": "call_9", "gen_ai.prompt.2.tool_calls.0.name": "get_weather",
                "gen_ai.prompt.2.tool_calls.0.arguments": '{"city": "Oslo"}',
                "gen_ai.prompt.3.role": "tool", "gen_ai.prompt.3.content": "rain",
                "gen_ai.prompt.3.tool_call_id": "call_9",
                "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.content": "Rain in Oslo."}):
            pass
    provider.shutdown()
    store = TraceStore(tmp_path / "t.db")
    from fcagent.tracing.otlp.inbound import import_otlp

    import_otlp(store, [receiver.save(tmp_path / "spans")])
    (trace,) = list(store.traces())
    first, second = trace.completions
    assert [(m.role, m.content) for m in first.messages] == [("system", "Be brief."), ("user", "Weather in Oslo?")]
    assert first.tools == [{"type": "function", "function": {"name": "get_weather", "description": "Weather.",
                                                             "parameters": json.loads(params)}}]
    assert first.candidates[0].calls == [{"name": "get_weather", "args": {"city": "Oslo"}}]
    assert first.usage == {"input_tokens": 31, "output_tokens": 9} and first.model == "gpt-4.1"
    assert [(m.role, m.tool_call_id) for m in second.messages][2:] == [("assistant", None), ("tool", "call_9")]
    assert second.messages[2].tool_calls == [{"id": "call_9", "name": "get_weather", "args": {"city": "Oslo"}}]
    assert second.candidates[0].message.content == "Rain in Oslo."
    assert [(t.name, t.args, t.output) for t in trace.tool_runs] == [("get_weather", {"city": "Oslo"}, "rain")]


# --- fcagent's own episodes out and back in ------------------------------------------------------------------


def record_own_episodes(store: TraceStore) -> None:
    """Every route and shape of episode fcagent records: callbacks and middleware on create_agent, its own graph
    in the text protocol with step labels and a verifier's verdict, a failing tool, a lone model call with
    sampling parameters, several candidates, a user's label."""
    model = ScriptedChatModel(model_name="big-model", responses=[
        call("get_weather", {"city": "Paris"}, "t1"), call("convert", {"celsius": 20}, "t2"), "Sunny and 68F."])
    create_agent(model, [get_weather, convert], system_prompt="Be brief.").invoke(
        {"messages": [HumanMessage("Weather in Paris in F?")]}, {"callbacks": [TraceRecorder(store, team="search")]})
    model = ScriptedChatModel(responses=[call("get_weather", {"city": "Oslo"}, None), "Sunny."])
    create_agent(model, [get_weather], middleware=[TraceMiddleware(store)]).invoke(
        {"messages": [HumanMessage("Oslo?")]}, {"configurable": {"thread_id": "th-1"}})
    task = get_task("math")
    problems = task.load(limit=2)
    bad = ScriptedChatModel(native=False, responses=["no idea", 'add(a=1, b="x")', "final_answer(answer=-1)"])
    build_agent_graph(bad, task=task).invoke({"problem": problems[0]}, {"callbacks": [TraceRecorder(store)]})
    build_agent_graph(ReferenceTeacher(problems=problems), task=task).invoke(
        {"problem": problems[1]}, {"callbacks": [TraceRecorder(store)]})

    @tool
    def boom(x: int) -> int:
        """Fails."""
        raise ValueError("no")

    build_agent_graph(ScriptedChatModel(native=False, responses=["boom(x=1)", "final_answer(answer=2)"]), [boom]).invoke(
        {"messages": [HumanMessage("go")]}, {"callbacks": [TraceRecorder(store)]})
    ScriptedChatModel(responses=["hi"]).bind_tools([get_weather]).bind(temperature=0.3, max_tokens=64).invoke(
        [HumanMessage("hello")], {"callbacks": [TraceRecorder(store)]})
    store.label(next(store.episodes()).id, False, "the user wanted Celsius", "feedback")


def assert_same_episodes(original: TraceStore, imported: TraceStore) -> None:
    a = {t.episode.id: t.model_dump() for t in original.traces()}
    b = {t.episode.id: t.model_dump() for t in imported.traces()}
    assert a.keys() == b.keys()
    for episode_id, trace in a.items():
        for field in ("episode", "completions", "tool_runs", "labels"):
            assert b[episode_id][field] == trace[field], f"episode {episode_id}: `{field}` differs"


@pytest.mark.parametrize("fmt", ["json", "protobuf"])
def test_own_episodes_exported_as_otlp_import_back_field_by_field(tmp_path, fmt):
    store = TraceStore(tmp_path / "t.db")
    record_own_episodes(store)
    assert store.count() == 6 and store.count("labels") > 5
    out = tmp_path / f"spans.{fmt}"
    result = runner.invoke(app, ["traces", "export-otlp", str(out), "--format", fmt, "--store", str(tmp_path / "t.db")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["traces", "import-otlp", str(out), "--store", str(tmp_path / "back.db")])
    assert result.exit_code == 0 and "6 episodes, 6 added" in result.output, result.output
    assert_same_episodes(store, TraceStore(tmp_path / "back.db"))


def test_own_episodes_sent_to_an_endpoint_arrive_whole_and_redacted(tmp_path, receiver):
    store = TraceStore(tmp_path / "t.db")
    record_own_episodes(store)
    secret = "sk-proj-" + "A1b2C3d4E5f6G7h8J9k0" * 2
    model = ScriptedChatModel(responses=[call("get_weather", {"city": "Rome"}, "k1"), f"Use the key {secret}."])
    create_agent(model, [get_weather]).invoke({"messages": [HumanMessage("Rome, mail me at ana@example.com")]},
                                              {"callbacks": [TraceRecorder(store)]})
    result = runner.invoke(app, ["traces", "export-otlp", "--endpoint", receiver.url, "--header", "Authorization=Basic eDp5",
                                 "--store", str(tmp_path / "t.db")])
    assert result.exit_code == 0 and "sent 7 episodes" in result.output, result.output
    assert all(headers.get("authorization") == "Basic eDp5" for _, _, headers in receiver.bodies)
    sent = b"".join(body for _, body, _ in receiver.bodies)
    assert secret.encode() not in sent and b"ana@example.com" not in sent  # redacted by default
    back = TraceStore(tmp_path / "back.db")
    from fcagent.tracing.otlp.inbound import import_otlp

    import_otlp(back, [receiver.save(tmp_path / "spans")])
    original = {t.episode.id for t in store.traces()}
    assert {t.episode.id for t in back.traces()} == original
    rome = next(t for t in back.traces() if "Rome" in first_question(t))
    assert "<EMAIL>" in first_question(rome) and secret not in rome.completions[-1].candidates[0].message.content
    raw = tmp_path / "raw.jsonl"
    assert runner.invoke(app, ["traces", "export-otlp", str(raw), "--no-redact", "--store", str(tmp_path / "t.db")]).exit_code == 0
    assert secret in raw.read_text()  # --no-redact opts out


def test_the_recorder_sends_each_episode_as_spans_too(tmp_path):
    from fcagent.tracing.otlp.outbound import OtlpSink

    store = TraceStore(tmp_path / "t.db")
    sink = OtlpSink.file(tmp_path / "live.jsonl")
    recorder = TraceRecorder(store, otlp=sink)
    model = ScriptedChatModel(responses=[call("get_weather", {"city": "Paris"}, "t1"), "Sunny."])
    agent = create_agent(model, [get_weather])
    for question in ("Paris?", "Paris again?"):
        agent.invoke({"messages": [HumanMessage(question)]}, {"callbacks": [recorder]})
    middleware = TraceMiddleware(store, otlp=sink)
    create_agent(ScriptedChatModel(responses=["No tools needed."]), [get_weather], middleware=[middleware]).invoke(
        {"messages": [HumanMessage("hi")]})
    recorder.flush()
    middleware.flush()
    assert len((tmp_path / "live.jsonl").read_text().splitlines()) >= 1
    runner.invoke(app, ["traces", "import-otlp", str(tmp_path / "live.jsonl"), "--store", str(tmp_path / "back.db")])
    assert_same_episodes(store, TraceStore(tmp_path / "back.db"))


# --- bad input -----------------------------------------------------------------------------------------------


def test_bad_otlp_input_is_one_line_naming_the_file_and_writes_nothing(tmp_path):
    good = tmp_path / "good.jsonl"
    store = TraceStore(tmp_path / "t.db")
    record_own_episodes(store)
    assert runner.invoke(app, ["traces", "export-otlp", str(good), "--store", str(tmp_path / "t.db")]).exit_code == 0
    first, *_ = good.read_text().splitlines()
    cases = {
        "broken.jsonl": (first + "\n{not json\n", r"broken.jsonl:2: invalid JSON"),
        "shape.json": ('{"resourceSpans": 5}', r"shape.json: not OTLP/JSON"),
        "empty.json": ("{}", r"empty.json: holds no spans"),
        "junk.pb": (bytes(range(1, 200)), r"junk.pb: neither OTLP/JSON nor OTLP protobuf"),
        "tampered.jsonl": (first.replace('fcagent.episode","value":{"stringValue":"{', 'fcagent.episode","value":{"stringValue":"{{'),
                           r"tampered.jsonl: span \w+ `fcagent.episode` is not the JSON fcagent writes"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        result = runner.invoke(app, ["traces", "import-otlp", str(path), "--store", str(tmp_path / "new.db")],
                               env={"COLUMNS": "1000"})
        assert result.exit_code == 2, (name, result.output)
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
        assert re.search(message, result.output), (name, result.output)
    assert not (tmp_path / "new.db").exists()  # read whole before the store is opened: nothing written
    (tmp_path / "nothing").mkdir()
    result = runner.invoke(app, ["traces", "import-otlp", str(tmp_path / "nothing"), "--store", str(tmp_path / "new.db")])
    assert result.exit_code == 2 and "no OTLP files in this folder" in result.output
    result = runner.invoke(app, ["traces", "export-otlp", "--store", str(tmp_path / "t.db")])
    assert result.exit_code == 2 and "give an output file or --endpoint" in result.output
    result = runner.invoke(app, ["traces", "export-otlp", str(good), "--store", str(tmp_path / "t.db")])
    assert result.exit_code == 2 and "exists" in result.output  # never over an existing file without --force
