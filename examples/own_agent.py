"""Your own LangChain agent, end to end: record its traffic, label it with your users' feedback,
export training data, train the small model, and swap it back in, offline, in about two minutes.

    python examples/own_agent.py [runs/own-agent]

The agent is a warehouse assistant built with `create_agent` and three typed tools (two of them raise
`ToolException`, handled). The "large model" is a scripted stand-in (`ScriptedChatModel`), so this
runs without an API key; put your own model there (`init_chat_model("openai:gpt-4.1")`, ...).
"""
import json
import sys
import uuid
from pathlib import Path

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import ToolException, tool

from fcagent import (
    StudentMiddleware,
    TraceRecorder,
    TraceStore,
    TrainSettings,
    export_preference_pairs,
    export_sft,
    load_chat_model,
    read_feedback,
    train,
)
from fcagent.agent.testing import ScriptedChatModel

out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/own-agent")
out.mkdir(parents=True, exist_ok=True)
STOCK = {f"SKU-{i}": 10 * i for i in range(1, 6)}


# --- 1. your agent ---------------------------------------------------------------------------------
@tool
def check_stock(sku: str) -> int:
    """Units of a product in the warehouse, by its SKU code."""
    if sku not in STOCK:
        raise ToolException(f"unknown SKU {sku}")
    return STOCK[sku]


@tool
def reserve(sku: str, quantity: int) -> str:
    """Reserve units of a product for an order."""
    if quantity > STOCK.get(sku, 0):
        raise ToolException(f"only {STOCK.get(sku, 0)} units of {sku} left")
    return f"reserved {quantity} x {sku}"


@tool
def opening_hours(day: str) -> str:
    """The warehouse's opening hours on a day of the week."""
    return "closed" if day.lower() in ("saturday", "sunday") else "8-16"


check_stock.handle_tool_error = reserve.handle_tool_error = True
tools = [check_stock, reserve, opening_hours]


def calls(name: str, **args) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": None}])  # ids: fresh per reply


# The stand-in for your large model: each request's replies, step by step.
traffic = []  # (question, replies, what the user thought of the answer)
for i in range(1, 6):
    traffic.append((f"How many units of SKU-{i} do we have?",
                    [calls("check_stock", sku=f"SKU-{i}"), f"We have {10 * i} units of SKU-{i}."], "good"))
for i in range(1, 4):  # the same requests again, answered wrongly: the user says so
    traffic.append((f"How many units of SKU-{i} do we have?",
                    [calls("check_stock", sku=f"SKU-{i}"), f"We have {10 * i + 5} units of SKU-{i}."], "bad"))
traffic.append(("Reserve 500 units of SKU-2.", [calls("reserve", sku="SKU-2", quantity=500),
                                                "Sorry, only 20 units of SKU-2 are left."], "good"))
for day in ("Monday", "Sunday"):
    traffic.append((f"Are you open on {day}?", [calls("opening_hours", day=day),
                                                f"On {day} we are {'closed' if day == 'Sunday' else 'open 8-16'}."], "good"))

# --- 2. record production traffic: one episode per run, its id the run id you pass ---------------------
store = TraceStore(out / "traces.db")
recorder = TraceRecorder(store, app="warehouse")
feedback = []
for question, replies, verdict in traffic:
    agent = create_agent(ScriptedChatModel(model_name="big-model", responses={question: replies}), tools)
    run_id = uuid.uuid4()  # the id your app keeps to attach the user's thumbs up/down later
    agent.invoke({"messages": [HumanMessage(question)]}, {"run_id": run_id, "callbacks": [recorder]})
    feedback.append({"id": str(run_id), "label": verdict, "reason": "user feedback"})
print(f"recorded {store.count()} episodes")

# --- 3. your users' feedback arrives: label the episodes (`fcagent traces label --file` does the same) --
(out / "feedback.jsonl").write_text("".join(json.dumps(f) + "\n" for f in feedback))
store.label_many(read_feedback(out / "feedback.jsonl"))

# --- 4. export: SFT rows (one per good episode, every turn trained), DPO pairs where a request went both ways.
# A fifth of the requests are held out (`test_fraction`) for measuring the student on traffic it never saw.
sft = export_sft(store, out / "data")
pairs = export_preference_pairs(store, out / "data")
print(f"SFT rows: {sft.rows}, DPO pairs: {pairs.rows} ({pairs.stats['rejected_reasons']})")

# --- 5. train the small model (a few steps here; `fcagent train` with more for real) -------------------
run = train(out / "data", "bundled:smollm2-135m", out / "student",
            settings=TrainSettings(method="sft", max_steps=3, batch_size=2))
print(f"trained {run.method}: {run.steps} steps in {run.seconds:.0f} s -> {run.run_dir}")

# --- 6. swap it back: as the agent's model, and in front of the large model ------------------------------
student = load_chat_model(str(out / "student"), max_new_tokens=48)
question = "How many units of SKU-4 do we have?"
first = create_agent(student, tools).invoke({"messages": [HumanMessage(question)]}, {"recursion_limit": 8})["messages"][1]
print(f"student alone, first reply: tool_calls={first.tool_calls} "
      f"invalid_tool_calls={[c['error'][:60] for c in first.invalid_tool_calls]} text={first.content[:60]!r}")

big = ScriptedChatModel(model_name="big-model", responses={q: r for q, r, _ in traffic})
guard = StudentMiddleware(student, teacher=big, store=store)  # escalations become training pairs
reply = create_agent(big, tools, middleware=[guard]).invoke({"messages": [HumanMessage(question)]},
                                                            {"callbacks": [recorder]})
print(f"student + escalation: {reply['messages'][-1].content!r} "
      f"({guard.student_calls} student calls, {guard.escalations} escalated to the large model)")
