"""The exporter: labelled traces become DPO preference pairs and SFT rows in TRL's formats.

Every candidate completion is judged from its labels, its episode's verdict and its own structure,
under one documented policy (`ExportSettings`):

* **step labels win** — a label on the model call itself (a tool error, a schema error, the graph's
  parse error, a user's or replay's verdict on that call) decides it;
* **structure** — a parse error (text protocol only: there every reply must be a call), an unknown
  function or schema-invalid arguments make a candidate bad whatever its episode's verdict;
* **the episode's verdict flows down** — the newest label on the episode (the task verifier, a
  user's thumbs up/down from `fcagent traces label`, LangSmith feedback) decides its calls: in an
  episode labelled good every call without a step error is good (SFT rows, chosen sides); in an
  episode labelled bad the *decisive* reply, its last one (the final answer), is bad, and every
  earlier step is **diverged**: bad only where an episode labelled good made a *different* call from
  the identical context (the first divergence);
* **unlabelled episodes** are skipped (`unlabelled="skip"`, the default) or taken as good
  (`unlabelled="good"`, for users who treat unflagged production runs as fine); `stats.*.json`
  counts both;
* **unknown** — anything else (e.g. another valid call sampled beside the executed one); and a reply
  judged both good and bad (two users disagreeing on the same answer) is dropped from both sides.

Candidates are grouped by their context (messages + tools, hashed after canonicalisation), so a pair
always shares one prompt. Three pair sources, named by where the rejected side comes from:

* ``step`` — the rejected candidate is invalid (a sibling sample, or another episode's step);
* ``trajectory`` — the paper's unit, a successful chain vs a failed one of the same problem, anchored
  at the step where they diverge: the prompt is everything they share (the question, the common calls
  and their observations), chosen and rejected are the diverging assistant turns. Observations after
  that point are tool output, not model output; TRL's DPO trains on every token after the prompt, so
  putting later turns with their observations into chosen/rejected would teach the model to write tool
  results. The later steps of the good chain are contexts of their own (SFT rows, and pairs where a
  failure shares them);
* ``teacher_student`` — the rejected candidate is the student's own output, replayed on a teacher's
  context (`fcagent replay`) or escalated by `StudentMiddleware`.

Rows are written in the *student view*: exactly the messages `LocalChatModel` renders at inference
(tools described in the system prompt, tool results as `Observation:` user turns), so the prompt TRL
trains on is the prompt the student will see; and no prompt ends with a `tool` message (TRL's chat
template handling fails for some templates there). A `tools` column (JSON) keeps the schemas.
`format="openai"` writes OpenAI's fine-tuning rows from the same judgements instead, the messages as
exchanged (`fcagent.data.openai_format`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from langchain_core.messages import SystemMessage
from pydantic import BaseModel, Field, field_validator

from fcagent.agent.prompting import (
    PromptStyle,
    render_system_prompt,
    restyle,
    to_chat_dicts,
)
from fcagent.core import keys
from fcagent.core.files import remove_stale_temporaries, write_jsonl_atomic
from fcagent.core.records import PairSource, to_langchain
from fcagent.data.judging import Judgement, candidate_identity, judge, reply_text
from fcagent.data.layout import ExportFormat, ExportKind, ExportLayout
from fcagent.data.openai_format import chat_row, preference_row
from fcagent.data.rows import ExportError, PreferencePair, SftRow
from fcagent.data.split import DEFAULT_TEST_FRACTION, split_of_row
from fcagent.tracing.redact import Redactor
from fcagent.tracing.store import TraceStore, open_store
from fcagent.tracing.store.rows import CallRow

__all__ = ["ExportSettings", "ExportResult", "export_preference_pairs", "export_sft"]


class ExportSettings(BaseModel):
    level: Literal["step", "trajectory", "both"] = Field("both", description="Which pair sources besides teacher_student.")
    teacher_student: bool = Field(True, description="Include teacher-vs-student pairs.")
    task: str | None = Field(None, description="Only this task family.")
    exclude_splits: tuple[str, ...] = Field(("test",), description="Splits whose problems never appear in exports.")
    test_fraction: float = Field(DEFAULT_TEST_FRACTION, ge=0.0, lt=1.0, description="Recorded traffic of a user's "
                                 "own agent: the share of requests held out for evaluation (`fcagent.data.split`).")
    unlabelled: Literal["skip", "good"] = Field(
        "skip", description="Episodes nobody labelled: `skip` their calls, or take them as `good` (for production "
        "traffic where only bad runs get flagged).")
    sft_rows: Literal["chain", "step"] = Field(
        "chain", description="SFT rows: one per episode whose every step is good (loss on every assistant turn; "
        "far fewer tokens than a row per step), the good steps of other episodes as rows of their own; "
        "or `step`: a row per good model call.")
    prompt_style: PromptStyle = Field(
        PromptStyle.EXAMPLES, description="The system prompt the rows carry: `examples`, as the teacher saw it, or "
        "re-rendered in the `compact` student style (fcagent's text protocol records the prompt's parts for this; "
        "native calls get the tools the way LocalChatModel renders them).")
    max_pairs_per_context: int = Field(4, ge=1)
    max_pairs_per_problem: int = Field(16, ge=1)
    seed: int = 0
    redact: bool = True
    format: ExportFormat = Field(ExportFormat.TRL, description="`trl`: TRL's conversational rows in the student "
                                 "view; `openai`: OpenAI's fine-tuning JSONL, the messages as exchanged "
                                 "(`fcagent.data.openai_format`).")


    @field_validator("prompt_style", mode="before")
    @classmethod
    def _legacy_as_recorded(cls, value: Any) -> Any:
        return PromptStyle.EXAMPLES if value == "as_recorded" else value  # the name of exports before the enum


class ExportResult(BaseModel):
    path: Path | None = None
    rows: int = 0
    stats: dict[str, Any] = Field(default_factory=dict)


def _groups(store: TraceStore, settings: ExportSettings, dropped: Counter) -> Iterator[list[CallRow]]:
    """Completions grouped by context, streamed from the store in context order (flat memory)."""
    group: list[CallRow] = []
    for row in store.calls_by_context(task=settings.task):
        split = split_of_row(row.split, row.problem_id, row.request_key, settings.test_fraction)
        if split in settings.exclude_splits:
            dropped[f"{split} split (never exported)"] += 1
            continue
        if group and group[0].context_hash != row.context_hash:
            yield group
            group = []
        group.append(row)
    if group:
        yield group


def _student_view(row: CallRow, store: TraceStore, style: PromptStyle = PromptStyle.EXAMPLES,
                  reply: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The messages of a model call as the student sees them at inference (`LocalChatModel.render`),
    its reply appended when given; every earlier assistant turn is marked `train: false` (a row per
    step trains only its last turn)."""
    (stored,) = store.messages_of([row])
    messages = [to_langchain(m) for m in stored]
    if reply is not None:
        messages.append(to_langchain(reply))
    tools = json.loads(row.tools)
    if row.protocol == "text":
        messages = restyle(messages, json.loads(row.prompt) if row.prompt else None, tools, style)
    elif tools:  # what LocalChatModel.render puts in front of native calls
        messages = [SystemMessage(render_system_prompt(tools, style=style)), *messages]
    dicts = to_chat_dicts(messages)
    return [{**m, "train": False} if m["role"] == "assistant" else m for m in dicts]


