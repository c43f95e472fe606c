"""`fcagent traces ...`: list, show, count, label, export and import the episodes of a trace store."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from fcagent.cli.app import check_output_file, console, escape, open_store, traces_app
from fcagent.cli.options import DEFAULT_STORE, DataOpt, StoreOpt
from fcagent.core.errors import UserError

_RAW_HELP = "Print secrets and personal data as stored (redacted by default)."


def _cleaner(raw: bool) -> Any:
    from fcagent.tracing.redact import Redactor

    return (lambda text: text) if raw else Redactor().redact


def _short_ids(ids: list[str], store: Any) -> dict[str, str]:
    """The shortest prefix (8+ characters) of each id that no other episode or call shares."""
    out = {}
    for full in ids:
        for length in range(8, len(full) + 1):
            try:
                if store.resolve_id(full[:length]) == full:
                    out[full] = full[:length]
                    break
            except UserError:
                continue
        else:
            out[full] = full
    return out


@traces_app.command("ls")
def traces_ls(store: StoreOpt = Path(DEFAULT_STORE),
              limit: Annotated[int, typer.Option(min=1, max=1_000_000, help="How many of the newest episodes.")] = 20,
              task: Annotated[Optional[str], typer.Option(help="Only episodes of this task family.")] = None,
              raw: Annotated[bool, typer.Option("--raw", help=_RAW_HELP)] = False) -> None:
    """List the newest episodes: an id prefix `label` and `show` accept, the question, the verdict."""
    from rich.table import Table

    clean = _cleaner(raw)
    s = open_store(store)
    rows = s.summaries(limit=limit, task=task)
    if task and not rows:
        present = sorted(k for k in s.stats()["episodes_by_task"] if k != "-")
        raise UserError(f"`--task` {task!r}: no episodes of it in {store} (tasks there: {', '.join(present) or 'none'})")
    short = _short_ids([r.id for r in rows], s)
    table = Table("episode", "question", "model", "status", "verdict", "steps")
    for r in rows:
        verdict = "-" if r.verdict is None else f"{'good' if r.verdict else 'bad'} ({clean(r.verdict_source or '?')})"
        question = " ".join(clean(r.question or r.problem_id or "-").split())
        table.add_row(short[r.id], question[:60] + ("…" if len(question) > 60 else ""), clean(r.model or "-"),
                      r.status, verdict, str(r.steps if r.steps is not None else "-"))
    console.print(table)


@traces_app.command("show")
def traces_show(episode_id: Annotated[Optional[str], typer.Argument(help="Episode id or prefix; default the latest.")] = None,
                store: StoreOpt = Path(DEFAULT_STORE),
                raw: Annotated[bool, typer.Option("--raw", help=_RAW_HELP)] = False) -> None:
    """Show an episode as a chat transcript, with the id of every model call and the labels."""
    clean = _cleaner(raw)
    s = open_store(store)
    if episode_id is None:
        episode_id = s.latest_episode_id()
        if episode_id is None:
            raise UserError(f"{store} has no episodes yet")
    tr = s.trace(episode_id)
    ep = tr.episode
    console.rule(f"episode {ep.id}")
    console.print(f"task {ep.task} · problem {ep.problem_id} · model {clean(ep.model or '?')} · {ep.status}",
                  markup=False)
    labels: dict[str, list[Any]] = {}
    for lb in tr.labels:
        labels.setdefault(lb.target_id, []).append(lb)
    for i, c in enumerate(tr.completions):
        history = c.messages if i == 0 else c.messages[len(tr.completions[i - 1].messages) + 1:]
        for m in history:
            console.print(f"{m.role}: {clean(m.content or json.dumps(m.tool_calls))[:1500]}", markup=False)
        for j, cand in enumerate(c.candidates):
            body = clean(cand.message.content or json.dumps(cand.message.tool_calls))
            tag = "".join(f" [{'green' if lb.success else 'red'}]{escape(clean(lb.source))}: {escape(clean(lb.reason))}[/]"
                          for lb in labels.get(c.id, []) if lb.candidate in (None, j))
            console.print(f"[bold cyan]assistant{f' #{j}' if len(c.candidates) > 1 else ''}[/] [dim](call {c.id}, "
                          f"{escape(clean(c.model or '?'))})[/]: {escape(body[:1500])}{tag}")
    for lb in labels.get(ep.id, []):
        console.print(f"[{'green' if lb.success else 'red'}]episode label ({escape(clean(lb.source))}): "
                      f"{escape(clean(lb.reason))}[/]")


@traces_app.command("stats")
def traces_stats(store: StoreOpt = Path(DEFAULT_STORE)) -> None:
    """Counts by label, task and model."""
    console.print_json(json.dumps(open_store(store).stats()))


@traces_app.command("export")
def traces_export(out: Annotated[Path, typer.Argument(help="The JSONL file to write.")],
                  store: StoreOpt = Path(DEFAULT_STORE),
                  redact: Annotated[bool, typer.Option(help="Redact secrets and personal data.")] = True,
                  force: Annotated[bool, typer.Option("--force", help="Replace an existing output file.")] = False) -> None:
    """Write every episode as JSONL (one episode per line)."""
    from fcagent.tracing.redact import Redactor

    check_output_file(out, force=force, inputs=(store,))
    n = open_store(store).export_jsonl(out, redactor=Redactor() if redact else None)
    console.print(f"wrote {n} episodes to {out}")


@traces_app.command("import")
def traces_import(path: Annotated[Path, typer.Argument(help="A JSONL file written by `fcagent traces export`.")],
                  store: StoreOpt = Path(DEFAULT_STORE)) -> None:
    """Add the episodes of a JSONL export (idempotent; labels on known episodes are merged in)."""
    added, present = open_store(store, create=True).import_jsonl(path)
    console.print(f"added {added} episodes, {present} were already present")


@traces_app.command("import-langsmith")
def traces_import_langsmith(project: Annotated[str, typer.Option(help="LangSmith project name.")],
                            store: StoreOpt = Path(DEFAULT_STORE),
                            limit: Annotated[Optional[int], typer.Option(min=1, max=10_000_000,
                                                                         help="Most runs to read (default: all).")] = None
                            ) -> None:
    """Import a LangSmith project's runs and feedback scores (idempotent; needs LANGSMITH_API_KEY)."""
    from fcagent.tracing.langsmith_import import import_langsmith

    console.print(import_langsmith(store, project=project, limit=limit))


