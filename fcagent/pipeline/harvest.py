"""`harvest`: run a teacher over a task split, K candidates per step, everything into the store.

Resumable: each episode is written in one transaction when it ends, so a killed harvest leaves
only complete episodes, and `resume=True` skips the problems already complete for this teacher.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from fcagent.core import keys
from fcagent.core.errors import RunFailure
from fcagent.models.spec import ModelSpec
from fcagent.pipeline.runner import run_problems, with_sampling
from fcagent.tasks import get_task
from fcagent.tracing.recorder import TraceRecorder
from fcagent.tracing.store import TraceStore, open_store

__all__ = ["harvest"]


def harvest(*, task: str, teacher: str = "reference", samples: int = 1, temperature: float | None = None,
            limit: int | None = None, split: str = "train", store: str | Path | TraceStore = "fcagent-traces.db",
            resume: bool = False, concurrency: int = 1, protocol: str = "auto", data_dir: str | Path | None = None,
            role: str = "teacher", progress: Any = None, model: Any = None) -> dict[str, Any]:
    """Harvest traces; returns a summary (problems run, skipped, solved)."""
    t = get_task(task, data_dir=data_dir)
    problems = t.load(split=split, limit=limit)
    if teacher == "reference" and model is None:  # the reference teacher can only replay gold chains
        problems = [p for p in problems if p.gold_chain is not None]
    trace_store = open_store(store)
    # A store opened here is closed here: its writes are on disk and its WAL folded into the file.
    with contextlib.closing(trace_store) if not isinstance(store, TraceStore) else contextlib.nullcontext():
        skipped = 0
        if resume:
            done = trace_store.completed_problems(task=t.name, model=teacher)
            skipped = sum(p.id in done for p in problems)
            problems = [p for p in problems if p.id not in done]
        chat = model if model is not None else ModelSpec.parse(teacher).for_task(t).load(problems)
        chat = with_sampling(chat, samples=samples, temperature=temperature if samples > 1 else None)
        solved = 0
        bar = None
        if progress is not None:
            progress.start()
            bar = progress.add_task(f"harvest {t.spec}", total=len(problems), status="")

        def tick(problem, result) -> None:
            nonlocal solved
            solved += result.success
            if bar is not None:
                progress.update(bar, advance=1, status=f"solved {solved}")

        metadata = {keys.MODEL: teacher, keys.ROLE: role, keys.SAMPLES: samples}
        recorder = TraceRecorder(trace_store, on_write_error="report", **metadata)
        try:
            run_problems(chat, t, problems, protocol=protocol, concurrency=concurrency, metadata=metadata,
                         on_result=tick, recorder=recorder, dedupe=resume)
        finally:
            if progress is not None:
                progress.stop()
        summary = {"task": t.spec, "teacher": teacher, "split": split, "ran": len(problems), "skipped": skipped,
                   "solved": solved, "stored": recorder.episodes_written, "already_stored": recorder.episodes_present,
                   "store": trace_store.location}
        if recorder.write_errors:
            shown = "; ".join(str(e) for e in recorder.write_errors[:3])
            raise RunFailure(f"{len(recorder.write_errors)} of {len(problems)} episodes were NOT stored in "
                             f"{trace_store.location} ({shown}{' ...' if len(recorder.write_errors) > 3 else ''}); "
                             f"{recorder.episodes_written} were. Run again with --resume once the cause is fixed.",
                             evidence=summary)
        return summary