def _chain_rows(store: TraceStore, settings: ExportSettings, good_calls: set[str]) -> Iterator[SftRow]:
    """Whole-chain SFT rows: an episode whose every executed reply is good becomes one conversation that
    trains every assistant turn; the good replies of any other episode become rows of their own."""
    episode: list[CallRow] = []
    for row in store.calls_by_episode(task=settings.task):
        split = split_of_row(row.split, row.problem_id, row.request_key, settings.test_fraction)
        if split in settings.exclude_splits:
            continue
        if episode and episode[0].episode_id != row.episode_id:
            yield from _episode_rows(episode, store, settings, good_calls)
            episode = []
        episode.append(row)
    if episode:
        yield from _episode_rows(episode, store, settings, good_calls)


def _episode_rows(calls: list[CallRow], store: TraceStore, settings: ExportSettings,
                  good_calls: set[str]) -> Iterator[SftRow]:
    whole = all(c.id in good_calls for c in calls)
    for c in calls if not whole else calls[-1:]:
        if c.id not in good_calls:
            continue
        reply = json.loads(c.candidates)[0]["message"]
        if settings.format is ExportFormat.OPENAI:
            yield chat_row(store.messages_of([c])[0], reply, c.tools, every_turn=whole, task=c.task,
                           problem_id=c.problem_id, context_hash=c.context_hash)
            continue
        messages = _student_view(c, store, settings.prompt_style, reply=reply)
        yield SftRow(messages=_trainable(messages, every_turn=whole), tools=c.tools, task=c.task,
                     problem_id=c.problem_id, context_hash=c.context_hash)