class OtlpFormat(str, Enum):
    json = "json"
    protobuf = "protobuf"


@traces_app.command("import-otlp")
def traces_import_otlp(paths: Annotated[list[Path], typer.Argument(
                           help="OTLP trace exports (JSON, JSON lines or protobuf), or folders of them.")],
                       store: StoreOpt = Path(DEFAULT_STORE)) -> None:
    """Import OpenTelemetry GenAI spans (OpenLLMetry, OpenInference, the GenAI conventions): a trace is an
    episode, its model calls and tool runs as they were (idempotent)."""
    from fcagent.tracing.otlp.inbound import read_otlp

    traces, report = read_otlp(paths)  # all of it read before the store is opened: bad input creates nothing
    report.store(open_store(store, create=True), traces)
    console.print(report.summary(), markup=False)


@traces_app.command("export-otlp")
def traces_export_otlp(out: Annotated[Optional[Path], typer.Argument(help="The file to write (or --endpoint).")] = None,
                       endpoint: Annotated[Optional[str], typer.Option(
                           help="Send to an OTLP/HTTP endpoint instead, e.g. http://localhost:6006/v1/traces.")] = None,
                       header: Annotated[Optional[list[str]], typer.Option(
                           help="KEY=VALUE header for --endpoint (repeatable), e.g. Authorization=Basic ...")] = None,
                       format: Annotated[OtlpFormat, typer.Option(
                           help="The file's encoding: OTLP/JSON lines or length-prefixed protobuf.")] = OtlpFormat.json,
                       store: StoreOpt = Path(DEFAULT_STORE),
                       redact: Annotated[bool, typer.Option(help="Redact secrets and personal data.")] = True,
                       force: Annotated[bool, typer.Option("--force", help="Replace an existing output file.")] = False
                       ) -> None:
    """Write every episode as OpenTelemetry GenAI spans (a trace per episode), for Langfuse, Phoenix or any
    OTLP backend; `traces import-otlp` reads them back to the same episodes."""
    from fcagent.tracing.otlp.outbound import send_otlp, write_otlp_file
    from fcagent.tracing.redact import Redactor

    if (out is None) == (endpoint is None):
        raise UserError("give an output file or --endpoint URL (one of them)")
    headers = {}
    for item in header or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"`--header` {item!r} must be KEY=VALUE")
        headers[key.strip()] = value
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise UserError(f"`--endpoint` {endpoint!r} must be an http:// or https:// URL (OTLP/HTTP)")
    if headers and endpoint is None:
        raise UserError("`--header` goes with --endpoint")
    s = open_store(store)
    redactor = Redactor() if redact else None
    if out is not None:
        check_output_file(out, force=force, inputs=(store,))
        n = write_otlp_file(s.traces(), out, fmt=format.value, redactor=redactor)
        console.print(f"wrote {n} episodes to {out}", markup=False)
    else:
        n = send_otlp(s.traces(), endpoint or "", headers=headers, redactor=redactor)
        console.print(f"sent {n} episodes to {endpoint}", markup=False)


