"""The pipeline in a minute, offline: the reference teacher and the bundled student run the same
LangGraph agent on BFCL problems, the recorder stores every model call, and the exporter turns the
labelled completions into TRL preference pairs and SFT rows.

    python examples/quickstart.py [runs/quickstart]

Training on what it writes: `fcagent train --pairs runs/quickstart/pairs --method sft` (or the whole
pipeline: `fcagent distill --preset quick`).
"""
import sys
from pathlib import Path

from fcagent import (
    ReferenceTeacher,
    TraceRecorder,
    TraceStore,
    build_agent_graph,
    export_preference_pairs,
    export_sft,
    get_task,
    load_chat_model,
)
from fcagent.data.rows import ExportError

out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/quickstart")
out.mkdir(parents=True, exist_ok=True)
task = get_task("bfcl:simple_python")
problems = task.load(split="train", limit=6)
store = TraceStore(out / "traces.db")

teacher = ReferenceTeacher(problems=problems)                      # the gold chains, replayed
student = load_chat_model("bundled:smollm2-135m", response_prefix='{"name": "', temperature=0.8)
for name, model in (("teacher", teacher), ("student", student)):
    graph = build_agent_graph(model, task=task)
    recorder = TraceRecorder(store, experiment=f"quickstart-{name}")
    for p in problems:
        state = graph.invoke({"problem": p}, {"callbacks": [recorder]})
        print(f"{name:8} {p.id:24} {state['verdict']['success']!s:5} {state['verdict']['reason'][:60]}")

sft = export_sft(store, out / "sft", tokenizer=student.tokenizer)
print(f"SFT rows: {sft.rows} -> {sft.path}")
try:
    pairs = export_preference_pairs(store, out / "pairs", tokenizer=student.tokenizer)
    print(f"preference pairs: {pairs.rows} -> {pairs.path} ({pairs.stats['by_source']})")
except ExportError as exc:  # e.g. the student got every problem right: nothing to prefer
    print(f"no preference pairs: {exc}")
