"""Moving a store: every episode of one `TraceStore` into another, SQLite ⇄ PostgreSQL (`fcagent traces migrate`).

Episodes stream from the source (a server-side cursor on PostgreSQL) as the rows they are stored as
(every encoded column copied as it is, so the copy reads exactly like the source) and are written in
batches, one transaction each, so a copy of any size holds one batch in memory and a copy stopped part-way keeps the
batches it wrote. Writing is the store's own `write_episodes`: an episode already in the target is left
as it is and its labels are merged, so running the same copy again adds nothing and finishes what a
stopped one began. After each batch the target is asked for every row of it (`TraceStore.missing`), and
at the end the counts of both stores are compared: a copy that lost anything fails, naming it.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel

from fcagent.core.errors import RunFailure, UserError
from fcagent.tracing.store.store import TraceStore

__all__ = ["TransferReport", "copy_store", "TABLES"]

TABLES = ("episodes", "completions", "tool_runs", "labels")


class TransferReport(BaseModel):
    source: str
    target: str
    copied: dict[str, int]  # rows read from the source, by table
    added: int  # episodes new to the target
    present: int  # episodes the target had already (their labels merged in)
    deduplicated: list[str]  # source episodes the target holds under another id (the same `DEDUPE` key)
    source_counts: dict[str, int]
    target_counts: dict[str, int]  # after the copy
    unattached_labels: int  # source labels on no episode or call of the source: not copied (nothing to attach to)


def copy_store(source: TraceStore, target: TraceStore, *, batch: int = 200,
               on_batch: Callable[[int], None] | None = None) -> TransferReport:
    """Copy every episode of `source` into `target` (idempotent); raises `RunFailure` naming what is missing."""
    if batch < 1:
        raise UserError(f"`batch` must be at least 1, got {batch}")
    if source.location == target.location:
        raise UserError(f"`--from` and `--to` are the same store ({source.location})")
    counts = {t: source.count(t) for t in TABLES}
    copied = dict.fromkeys(TABLES, 0)
    added = present = 0
    deduplicated: list[str] = []
    missing: list[str] = []
    for rows in source.episode_rows(batch):
        stored = target.write_rows(rows)
        added += sum(stored)
        present += len(stored) - sum(stored)
        copied["episodes"] += len(rows)
        copied["completions"] += sum(len(r.completions) for r in rows)
        copied["tool_runs"] += sum(len(r.tool_runs) for r in rows)
        copied["labels"] += sum(len(r.labels) for r in rows)
        # An episode the target turned away for its dedupe key (it has that problem's episode already)
        # is not missing: it is the one case where an id of the source is not in the target.
        absent = [r.episode["id"] for r, new in zip(rows, stored, strict=True) if not new]
        held = target.present_ids("episodes", absent) if absent else set()
        skipped = {i for i in absent if i not in held}
        deduplicated += sorted(skipped)
        missing += target.missing([r for r in rows if r.episode["id"] not in skipped])
        if on_batch is not None:
            on_batch(copied["episodes"])
    after = {t: target.count(t) for t in TABLES}
    report = TransferReport(source=source.location, target=target.location, copied=copied, added=added,
                            present=present, deduplicated=deduplicated, source_counts=counts, target_counts=after,
                            unattached_labels=max(0, counts["labels"] - copied["labels"]))
    # Every source row was read (a store written meanwhile may have grown, never shrunk)...
    short = [f"{t}: {copied[t]} read of {counts[t]}" for t in ("episodes", "completions", "tool_runs")
             if copied[t] < counts[t]]
    # ...and every row read is in the target, which holds at least as much as the source.
    if not deduplicated:
        short += [f"{t}: the target has {after[t]}, the source {counts[t]}"
                  for t in ("episodes", "completions", "tool_runs") if after[t] < counts[t]]
    if missing or short:
        shown = "; ".join((short + missing)[:5])
        raise RunFailure(f"the copy from {source.location} to {target.location} is incomplete: {shown}"
                         f"{' ...' if len(short) + len(missing) > 5 else ''}. What was written stays written; run "
                         "the same command again to finish it", evidence=report.model_dump() | {"missing": missing})
    return report

