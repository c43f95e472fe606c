"""`fcagent replay`: the student answers the teacher's good contexts; its failures become negatives.

For every context where the teacher's step was good (an accepted episode), the student samples K
candidates from that exact context (one shared prompt pass). Each candidate is labelled: invalid
(parse error, unknown function, schema-invalid) → bad; for tasks whose calls are checked rather
than run (BFCL) the task's checker decides; otherwise the same call as the teacher → good, another
call → bad ("diverges from the reference"). The exporter turns these into teacher-vs-student pairs.

`steps="final"` replays only each teacher episode's last model call (the one that gave the answer):
where the student already follows the procedure and errs only in its conclusion (ProntoQA's SFT
student: every intermediate call the teacher's, the answer a constant), the other steps' samples all
match the teacher and sampling them is wasted time.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel

from fcagent.agent.prompting import restyle
from fcagent.core import keys
from fcagent.core.calls import Call
from fcagent.core.errors import UserError
from fcagent.core.records import LabelSource, to_langchain
from fcagent.data.judging import candidate_identity, structural_error
from fcagent.tasks import get_task
from fcagent.tracing.recorder import TraceRecorder
from fcagent.tracing.store import TraceStore, open_store

__all__ = ["replay", "REPLAY_ROLE"]

REPLAY_ROLE = keys.Role.STUDENT_REPLAY.value

def replay(store: str | TraceStore, student: BaseChatModel, *, student_name: str, task: str | None = None,
           samples: int = 4, temperature: float = 0.8, limit: int | None = None,
           steps: Literal["every", "final"] = "every", seed: int | None = None, data_dir: Any = None,
           progress: Any = None) -> dict[str, Any]:
    """Sample `samples` candidates from the student on each good teacher context (`steps`: every model
    call, or each episode's last) and label them. `seed` makes the sampling reproducible (context k
    samples with seed + k); None leaves it to torch's global generator."""
    if steps not in ("every", "final"):
        raise UserError(f"`steps` must be every or final, got {steps!r}")
    trace_store = open_store(store)
    checker = get_task(task, data_dir=data_dir) if task else None
    problems = {p.id: p for p in checker.load()} if checker is not None and not checker.execute else {}
    family = task.split(":")[0] if task else None
    rows = trace_store.good_teacher_calls(task=family)
    if steps == "final":
        last = {r.episode_id: r.id for r in rows}  # rows come in episode order, calls in sequence
        rows = [r for r in rows if last[r.episode_id] == r.id]
    done = trace_store.contexts_answered_by(student_name, REPLAY_ROLE)
    unique, seen = [], set()
    for r in rows:
        if r.context_hash not in seen:
            seen.add(r.context_hash)
            unique.append(r)
    # k, the context's place among all of them, seeds its sampling: a resumed replay samples as an unbroken one
    contexts = [(k, r) for k, r in enumerate(unique) if r.context_hash not in done]
    contexts = contexts[:limit] if limit else contexts
    recorder = TraceRecorder(trace_store)
    bar = None
    if progress is not None:
        progress.start()
        bar = progress.add_task("replay student", total=len(contexts), status="")
    good = bad = 0
    try:
        for (k, ctx), stored in zip(contexts, trace_store.messages_of([ctx for _, ctx in contexts])):
            messages = [to_langchain(m) for m in stored]
            tools = json.loads(ctx.tools)
            teacher_candidate = json.loads(ctx.candidates)[0]
            meta = {keys.ROLE: REPLAY_ROLE, keys.MODEL: student_name, keys.PROTOCOL: ctx.protocol,
                    keys.PROBLEM_ID: ctx.problem_id, keys.TASK: ctx.task,
                    keys.SPLIT: ctx.split, keys.REPLAYED: ctx.id}
            parts = json.loads(ctx.prompt) if ctx.prompt else None
            if parts:  # the student answers in the prompt style it was trained with; the context stays one
                style = getattr(student, "prompt_style", "examples")
                messages = restyle(messages, parts, tools, style)
                meta[keys.PROMPT] = {**parts, "style": style if style == "compact" else parts.get("style", "examples")}
            kwargs: dict[str, Any] = {"n": samples, "temperature": temperature}
            if seed is not None:
                kwargs["seed"] = seed + k
            if ctx.protocol == "native" and tools:
                kwargs["tools"] = tools
            else:
                meta[keys.TOOLS] = tools
            result = student.generate([messages], callbacks=[recorder], metadata=meta, **kwargs)
            run_id = str(result.run[0].run_id) if result.run else None
            completion = trace_store.trace(recorder.last_episode_id).completions[0]
            assert run_id is None or completion.id == run_id
            for i, cand in enumerate(completion.candidates):
                data = cand.model_dump()
                error = structural_error(data, tools, ctx.protocol)
                kind = error.kind if error is not None else None
                if error is None and ctx.problem_id in problems:
                    calls = [Call(name=c["name"], args=c.get("args", {})) for c in data.get("calls") or []]
                    verdict = checker.verify(problems[ctx.problem_id], final_answer=None, calls=calls)
                    ok, why = verdict.success, None if verdict.success else verdict.reason
                elif error is None:
                    ok = candidate_identity(data) == candidate_identity(teacher_candidate)
                    why = None if ok else "diverges from the reference"
                else:
                    ok, why = False, str(error)
                trace_store.label(completion.id, ok, why or "matches the teacher", LabelSource.REPLAY, candidate=i,
                                  kind=kind)
                good += ok
                bad += not ok
            if bar is not None:
                progress.update(bar, advance=1, status=f"good {good} bad {bad}")
    finally:
        if progress is not None:
            progress.stop()
    return {"contexts": len(contexts), "skipped_already_replayed": len(done), "good": good, "bad": bad}