def _text_of(message: dict[str, Any]) -> str:
    """What a message says, for length statistics: its text, or its calls (an OpenAI reply may have no text)."""
    return message.get("content") or json.dumps(message.get("tool_calls") or "", ensure_ascii=False)


def _trainable(messages: list[dict[str, Any]], *, every_turn: bool) -> list[dict[str, Any]]:
    """Mark the assistant turns SFT trains on: every one (a whole chain) or only the last (a step)."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return [{**m, "train": every_turn or i == last} if m["role"] == "assistant" else m for i, m in enumerate(messages)]


@dataclass(slots=True)
class _Bad:
    """A reply judged bad, and where it came from."""

    source: PairSource
    judgement: Judgement
    text: str
    row: CallRow
    message: dict[str, Any]  # the reply's record (OpenAI rows keep its native calls)


def _pairs_for_group(group: list[CallRow], settings: ExportSettings, reasons: Counter,
                     dropped: Counter, store: TraceStore,
                     good_calls: set[str] | None = None) -> tuple[list[BaseModel], list[BaseModel]]:
    good: dict[str, tuple[str, CallRow, dict[str, Any]]] = {}
    bad: dict[str, _Bad] = {}
    diverged: list[tuple[str, str, Judgement, CallRow, dict[str, Any]]] = []
    executed: list[tuple[str, str]] = []  # (model call id, its executed reply's identity), judged good
    for row in group:
        candidates = json.loads(row.candidates)
        student = row.role in keys.STUDENT_ROLES
        for i, (cand, judged) in enumerate(zip(candidates, judge(row, unlabelled_good=settings.unlabelled == "good"))):
            key = candidate_identity(cand)
            if judged.verdict == "good":
                good.setdefault(key, (reply_text(cand), row, cand["message"]))
                if i == 0:
                    executed.append((row.id, key))
            elif judged.verdict == "bad":
                bad.setdefault(key, _Bad(source=PairSource.TEACHER_STUDENT if student else PairSource.STEP, judgement=judged,
                                         text=reply_text(cand), row=row, message=cand["message"]))
            elif judged.verdict == "diverged":
                diverged.append((key, reply_text(cand), judged, row, cand["message"]))
            else:
                dropped["candidate without a usable label"] += 1
    for key in set(good) & set(bad):  # two verdicts on the same reply (e.g. two users disagreeing)
        del good[key], bad[key]
        dropped["reply judged both good and bad"] += 1
    if good_calls is not None:  # the model calls whose executed reply is good (whole-chain SFT rows)
        good_calls.update(call_id for call_id, key in executed if key in good)
    # Where a good answer makes no call (BFCL irrelevance: "none of the functions applies"), a
    # reply in words is not a parse failure; only calls are wrong there.
    if any(not k.startswith("[[") for k in good):
        for key in [k for k, v in bad.items() if v.judgement.kind in ("parse_error", "no_call")]:
            del bad[key]
            dropped["reply in words where words are right"] += 1
    for key, text, judged, row, message in diverged:
        if key not in good and key not in bad and good:  # differs from a successful chain's step here
            source = PairSource.TEACHER_STUDENT if row.role in keys.STUDENT_ROLES else PairSource.TRAJECTORY
            bad[key] = _Bad(source=source, text=text, row=row, message=message,
                            judgement=Judgement(verdict="bad", reason="diverges from a successful chain"))
    base = group[0]
    tools_json = base.tools
    openai = settings.format is ExportFormat.OPENAI
    sft: list[BaseModel] = []
    prompt = None
    if good and openai:
        prompt = store.messages_of([base])[0]  # the messages as exchanged, not the student view
        sft = [chat_row(prompt, message, tools_json, every_turn=False, task=row.task, problem_id=row.problem_id,
                        context_hash=base.context_hash) for _, row, message in good.values()]
    elif good:
        prompt = [{k: v for k, v in m.items() if k != "train"} for m in _student_view(base, store, settings.prompt_style)]
        sft = [SftRow(messages=_trainable([*prompt, {"role": "assistant", "content": text}], every_turn=False),
                      tools=tools_json, task=row.task, problem_id=row.problem_id,
                      context_hash=base.context_hash)
               for text, row, _ in good.values()]
    pairs: list[BaseModel] = []
    wanted = {"step": settings.level in ("step", "both"), "trajectory": settings.level in ("trajectory", "both"),
              "teacher_student": settings.teacher_student}
    for item in bad.values():
        if not good:
            dropped["bad candidate with no good one in its context"] += 1
            continue
        if not wanted[item.source]:
            dropped[f"{item.source} pairs not requested"] += 1
            continue
        for chosen_text, good_row, chosen_message in good.values():
            if len(pairs) >= settings.max_pairs_per_context:
                dropped["over the per-context cap"] += 1
                break
            if openai:
                pairs.append(preference_row(prompt or [], chosen_message, item.message, tools_json, source=item.source,
                                            task=good_row.task, problem_id=good_row.problem_id,
                                            context_hash=base.context_hash))
                reasons[item.judgement.kind or item.judgement.reason] += 1
                continue
            pairs.append(PreferencePair(
                prompt=prompt, chosen=[{"role": "assistant", "content": chosen_text}],
                rejected=[{"role": "assistant", "content": item.text}], tools=tools_json, source=item.source,
                task=good_row.task, problem_id=good_row.problem_id, context_hash=base.context_hash,
                rejected_reason=item.judgement.reason, rejected_kind=item.judgement.kind))
            reasons[item.judgement.kind or item.judgement.reason] += 1
    return pairs, sft


# --- writing -------------------------------------------------------------------------------------


def _shuffled(spool: Path, seed: int) -> Iterator[dict[str, Any]]:
    """Rows of a spool file in a seeded random order, holding only their offsets in memory."""
    offsets = []
    with spool.open("rb") as f:
        pos = 0
        for line in f:
            offsets.append(pos)
            pos += len(line)
    random.Random(seed).shuffle(offsets)
    with spool.open("rb") as f:
        for off in offsets:
            f.seek(off)
            yield json.loads(f.readline())


_LABEL_HOWTO = ("label episodes with `fcagent traces label ID --good/--bad` (an id prefix is enough; "
                "`--file feedback.jsonl` for many), `store.label(id, success, reason)`, LangSmith feedback "
                "(`traces import-langsmith`) or `StudentMiddleware` escalations")


def _unlabelled_message(store: TraceStore) -> str:
    stats = store.stats()
    return (f"{store.location} has {stats['episodes']} episodes and {stats['unlabelled_episodes']} of them have no "
            f"label, so no reply can be judged good or bad. For your own agent: {_LABEL_HOWTO}; or export with "
            "`--unlabelled good` to take unflagged episodes as good. fcagent's task suites label their own "
            "episodes (`fcagent harvest`).")


def _no_rows_message(store: TraceStore, kind: str, dropped: Counter) -> str:
    why = ", ".join(f"{k}: {v}" for k, v in dropped.most_common()) or "no labelled replies"
    if kind == "sft":
        return (f"no SFT rows from {store.location} ({why}): SFT rows are the replies of episodes labelled good; "
                f"{_LABEL_HOWTO}.")
    return (f"no DPO pairs from {store.location} ({why}). A pair needs a good and a bad reply to the same context: "
            "for your own agent, the same request answered in an episode labelled good and in one labelled bad "
            "(repeated requests, retries, A/B runs), or a `StudentMiddleware` escalation (the student's failed "
            "reply vs the teacher's); for fcagent's task suites, `fcagent harvest --samples 4` or "
            "`fcagent replay`. SFT rows need only good episodes: `--kind sft`.")


def _export(store: Any, out: str | os.PathLike[str] | None, kind: ExportKind, settings: ExportSettings,
            tokenizer: Any = None) -> ExportResult:
    if settings.format is ExportFormat.OPENAI and settings.prompt_style is not PromptStyle.EXAMPLES:
        raise ExportError("`prompt_style` re-renders TRL's student view; OpenAI rows keep the prompt as recorded "
                          "(OpenAI's trainer renders `tools` itself): drop it, or export `--format trl`")
    trace_store = open_store(store)
    if trace_store.count() == 0:
        raise ExportError(f"{trace_store.location} has no episodes: run `fcagent harvest` first")
    redactor = Redactor() if settings.redact else None
    reasons: Counter = Counter()
    dropped: Counter = Counter()
    by_source: Counter = Counter()
    by_task: Counter = Counter()
    per_problem: Counter = Counter()
    lengths: dict[str, list[int]] = {"prompt": [], "completion": []}
    seen: set[bytes] = set()
    out_dir = Path(out) if out else Path(tempfile.mkdtemp(prefix="fcagent-export-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    layout = ExportLayout(out_dir)
    n = 0

    def measure(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if tokenizer is not None else len(text)

    # A spool of its own (two exports into one folder must not share one), removed whatever happens; one a
    # killed export left behind is removed by the next.
    remove_stale_temporaries(out_dir, f".{kind.value}.")
    fd, spool_name = tempfile.mkstemp(dir=out_dir, prefix=f".{kind.value}.{os.getpid()}.", suffix=".spool")
    os.close(fd)
    spool = Path(spool_name)
    try:
        with spool.open("w", encoding="utf-8") as f:

            def emit(row: Any) -> None:
                nonlocal n
                data = row.model_dump()
                if redactor is not None:  # every field: messages, tool arguments, reasons, ids alike
                    data = redactor.redact_value(data)
                prompt_msgs, chosen, rejected = row.sides(data)
                identity = json.dumps([prompt_msgs, chosen, rejected], sort_keys=True)
                # A digest, not the row: the dedup set then costs ~100 bytes a row (flat memory).
                digest = hashlib.blake2b(identity.encode(), digest_size=16).digest()
                if digest in seen:
                    dropped["duplicate"] += 1
                    return
                # Provenance from the row (OpenAI rows do not write it): the caps and counts go by it.
                problem = f"{row.task}:{row.problem_id}"
                if row.problem_id and per_problem[problem] >= settings.max_pairs_per_problem:
                    dropped["over the per-problem cap"] += 1
                    return
                if rejected is not None and chosen == rejected:
                    # They differed only inside a secret or PII (one email for another): redacted, the pair
                    # teaches nothing, and unredacted it would leak.
                    dropped["identical after redaction"] += 1
                    return
                row.check(data, where=f"{'pair' if kind == 'dpo' else 'row'} for context {row.context_hash}")
                seen.add(digest)
                per_problem[problem] += 1
                by_source[str(getattr(row, "source", None) or "sft")] += 1
                by_task[row.task or "-"] += 1
                lengths["prompt"].append(measure("".join(_text_of(m) for m in prompt_msgs)))
                lengths["completion"].append(measure(_text_of(chosen[0])))
                f.write(json.dumps(data, ensure_ascii=False) + "\n")
                n += 1

            chains = kind == "sft" and settings.sft_rows == "chain"
            good_calls: set[str] | None = set() if chains else None
            for group in _groups(trace_store, settings, dropped):
                pairs, sft = _pairs_for_group(group, settings, reasons, dropped, trace_store, good_calls)
                for row in pairs if kind == "dpo" else ([] if chains else sft):
                    emit(row)
            if chains:
                for row in _chain_rows(trace_store, settings, good_calls or set()):
                    emit(row)
        seen.clear()
        if n == 0:
            stats = trace_store.stats()
            if settings.unlabelled == "skip" and (stats["labels"] == 0 or stats["unlabelled_episodes"] == stats["episodes"]):
                raise ExportError(_unlabelled_message(trace_store))
            raise ExportError(_no_rows_message(trace_store, kind, dropped))
        path = layout.rows(kind, settings.format)
        write_jsonl_atomic(path, _shuffled(spool, settings.seed))
    finally:
        spool.unlink(missing_ok=True)

    def summary(values: list[int]) -> dict[str, float]:
        if not values:
            return {}
        s = sorted(values)
        return {"mean": round(sum(s) / len(s), 1), "p50": s[len(s) // 2], "max": s[-1]}

    stats = {"kind": kind.value, "rows": n, "by_source": dict(by_source), "by_task": dict(by_task),
             "rejected_reasons": dict(reasons), "dropped": dict(dropped),
             "episodes": trace_store.verdict_counts(unlabelled=settings.unlabelled),
             "length_unit": "tokens" if tokenizer is not None else "characters",
             "prompt_length": summary(lengths["prompt"]), "completion_length": summary(lengths["completion"]),
             "settings": settings.model_dump(mode="json"), "store": trace_store.location}
    if redactor is not None:
        stats = redactor.redact_value(stats)  # rejected reasons quote tool errors, which may quote secrets
        stats["redacted"] = dict(redactor.counts)
    write_jsonl_atomic(layout.stats(kind, settings.format), iter([stats]))  # one line: a plain JSON object
    return ExportResult(path=path, rows=n, stats=stats)


def export_preference_pairs(store: Any, out: str | os.PathLike[str] | None = None, *, tokenizer: Any = None,
                            **settings: Any) -> ExportResult:
    """DPO pairs from a store into `out/pairs.jsonl` (+ `stats.dpo.json`); see the module docs."""
    return _export(store, out, ExportKind.DPO, ExportSettings(**settings), tokenizer)


def export_sft(store: Any, out: str | os.PathLike[str] | None = None, *, tokenizer: Any = None,
               **settings: Any) -> ExportResult:
    """SFT rows (TRL's conversational `messages` format) of the good completions into `out/sft.jsonl`."""
    return _export(store, out, ExportKind.SFT, ExportSettings(**settings), tokenizer)