@traces_app.command("label")
def traces_label(target_ids: Annotated[Optional[list[str]], typer.Argument(help="Episode or call ids (unique prefixes do).")] = None,
                 success: Annotated[Optional[bool], typer.Option("--good/--bad", help="The verdict for the ids given.")] = None,
                 reason: Annotated[str, typer.Option(help="Why (kept with the label, exported as the rejected reason).")] = "",
                 source: Annotated[str, typer.Option(help="Who labelled (feedback, user, a reviewer's name).")] = "user",
                 file: Annotated[Optional[Path], typer.Option("--file", help="JSONL or CSV rows of {id, label, reason}: many labels in one go.")] = None,
                 store: StoreOpt = Path(DEFAULT_STORE)) -> None:
    """Label episodes or model calls good or bad (a user's thumbs up/down, a reviewer's verdict)."""
    from fcagent.core.records import Label
    from fcagent.tracing.feedback import read_feedback

    if file is not None and (target_ids or success is not None):
        raise UserError("give ids with --good/--bad, or --file, not both")
    if file is None and (not target_ids or success is None):
        raise UserError("give one or more ids and --good or --bad (or --file feedback.jsonl)")
    s = open_store(store, write=True)
    if file is not None:
        labels = read_feedback(file, source=source if source != "user" else "feedback")
    else:
        labels = [Label(target_id=t, success=bool(success), reason=reason, source=source) for t in target_ids or []]
    written = s.label_many(labels)
    good = sum(lb.success for lb in written)
    console.print(f"labelled {len(written)} ({good} good, {len(written) - good} bad)")


@traces_app.command("demo")
def traces_demo(store: Annotated[str, typer.Option("--store", envvar="FCAGENT_STORE",
                                                    help="The store to record into (created if missing).")],
                limit: Annotated[Optional[int], typer.Option(min=1, max=10_000, help="Requests to run (all 290 "
                                                             "by default).")] = None,
                mistake_rate: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of runs in which the "
                                                            "scripted large model goes wrong.")] = 0.2,
                seed: Annotated[int, typer.Option(help="Which runs go wrong, and the order.")] = 0,
                data_dir: DataOpt = None) -> None:
    """Record demo traffic of an agent fcagent did not write: a `create_agent` agent over NESTFUL's APIs,
    answered by a scripted large model, labelled by its users' feedback (see fcagent.pipeline.demo_traffic)."""
    from fcagent.cli.app import data_dir as checked_data_dir
    from fcagent.cli.app import progress
    from fcagent.pipeline.demo_traffic import record_demo_traffic

    counts = record_demo_traffic(open_store(store, create=True), data_dir=checked_data_dir(data_dir), limit=limit,
                                 mistake_rate=mistake_rate, seed=seed, progress=progress())
    console.print(f"recorded {counts['episodes']} episodes into {store}: {counts['labelled_good']} labelled good, "
                  f"{counts['labelled_bad']} bad by the users' feedback")


@traces_app.command("migrate")
def traces_migrate(source: Annotated[str, typer.Option("--from", help="The store to copy from: an SQLite file or a "
                                                       "postgresql:// URL (read only).")],
                   target: Annotated[str, typer.Option("--to", help="The store to copy into (created if missing): "
                                                       "an SQLite file or a postgresql:// URL.")],
                   batch: Annotated[int, typer.Option(min=1, max=100_000, help="Episodes per transaction.")] = 200
                   ) -> None:
    """Copy every episode, call, tool run and label of one store into another, SQLite ⇄ PostgreSQL.
    Idempotent: what the target has is kept (labels merged), so a re-run adds nothing and finishes a
    stopped copy. Every batch is checked in the target and the counts compared at the end."""
    from fcagent.tracing.store.transfer import TABLES, copy_store

    from fcagent.tracing.store import is_postgres_url

    if not is_postgres_url(source) and not Path(source).exists():
        raise UserError(f"`--from` {source} does not exist")
    src = open_store(source)
    if src.location == str(target) or (src.path is not None and Path(target).resolve() == src.path.resolve()):
        raise UserError(f"`--from` and `--to` are the same store ({src.location})")
    report = copy_store(src, open_store(target, create=True), batch=batch)
    console.print(f"copied {report.copied['episodes']} episodes from {report.source} to {report.target}: "
                  f"{report.added} new, {report.present} already there"
                  + (f", {len(report.deduplicated)} held there under another id (the same problem)"
                     if report.deduplicated else ""), markup=False)
    console.print("counts (source → target): " + ", ".join(
        f"{t} {report.source_counts[t]} → {report.target_counts[t]}" for t in TABLES), markup=False)
    if report.unattached_labels:
        console.print(f"{report.unattached_labels} labels of the source are on no episode or call there "
                      "and were not copied", markup=False)
