"""`fcagent eval --store`: models measured on a user's own recorded traffic, before one replaces the model
in production.

Every model call of a held-out episode (`fcagent.data.split`: requests training never saw) is a step.
Each model gets the step's exact recorded context (its messages and the tools offered, rendered as that
model is served) and its reply is compared with the recorded one (`fcagent.routing.agreement`):

* on episodes labelled good: does it make the call the agent made (or give the same answer)? That is
  `step_agreement`, with `first_call_agreement` (each episode's first call) and `episode_agreement`
  (every step of an episode);
* on episodes labelled bad: does it repeat the reply the user rejected (`repeats_rejected`, the
  decisive last step)?

Beside them: `invalid_call_rate` (a call that cannot be read or breaks its schema), the projected
`escalation_rate` (the share of steps `StudentMiddleware`'s check would send to the teacher), a table
per tool, tokens and latency per step against the recorded model's, bootstrap 95% intervals and McNemar
tests between every two models. `-m NAME=recorded` scores the recorded replies themselves (1.0 by
construction: a check of the pipeline). Results per model are kept and reused while the model, the
split and the judge are the same.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage
from pydantic import BaseModel

from fcagent.core import keys
from fcagent.core.calls import calls_error
from fcagent.core.errors import UserError
from fcagent.core.records import to_langchain
from fcagent.data.split import DEFAULT_TEST_FRACTION, split_of_row
from fcagent.pipeline.evaluate import bootstrap_ci, mcnemar_exact
from fcagent.routing.agreement import Judge, StringMatch, calls_agree, load_judge
from fcagent.routing.check import StudentCheck
from fcagent.tracing.store import TraceStore

__all__ = ["RECORDED", "Step", "StepResult", "heldout_steps", "evaluate_traffic", "reply_agrees"]

RECORDED = "recorded"  # the spec that scores the recorded replies themselves


@dataclass
class Step:
    """One model call of a held-out episode, as recorded."""

    episode_id: str
    completion_id: str
    index: int  # its place among the episode's model calls
    last: bool
    good: bool  # the episode's label
    messages: list[BaseMessage]
    tools: list[dict[str, Any]]
    recorded: AIMessage
    recorded_usage: dict[str, Any]
    recorded_latency_ms: float | None


class StepResult(BaseModel):
    completion_id: str
    agree: bool
    reason: str
    kind: str  # "call" (the recorded reply made calls) or "answer"
    calls: list[str]  # the functions the model's reply called
    invalid: bool  # a call that cannot be read or breaks its schema
    escalates: bool  # StudentMiddleware's check would send this reply to the teacher
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0


def heldout_steps(store: TraceStore, *, test_fraction: float = DEFAULT_TEST_FRACTION,
                  unlabelled: str = "skip") -> list[Step]:
    """Every model call of the held-out episodes of a user's agent (labelled, complete, not a student's)."""
    steps: list[Step] = []
    for trace in store.traces(status="complete"):
        ep = trace.episode
        if ep.metadata.get(keys.ROLE) in (*keys.STUDENT_ROLES, keys.Role.EVAL.value) or not trace.completions:
            continue
        if split_of_row(ep.split, ep.problem_id, ep.request_key, test_fraction) != "test":
            continue
        label = trace.episode_label()
        good = label.success if label is not None else (True if unlabelled == "good" else None)
        if good is None:
            continue
        last = len(trace.completions) - 1
        for i, c in enumerate(trace.completions):
            if not c.candidates:
                continue
            steps.append(Step(episode_id=ep.id, completion_id=c.id, index=i, last=i == last, good=good,
                              messages=[to_langchain(m) for m in c.messages], tools=c.tools,
                              recorded=to_langchain(c.candidates[0].message), recorded_usage=c.usage,
                              recorded_latency_ms=c.latency_ms))
    return steps


def _calls(message: AIMessage) -> list[dict[str, Any]]:
    return [{"name": c["name"], "args": c.get("args") or {}} for c in message.tool_calls]


def reply_agrees(reply: AIMessage, recorded: AIMessage, tools: list[dict[str, Any]], *, judge: Judge,
                 match: StringMatch) -> tuple[bool, str]:
    """Whether `reply` agrees with the recorded reply (see `fcagent.routing.agreement`), and why not."""
    wanted = _calls(recorded)
    if wanted:
        if reply.invalid_tool_calls and not reply.tool_calls:
            return False, f"an invalid call: {reply.invalid_tool_calls[0].get('error')}"
        return calls_agree(_calls(reply), wanted, tools, match)
    if reply.tool_calls or reply.invalid_tool_calls:
        return False, "a call where the recorded reply answered in words"
    text = reply.content if isinstance(reply.content, str) else str(reply.content)
    reference = recorded.content if isinstance(recorded.content, str) else str(recorded.content)
    return (True, "the same answer") if judge(reference, text) else (False, "another answer")


def _score(step: Step, reply: AIMessage, latency_ms: float, *, judge: Judge, match: StringMatch,
           check: StudentCheck) -> StepResult:
    agree, reason = reply_agrees(reply, step.recorded, step.tools, judge=judge, match=match)
    invalid = bool(reply.invalid_tool_calls) or (bool(reply.tool_calls) and step.tools and
                                                  calls_error(_calls(reply), step.tools) is not None)
    usage = reply.usage_metadata or {}
    return StepResult(completion_id=step.completion_id, agree=agree, reason=reason,
                      kind="call" if step.recorded.tool_calls else "answer", calls=[c["name"] for c in reply.tool_calls],
                      invalid=bool(invalid), escalates=check.failure(step.messages, reply, step.tools) is not None,
                      prompt_tokens=int(usage.get("input_tokens", 0)), completion_tokens=int(usage.get("output_tokens", 0)),
                      latency_ms=latency_ms)


def _run(model: Any, steps: list[Step], *, judge: Judge, match: StringMatch, concurrency: int,
         progress: Any = None, label: str = "") -> list[StepResult]:
    check = StudentCheck()
    bar = None
    if progress is not None:
        progress.start()
        bar = progress.add_task(f"eval {label}", total=len(steps), status="")

    def one(step: Step) -> StepResult:
        if model is None:  # the recorded replies themselves
            return _score(step, step.recorded, step.recorded_latency_ms or 0.0, judge=judge, match=match, check=check)
        bound = model.bind_tools(step.tools) if step.tools else model
        started = time.perf_counter()
        reply = bound.invoke(step.messages)
        result = _score(step, reply, (time.perf_counter() - started) * 1000, judge=judge, match=match, check=check)
        if bar is not None:
            progress.update(bar, advance=1)
        return result

    try:
        if concurrency <= 1:
            return [one(s) for s in steps]
        with ThreadPoolExecutor(max_workers=concurrency) as pool:  # the local model batches concurrent calls
            return list(pool.map(one, steps))
    finally:
        if progress is not None:
            progress.stop()


def _rate(outcomes: list[bool]) -> dict[str, Any]:
    n = len(outcomes)
    return {"n": n, "agree": sum(outcomes), "rate": sum(outcomes) / n if n else None,
            "ci95": list(bootstrap_ci(outcomes)) if n else None}


def summarize(steps: list[Step], results: list[StepResult]) -> dict[str, Any]:
    """The figures of one model (see the module docs)."""
    good = [(s, r) for s, r in zip(steps, results) if s.good]
    bad_last = [r.agree for s, r in zip(steps, results) if not s.good and s.last]
    episodes: dict[str, list[bool]] = defaultdict(list)
    per_tool: dict[str, list[bool]] = defaultdict(list)
    for s, r in good:
        episodes[s.episode_id].append(r.agree)
        per_tool[s.recorded.tool_calls[0]["name"] if s.recorded.tool_calls else "(answer in words)"].append(r.agree)
    teacher_tokens = [int((s.recorded_usage or {}).get("output_tokens", 0)) for s, _ in good]
    teacher_latency = [s.recorded_latency_ms for s, _ in good if s.recorded_latency_ms is not None]
    n = max(1, len(good))
    return {
        "step_agreement": _rate([r.agree for _, r in good]),
        "first_call_agreement": _rate([r.agree for s, r in good if s.index == 0]),
        "episode_agreement": _rate([all(v) for v in episodes.values()]),
        "repeats_rejected": _rate(bad_last),
        "invalid_call_rate": sum(r.invalid for _, r in good) / n,
        "escalation_rate": sum(r.escalates for _, r in good) / n,
        "per_tool": {tool: _rate(v) for tool, v in sorted(per_tool.items())},
        "prompt_tokens_per_step": sum(r.prompt_tokens for _, r in good) / n,
        "completion_tokens_per_step": sum(r.completion_tokens for _, r in good) / n,
        "latency_ms_per_step": sum(r.latency_ms for _, r in good) / n,
        "recorded_completion_tokens_per_step": sum(teacher_tokens) / n,
        "recorded_latency_ms_per_step": sum(teacher_latency) / max(1, len(teacher_latency)),
    }


def evaluate_traffic(store: TraceStore, models: dict[str, str], *, out_dir: str | Path,
                     test_fraction: float = DEFAULT_TEST_FRACTION, judge: str | None = None,
                     match: StringMatch | None = None, unlabelled: str = "skip", loaded: dict[str, Any] | None = None,
                     concurrency: int | None = None, progress: Any = None) -> dict[str, Any]:
    """Evaluate `models` ({name: spec}, `recorded` for the recorded replies) on the held-out traffic of
    `store`; writes `results.json`, `report.md` and `agreement.png` into `out_dir`, returns the report."""
    from fcagent.models.spec import ModelSpec

    out = Path(out_dir)
    (out / "results").mkdir(parents=True, exist_ok=True)
    steps = heldout_steps(store, test_fraction=test_fraction, unlabelled=unlabelled)
    if not [s for s in steps if s.good]:
        raise UserError(f"{store.location} has no held-out episode labelled good at test fraction {test_fraction:g} "
                        "(label episodes with `fcagent traces label` or feedback; a larger --test-fraction holds "
                        "out more)")
    judge_fn, match = load_judge(judge), match or StringMatch()
    ids = [s.completion_id for s in steps]
    per_model: dict[str, list[StepResult]] = {}
    for name, spec in models.items():
        cache = out / "results" / f"{name}.jsonl"
        key = {"spec": spec, "steps": ids, "judge": judge or "default", "match": match.model_dump()}
        key_file = cache.with_suffix(".key.json")
        if cache.exists() and key_file.exists() and json.loads(key_file.read_text()) == key:
            per_model[name] = [StepResult.model_validate_json(line) for line in cache.read_text().splitlines()]
            continue
        model = None if spec == RECORDED else (loaded or {}).get(name) or ModelSpec.parse(spec).load()
        workers = concurrency or (getattr(model, "max_batch_rows", 1) if model is not None else 1)
        results = _run(model, steps, judge=judge_fn, match=match, concurrency=workers, progress=progress, label=name)
        cache.write_text("".join(r.model_dump_json() + "\n" for r in results))
        key_file.write_text(json.dumps(key))
        per_model[name] = results
    good = [i for i, s in enumerate(steps) if s.good]
    tests = {f"{a} vs {b}": mcnemar_exact([per_model[a][i].agree for i in good], [per_model[b][i].agree for i in good])
             for a, b in combinations(per_model, 2)}
    report = {"store": store.name, "test_fraction": test_fraction, "judge": judge or "default",
              "steps": len(steps), "good_steps": len(good), "bad_episodes": len({s.episode_id for s in steps if not s.good}),
              "episodes": sorted({s.episode_id for s in steps}),
              "models": {name: {"spec": models[name], **summarize(steps, rs)} for name, rs in per_model.items()},
              "mcnemar": tests}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    write_traffic_report(report, out)
    return report


def _pct(rate: dict[str, Any]) -> str:
    if not rate or rate.get("rate") is None:
        return "–"
    lo, hi = rate["ci95"]
    return f"{rate['agree']}/{rate['n']} = {rate['rate']:.0%} ({lo:.0%}–{hi:.0%})"


def write_traffic_report(report: dict[str, Any], out: Path, *, title: str = "Held-out traffic", notes: str = "") -> None:
    """`report.md` (tables a person reads) and `agreement.png`."""
    lines = [f"# {title}", "",
             f"Store `{report['store']}`: {report['good_steps']} model calls of held-out episodes labelled good "
             f"({len(report['episodes'])} episodes in all, {report['bad_episodes']} labelled bad; test fraction "
             f"{report['test_fraction']:g}; answers in words judged by `{report['judge']}`).", ""]
    if notes:
        lines += [notes, ""]
    lines += ["| model | step agreement (95% CI) | first call | whole episode | repeats a rejected reply | invalid calls "
              "| would escalate | tokens/step (recorded) |", "|---|---|---|---|---|---|---|---|"]
    for name, m in report["models"].items():
        lines.append(f"| {name} | {_pct(m['step_agreement'])} | {_pct(m['first_call_agreement'])} | "
                     f"{_pct(m['episode_agreement'])} | {_pct(m['repeats_rejected'])} | {m['invalid_call_rate']:.0%} | "
                     f"{m['escalation_rate']:.0%} | {m['completion_tokens_per_step']:.0f} "
                     f"({m['recorded_completion_tokens_per_step']:.0f}) |")
    lines += ["", "Per tool (the recorded reply's first call), step agreement:", "",
              "| tool | " + " | ".join(report["models"]) + " |", "|---|" + "---|" * len(report["models"])]
    tools = sorted({t for m in report["models"].values() for t in m["per_tool"]})
    for tool in tools:
        lines.append(f"| {tool} | " + " | ".join(_pct(m["per_tool"].get(tool, {})) for m in report["models"].values())
                     + " |")
    if report["mcnemar"]:
        lines += ["", "McNemar's exact test on the steps of good episodes:", ""]
        lines += [f"- {pair}: {t['only_a']} vs {t['only_b']} discordant, p = {t['p_value']:.3g}"
                  for pair, t in report["mcnemar"].items()]
    lines += ["", "![step agreement](agreement.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    _plot(report, out / "agreement.png")


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["models"])
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(names) + 1.5), 3.2))
    for i, name in enumerate(names):
        rate = report["models"][name]["step_agreement"]
        value = rate["rate"] or 0.0
        lo, hi = rate["ci95"] or (value, value)
        ax.bar(i, value, color="#4c72b0")
        ax.errorbar(i, value, yerr=[[value - lo], [hi - value]], color="black", capsize=4)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("step agreement")
    ax.set_title(f"{report['good_steps']} held-out steps", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def shadow_report(store: TraceStore, *, out_dir: str | Path) -> dict[str, Any]:
    """The agreement of live traffic: every request the teacher answered in shadow mode, compared with the
    student's reply to it (`fcagent.routing.shadow`); writes `results.json` and `report.md`."""
    from fcagent.routing.shadow import SHADOW_EPISODE

    agrees, escalates, per_tool, latency = [], [], defaultdict(list), []
    students = set()
    for trace in store.traces(status="complete"):
        if trace.episode.name != SHADOW_EPISODE or "shadow" not in trace.episode.outputs:
            continue
        comparison = trace.episode.outputs["shadow"]
        teacher, student = trace.completions[0], trace.completions[-1]
        students.add(student.model)
        agrees.append(bool(comparison["agrees"]))
        escalates.append(bool(comparison["escalates"]))
        calls = teacher.candidates[0].message.tool_calls if teacher.candidates else []
        per_tool[calls[0]["name"] if calls else "(answer in words)"].append(bool(comparison["agrees"]))
        if student.latency_ms is not None:
            latency.append(student.latency_ms)
    if not agrees:
        raise UserError(f"{store.location} holds no shadowed request (StudentMiddleware(mode='shadow') or "
                        "`fcagent serve --shadow` record them)")
    report = {"store": store.name, "requests": len(agrees), "students": sorted(s for s in students if s),
              "agreement": _rate(agrees), "escalation_rate": sum(escalates) / len(escalates),
              "per_tool": {tool: _rate(v) for tool, v in sorted(per_tool.items())},
              "student_latency_ms_per_request": sum(latency) / max(1, len(latency))}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    lines = ["# Shadow traffic", "", f"Store `{report['store']}`: {report['requests']} requests the teacher answered, "
             f"each also answered by the student ({', '.join(report['students'])}) off the request path.", "",
             f"- agreement with the teacher: {_pct(report['agreement'])}",
             f"- would have escalated: {report['escalation_rate']:.0%}",
             f"- student latency per request: {report['student_latency_ms_per_request']:.0f} ms", "",
             "| teacher's call | agreement |", "|---|---|",
             *[f"| {tool} | {_pct(r)} |" for tool, r in report["per_tool"].items()], ""]
    (out / "report.md").write_text("\n".join(lines))
    return report
