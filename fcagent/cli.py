"""The `fcagent` command line (also `python -m fcagent`)."""

from __future__ import annotations

import errno
import functools
import json
import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import click
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fcagent import keys
from fcagent.errors import RunFailure, UserError
from fcagent.models import resolve_model
from fcagent.store import DEFAULT_STORE, StoreError

class Split(str, Enum):
    train = "train"
    test = "test"


class ProtocolChoice(str, Enum):
    auto = "auto"
    native = "native"
    text = "text"


class Kind(str, Enum):
    dpo = "dpo"
    sft = "sft"


class Level(str, Enum):
    step = "step"
    trajectory = "trajectory"
    both = "both"


class Unlabelled(str, Enum):
    skip = "skip"
    good = "good"


class SftRows(str, Enum):
    chain = "chain"
    step = "step"


class PromptStyleChoice(str, Enum):
    as_recorded = "as_recorded"
    compact = "compact"


class MethodChoice(str, Enum):
    dpo = "dpo"
    sft = "sft"
    rpo = "rpo"
    sft_dpo = "sft-dpo"
    sft_rpo = "sft-rpo"
    sft_chosen = "sft-chosen"


class PresetChoice(str, Enum):
    quick = "quick"
    full = "full"


class ReplayStudent(str, Enum):
    sft = "sft"
    base = "base"


class ReplaySteps(str, Enum):
    every = "every"
    final = "final"


class Backend(str, Enum):
    llguidance = "llguidance"
    xgrammar = "xgrammar"


class ValidateChoice(str, Enum):
    grounded = "grounded"
    any = "any"


class _App(typer.Typer):
    """A Typer whose commands turn fcagent's errors into one line and an exit code, never a traceback:
    2 for a mistake in the input (which says what and where), 1 for a run that failed."""

    def command(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        register = super().command(*args, **kwargs)

        def decorate(fn):
            @functools.wraps(fn)
            def handled(*a: Any, **kw: Any) -> Any:
                try:
                    return fn(*a, **kw)
                except (typer.Exit, typer.Abort, click.exceptions.ClickException):
                    raise
                except Exception as exc:  # noqa: BLE001 - every failure becomes a message and an exit code
                    code, message = _explain(exc)
                    if os.environ.get("FCAGENT_DEBUG"):
                        raise
                    console.print(f"[red]error:[/] {_escape(message)}")
                    raise typer.Exit(code) from None

            return register(handled)

        return decorate


def _explain(exc: BaseException) -> tuple[int, str]:
    from pydantic import ValidationError

    from fcagent.errors import RunFailure
    from fcagent.store import StoreWriteError
    from fcagent.tasks.base import DataError

    if isinstance(exc, UserError | StoreError | DataError):
        return 2, str(exc)
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or exc.title
        return 2, f"`{where}`: {err['msg']}"
    if isinstance(exc, RunFailure | StoreWriteError):
        return 1, str(exc)
    if isinstance(exc, PermissionError):
        return 1, f"permission denied: {exc.filename or exc}"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return 1, f"no space left on the device ({exc.filename or 'while writing'})"
    if isinstance(exc, OSError):
        return 1, f"{exc.strerror or exc}: {exc.filename or ''}".strip()
    if isinstance(exc, KeyboardInterrupt):
        return 130, "interrupted"
    return 1, f"internal error ({type(exc).__name__}: {exc}); FCAGENT_DEBUG=1 shows the traceback"


app = _App(add_completion=False, no_args_is_help=True, help="Distil a function-calling agent's traces into a small model.")
traces_app = _App(no_args_is_help=True, help="Read and manage the trace store.")
app.add_typer(traces_app, name="traces")
console = Console()

TaskOpt = Annotated[str, typer.Option("--task", "-t", help="Task spec: math, math:gsm8k, logic:prontoqa, bfcl:simple_python, ...")]
StoreOpt = Annotated[Path, typer.Option("--store", help="Trace store (SQLite file).")]
DataOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Folder holding the task data (default: ./data, ../shared/data, $FCAGENT_DATA).")]
LimitOpt = Annotated[Optional[int], typer.Option(min=1, help="Number of problems (default: all).")]


def _data_dir(path: Path | None) -> Path | None:
    """`--data-dir` must exist when given (it wins over $FCAGENT_DATA, so a typo must not fall back silently)."""
    if path is not None and not path.is_dir():
        raise UserError(f"`--data-dir` {path} is not a folder")
    return path


def _open_store(path: Path, *, create: bool = False) -> Any:
    """The trace store at `path`; a command that only reads it refuses a missing file (rather than
    creating an empty store and reporting 0 episodes)."""
    from fcagent.store import TraceStore

    if not create and not Path(path).exists():
        raise UserError(f"`--store` {path} does not exist; record or harvest into it first")
    return TraceStore(path)


def _check_output_file(out: Path, *, force: bool, inputs: tuple[Path, ...]) -> None:
    """No command writes over its input or a database, nor over any existing file without `--force`."""
    target = out.resolve()
    for source in inputs:
        src = source.resolve()
        if target in (src, Path(f"{src}-wal"), Path(f"{src}-shm"), Path(f"{src}-writer.lock")):
            raise UserError(f"`{out}` is the input store; choose another output file")
    if out.is_dir():
        raise UserError(f"`{out}` is a folder; give a file name such as traces.jsonl")
    if out.exists():
        with out.open("rb") as f:
            if f.read(16) == b"SQLite format 3\x00":
                raise UserError(f"`{out}` is an SQLite database (a trace store?); refusing to write over it")
        if not force:
            raise UserError(f"`{out}` exists; pass --force to replace it")


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console,
                    disable=not console.is_terminal and os.environ.get("FCAGENT_PROGRESS") != "1")


@app.command()
def run(task: TaskOpt = "math", model: Annotated[str, typer.Option(help="Model spec (bundled:smollm2-135m, a run folder, provider:model, reference).")] = "bundled:smollm2-135m",
        limit: Annotated[int, typer.Option(min=1, help="Number of problems.")] = 20,
        split: Annotated[Split, typer.Option(help="Deterministic by id hash.")] = Split.test,
        protocol: Annotated[ProtocolChoice, typer.Option()] = ProtocolChoice.auto,
        max_steps: Annotated[Optional[int], typer.Option(min=1, help="Step limit per problem (default: the task's).")] = None,
        store: Annotated[Optional[Path], typer.Option("--store", help="Record the episodes into this trace store.")] = None,
        data_dir: DataOpt = None,
        quiet: Annotated[bool, typer.Option(help="Only the summary, no chains.")] = False) -> None:
    """Solve task problems with a model, printing each chain, its verdict and the accuracy."""
    from fcagent.runner import run_problems
    from fcagent.store import TraceStore
    from fcagent.tasks import get_task

    t = get_task(task, data_dir=_data_dir(data_dir))
    problems = t.load(split=split.value, limit=limit)
    chat = resolve_model(model, problems)
    console.print(f"[bold]{len(problems)}[/] {t.spec} problems ({split.value}) with [bold]{model}[/]")

    def show(problem, result) -> None:
        if quiet:
            return
        mark = "[green]✔[/]" if result.success else "[red]✘[/]"
        console.rule(f"{mark} {problem.id}")
        console.print(f"[dim]user:[/] {problem.question}")
        for m in result.transcript[1:]:
            text = m["content"] or json.dumps(m["tool_calls"])
            console.print(f"[dim]{m['role']}:[/] {text[:400]}")
        console.print(f"verdict: {result.reason}  ({result.steps} steps, {result.wall_s:.1f} s)")

    results = run_problems(chat, t, problems, store=TraceStore(store) if store else None, protocol=protocol.value,
                           max_steps=max_steps, on_result=show, metadata={keys.MODEL: model})
    right = sum(r.success for r in results)
    console.print(f"\n[bold]accuracy: {right}/{len(results)} = {right / max(1, len(results)):.1%}[/]  "
                  f"valid calls {sum(r.valid_calls for r in results)}/{sum(r.calls for r in results)}")


@app.command()
def harvest(task: TaskOpt = "math", teacher: Annotated[str, typer.Option(help="Teacher model spec; `reference` replays gold chains.")] = "reference",
            samples: Annotated[int, typer.Option(min=1, max=64, help="Candidates per step (K), sampled from one prompt pass.")] = 1,
            temperature: Annotated[Optional[float], typer.Option(min=0.0, max=2.0, help="Sampling temperature when K > 1.")] = None,
            limit: LimitOpt = None,
            split: Annotated[Split, typer.Option(help="Split to harvest (train keeps evaluation problems out).")] = Split.train,
            store: StoreOpt = Path(DEFAULT_STORE), resume: Annotated[bool, typer.Option(help="Skip problems already complete in the store.")] = False,
            concurrency: Annotated[int, typer.Option(min=1, max=64, help="Problems in flight at once (remote teachers).")] = 1,
            protocol: Annotated[ProtocolChoice, typer.Option()] = ProtocolChoice.auto,
            data_dir: DataOpt = None) -> None:
    """Run a teacher over a task split with K candidates per step, storing every call."""
    from fcagent.harvest import harvest as do_harvest

    summary = do_harvest(task=task, teacher=teacher, samples=samples, temperature=temperature, limit=limit,
                         split=split.value, store=store, resume=resume, concurrency=concurrency,
                         protocol=protocol.value, data_dir=_data_dir(data_dir), progress=_progress())
    console.print(summary)


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
def traces_ls(store: StoreOpt = Path(DEFAULT_STORE), limit: Annotated[int, typer.Option(min=1, help="Newest N episodes.")] = 20,
              task: Optional[str] = None,
              raw: Annotated[bool, typer.Option("--raw", help="Print questions as stored (redacted by default).")] = False) -> None:
    """List the newest episodes: an id prefix `label` and `show` accept, the question, the verdict."""
    from fcagent.redact import Redactor

    clean = (lambda text: text) if raw else Redactor().redact
    s = _open_store(store)
    rows = s.summaries(limit=limit, task=task)
    if task and not rows:
        present = sorted(k for k in s.stats()["episodes_by_task"] if k != "-")
        raise UserError(f"`--task` {task!r}: no episodes of it in {store} (tasks there: {', '.join(present) or 'none'})")
    short = _short_ids([r["id"] for r in rows], s)
    table = Table("episode", "question", "model", "status", "verdict", "steps")
    for r in rows:
        verdict = "-" if r["verdict"] is None else f"{'good' if r['verdict'] else 'bad'} ({r['verdict_source']})"
        question = " ".join(clean(r["question"] or r["problem_id"] or "-").split())
        table.add_row(short[r["id"]], question[:60] + ("…" if len(question) > 60 else ""), r["model"] or "-",
                      r["status"], verdict, str(r["steps"] if r["steps"] is not None else "-"))
    console.print(table)


@traces_app.command("show")
def traces_show(episode_id: Annotated[Optional[str], typer.Argument(help="Episode id or prefix; default the latest.")] = None,
                store: StoreOpt = Path(DEFAULT_STORE),
                raw: Annotated[bool, typer.Option("--raw", help="Print secrets and personal data as stored (redacted by default).")] = False) -> None:
    """Show an episode as a chat transcript, with the id of every model call and the labels."""
    from fcagent.redact import Redactor

    clean = (lambda text: text) if raw else Redactor().redact
    s = _open_store(store)
    if episode_id is None:
        episode_id = s.latest_episode_id()
        if episode_id is None:
            raise UserError(f"{store} has no episodes yet")
    tr = s.trace(episode_id)
    ep = tr.episode
    console.rule(f"episode {ep.id}")
    console.print(f"task {ep.task} · problem {ep.problem_id} · model {ep.model} · {ep.status}")
    labels = {}
    for lb in tr.labels:
        labels.setdefault(lb.target_id, []).append(lb)
    for i, c in enumerate(tr.completions):
        history = c.messages if i == 0 else c.messages[len(tr.completions[i - 1].messages) + 1:]
        for m in history:
            console.print(f"{m.role}: {clean(m.content or json.dumps(m.tool_calls))[:1500]}", markup=False)
        for j, cand in enumerate(c.candidates):
            body = clean(cand.message.content or json.dumps(cand.message.tool_calls))
            tag = "".join(f" [{'green' if lb.success else 'red'}]{lb.source}: {_escape(clean(lb.reason))}[/]"
                          for lb in labels.get(c.id, []) if lb.candidate in (None, j))
            console.print(f"[bold cyan]assistant{f' #{j}' if len(c.candidates) > 1 else ''}[/] [dim](call {c.id}, "
                          f"{_escape(c.model or '?')})[/]: {_escape(body[:1500])}{tag}")
    for lb in labels.get(ep.id, []):
        console.print(f"[{'green' if lb.success else 'red'}]episode label ({lb.source}): {_escape(clean(lb.reason))}[/]")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


@traces_app.command("stats")
def traces_stats(store: StoreOpt = Path(DEFAULT_STORE)) -> None:
    """Counts by label, task and model."""
    from fcagent.store import TraceStore

    console.print_json(json.dumps(_open_store(store).stats()))


@traces_app.command("export")
def traces_export(out: Annotated[Path, typer.Argument(help="The JSONL file to write.")], store: StoreOpt = Path(DEFAULT_STORE),
                  redact: Annotated[bool, typer.Option(help="Redact secrets and personal data.")] = True,
                  force: Annotated[bool, typer.Option("--force", help="Replace an existing output file.")] = False) -> None:
    """Write every episode as JSONL (one episode per line)."""
    from fcagent.redact import Redactor

    _check_output_file(out, force=force, inputs=(store,))
    n = _open_store(store).export_jsonl(out, redactor=Redactor() if redact else None)
    console.print(f"wrote {n} episodes to {out}")


@traces_app.command("import")
def traces_import(path: Path, store: StoreOpt = Path(DEFAULT_STORE)) -> None:
    """Add the episodes of a JSONL export (idempotent; labels on known episodes are merged in)."""
    added, present = _open_store(store, create=True).import_jsonl(path)
    console.print(f"added {added} episodes, {present} were already present")


@traces_app.command("import-langsmith")
def traces_import_langsmith(project: Annotated[str, typer.Option(help="LangSmith project name.")],
                            store: StoreOpt = Path(DEFAULT_STORE), limit: Optional[int] = None) -> None:
    """Import a LangSmith project's runs and feedback scores (idempotent; needs LANGSMITH_API_KEY)."""
    from fcagent.langsmith_import import import_langsmith

    console.print(import_langsmith(store, project=project, limit=limit))


@traces_app.command("label")
def traces_label(target_ids: Annotated[Optional[list[str]], typer.Argument(help="Episode or call ids (unique prefixes do).")] = None,
                 success: Annotated[Optional[bool], typer.Option("--good/--bad", help="The verdict for the ids given.")] = None,
                 reason: str = "", source: Annotated[str, typer.Option(help="Who labelled (feedback, user, a reviewer's name).")] = "user",
                 file: Annotated[Optional[Path], typer.Option("--file", help="JSONL or CSV rows of {id, label, reason}: many labels in one go.")] = None,
                 store: StoreOpt = Path(DEFAULT_STORE)) -> None:
    """Label episodes or model calls good or bad (a user's thumbs up/down, a reviewer's verdict)."""
    from fcagent.feedback import read_feedback
    from fcagent.records import Label

    if file is not None and (target_ids or success is not None):
        raise UserError("give ids with --good/--bad, or --file, not both")
    if file is None and (not target_ids or success is None):
        raise UserError("give one or more ids and --good or --bad (or --file feedback.jsonl)")
    s = _open_store(store)
    if file is not None:
        labels = read_feedback(file, source=source if source != "user" else "feedback")
    else:
        labels = [Label(target_id=t, success=bool(success), reason=reason, source=source) for t in target_ids or []]
    written = s.label_many(labels)
    good = sum(lb.success for lb in written)
    console.print(f"labelled {len(written)} ({good} good, {len(written) - good} bad)")


@app.command("export")
def export_cmd(out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("pairs"),
               store: StoreOpt = Path(DEFAULT_STORE),
               kind: Annotated[Kind, typer.Option(help="dpo (preference pairs) or sft (good completions).")] = Kind.dpo,
               level: Annotated[Level, typer.Option(help="Pair sources besides teacher-vs-student.")] = Level.both,
               teacher_student: Annotated[bool, typer.Option(help="Include teacher-vs-student pairs.")] = True,
               task: Annotated[Optional[str], typer.Option(help="Only this task family.")] = None,
               unlabelled: Annotated[Unlabelled, typer.Option(help="Episodes nobody labelled: skip, or take them as good.")] = Unlabelled.skip,
               sft_rows: Annotated[SftRows, typer.Option(help="SFT: a row per good chain (every turn trained) or per step.")] = SftRows.chain,
               prompt_style: Annotated[PromptStyleChoice, typer.Option(help="The rows' system prompt: the teacher's, or the compact student one.")] = PromptStyleChoice.as_recorded,
               max_pairs_per_context: Annotated[int, typer.Option(min=1)] = 4,
               max_pairs_per_problem: Annotated[int, typer.Option(min=1)] = 16, seed: int = 0,
               redact: Annotated[bool, typer.Option(help="Redact secrets and personal data.")] = True,
               dataset: Annotated[bool, typer.Option(help="Also write a datasets.Dataset (save_to_disk).")] = True) -> None:
    """Export labelled traces as DPO pairs or SFT rows in TRL's conversational format."""
    from fcagent.export import export_preference_pairs, export_sft, load_pairs

    if out.exists() and not out.is_dir():
        raise UserError(f"`--out` {out} is a file; it names the folder the export writes into")
    settings = dict(level=level.value, teacher_student=teacher_student, task=task, unlabelled=unlabelled.value,
                    sft_rows=sft_rows.value, prompt_style=prompt_style.value,
                    max_pairs_per_context=max_pairs_per_context,
                    max_pairs_per_problem=max_pairs_per_problem, seed=seed, redact=redact)
    result = (export_preference_pairs if kind is Kind.dpo else export_sft)(_open_store(store), out, **settings)
    if dataset:
        load_pairs(result.path, kind.value).save_to_disk(str(out / f"dataset-{kind.value}"))
    stats = result.stats
    table = Table("rows", "by source", "by task", "rejected reasons", "dropped")
    table.add_row(str(stats["rows"]), json.dumps(stats["by_source"]), json.dumps(stats["by_task"]),
                  json.dumps(stats["rejected_reasons"]), json.dumps(stats["dropped"]))
    console.print(table)
    console.print(f"wrote {result.path} and {out / f'stats.{kind.value}.json'}")


@app.command("train")
def train_cmd(pairs: Annotated[Path, typer.Option(help="Export folder (pairs.jsonl / sft.jsonl) or a saved dataset.")],
              student: Annotated[str, typer.Option(help="Student model spec.")] = "bundled:smollm2-135m",
              method: Annotated[MethodChoice, typer.Option()] = MethodChoice.dpo,
              out: Annotated[Path, typer.Option("--out", help="Run folder.")] = Path("runs/student"),
              epochs: Annotated[Optional[float], typer.Option(min=0.01, max=1000, help="Epochs.")] = None,
              max_steps: Annotated[Optional[int], typer.Option(min=1, help="Optimizer steps (overrides epochs).")] = None,
              config: Annotated[Optional[Path], typer.Option(help="YAML file of TrainSettings fields (lora: for LoRA).")] = None,
              merge: Annotated[bool, typer.Option(help="Also write a merged model that loads with plain transformers.")] = False,
              trl_defaults: Annotated[bool, typer.Option(help="TRL's own defaults, for comparison.")] = False) -> None:
    """Train the student with TRL (DPO/SFT/RPO/SFT-then-DPO) and a LoRA adapter."""
    from fcagent.train import LoraSettings, TrainSettings, train

    fields, lora = _read_train_config(config) if config is not None else ({}, {})
    fields["method"] = method.value
    if epochs is not None:
        fields["epochs"] = epochs
    if max_steps is not None:
        fields["max_steps"] = max_steps
    if trl_defaults:
        fields["trl_defaults"] = True
    result = train(pairs, student, out, settings=TrainSettings(**fields), lora=LoraSettings(**lora), merge=merge)
    console.print(result.model_dump(mode="json"))


def _read_train_config(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """TrainSettings fields (and `lora:` LoraSettings fields) from a YAML file, checked."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"`--config` {path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"`--config` {path} is a folder, not a YAML file") from None
    except UnicodeDecodeError:
        raise UserError(f"`--config` {path}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"`--config` {path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise UserError(f"`--config` {path} must be a mapping of TrainSettings fields, got a {type(data).__name__}")
    lora = data.pop("lora", None) or {}
    if not isinstance(lora, dict):
        raise UserError(f"`--config` {path}: `lora` must be a mapping of LoraSettings fields")
    return data, lora


@app.command("soup")
def soup_cmd(student: Annotated[list[str], typer.Option("--student", help="A student to average (a run folder or local model); repeat, two or more.")],
             out: Annotated[Path, typer.Option("--out", help="Run folder for the soup (new, or an earlier soup's).")] = Path("runs/soup")) -> None:
    """Average students of one base model into one (a model soup): epoch snapshots, seeds, adapter ranks."""
    from fcagent.soup import average_students

    console.print(average_students(student, out).model_dump(mode="json"))


@app.command("replay")
def replay_cmd(student: Annotated[str, typer.Option(help="Student model spec (a run folder or bundled:NAME).")],
               store: StoreOpt = Path(DEFAULT_STORE), task: TaskOpt = "math",
               samples: Annotated[int, typer.Option(min=1, max=64, help="Candidates per context.")] = 4,
               temperature: Annotated[float, typer.Option(min=0.0, max=2.0)] = 0.8,
               limit: Annotated[Optional[int], typer.Option(min=1, help="Contexts to replay (default: all).")] = None,
               steps: Annotated[ReplaySteps, typer.Option(help="Replay every teacher model call, or each episode's final one.")] = ReplaySteps.every,
               seed: Annotated[Optional[int], typer.Option(min=0, help="Sampling seed (reproducible candidates).")] = None,
               data_dir: DataOpt = None) -> None:
    """Replay good teacher contexts through the student and record its failures (teacher-vs-student pairs)."""
    from fcagent.models import load_chat_model
    from fcagent.replay import replay
    from fcagent.tasks import get_task

    trace_store = _open_store(store)
    t = get_task(task, data_dir=_data_dir(data_dir))
    model = load_chat_model(student, max_new_tokens=t.max_new_tokens)
    console.print(replay(trace_store, model, student_name=student, task=task, samples=samples, temperature=temperature,
                         limit=limit, steps=steps.value, seed=seed, data_dir=data_dir, progress=_progress()))


@app.command("eval")
def eval_cmd(model: Annotated[list[str], typer.Option("--model", help="NAME=SPEC or SPEC; repeat for each model.")],
             task: TaskOpt = "math", split: Annotated[Split, typer.Option()] = Split.test,
             limit: Annotated[int, typer.Option(min=1)] = 100,
             out: Annotated[Path, typer.Option("--out", help="Report folder.")] = Path("eval"),
             protocol: Annotated[ProtocolChoice, typer.Option()] = ProtocolChoice.auto, data_dir: DataOpt = None) -> None:
    """Evaluate models on the same held-out problems: accuracy with CIs, McNemar tests, tokens, time."""
    from fcagent.evaluate import evaluate, model_names
    from fcagent.tasks import get_task

    models = model_names(model)
    t = get_task(task, data_dir=_data_dir(data_dir))
    report = evaluate(models, task=task, split=split.value, limit=limit, out_dir=out, data_dir=data_dir,
                      protocol=protocol.value, progress=_progress(), model_kwargs={"max_new_tokens": t.max_new_tokens})
    _print_report(report)
    console.print(f"wrote {out / 'report.md'}, {out / 'results.json'}, {out / 'evaluation.png'}")
    failed = [m["name"] for m in report["models"].values() if m.get("run_errors") and m["run_errors"] == m["n"]]
    if failed:
        raise RunFailure(f"every problem failed to run for {', '.join(failed)} (see {out / 'results'}); "
                         "the accuracy shown is not a measurement")


def _print_report(report: dict) -> None:
    table = Table("model", "correct", "accuracy (95% CI)", "run errors", "valid calls", "steps", "tokens/problem", "s/problem",
                  title=f"{report['task']} · {report['n_problems']} held-out problems")
    for m in report["models"].values():
        table.add_row(m["name"], f"{m['correct']}/{m['n']}", f"{m['accuracy']:.1%} ({m['ci95'][0]:.0%}–{m['ci95'][1]:.0%})",
                      str(m.get("run_errors", 0)), f"{m['valid_call_rate']:.0%}", f"{m['mean_steps']:.1f}",
                      f"{m['prompt_tokens_per_problem'] + m['completion_tokens_per_problem']:.0f}",
                      f"{m['wall_s_per_problem']:.2f}")
    console.print(table)
    for pair, t in report["mcnemar"].items():
        console.print(f"McNemar {pair}: {t['only_a']} vs {t['only_b']} discordant, p = {t['p_value']:.3g}")


@app.command()
def distill(task: TaskOpt = "bfcl:simple_python",
            teacher: Annotated[str, typer.Option(help="`reference` (gold chains, offline), a local spec, or provider:model.")] = "reference",
            student: Annotated[str, typer.Option(help="Student model spec.")] = "bundled:smollm2-135m",
            out: Annotated[Path, typer.Option("--out", help="Run folder (every stage resumes from it).")] = Path("runs/distill"),
            preset: Annotated[PresetChoice, typer.Option(help="quick (under 10 minutes on a 2-core CPU) or full.")] = PresetChoice.quick,
            method: Annotated[Optional[list[MethodChoice]], typer.Option("--method", help="Methods to train (default: the preset's).")] = None,
            baseline: Annotated[MethodChoice, typer.Option(help="The baseline method; `sft` trains SFT on the same chosen completions.")] = MethodChoice.sft,
            rounds: Annotated[int, typer.Option(min=1, max=10, help="Rounds: the trained student replays the teacher's contexts for the next round's pairs.")] = 1,
            test_problems: Annotated[Optional[int], typer.Option(min=1, help="Override the preset's held-out problem count.")] = None,
            train_problems: Annotated[Optional[int], typer.Option(min=1, help="Override the preset's teacher problem count.")] = None,
            replay_contexts: Annotated[Optional[int], typer.Option(min=1, help="Override the preset's replayed teacher contexts.")] = None,
            replay_student: Annotated[Optional[ReplayStudent], typer.Option(help="Who samples the negatives: `sft` (the SFT student, on-policy for the warm-started methods) or `base`.")] = None,
            replay_steps: Annotated[Optional[ReplaySteps], typer.Option(help="Override the preset's replayed steps: every teacher model call, or each episode's final one.")] = None,
            constrain: Annotated[Optional[Backend], typer.Option(help="Also evaluate every student with grammar-constrained decoding.")] = None,
            seed: Annotated[Optional[int], typer.Option(min=0, help="Training seed of every method (LoRA init, batch order); one run folder per seed.")] = None,
            sft_epochs: Annotated[Optional[float], typer.Option(min=0.01, max=1000, help="Override the preset's SFT epochs.")] = None,
            last_turn_weight: Annotated[Optional[float], typer.Option(min=1.0, max=1000.0, help="SFT: loss weight of each chain's final call (TrainSettings.last_turn_weight).")] = None,
            data_dir: DataOpt = None) -> None:
    """Harvest → label → export → train (DPO and the SFT baseline) → evaluate → report."""
    from fcagent.distill import PRESETS
    from fcagent.distill import distill as run_distill

    methods = [m.value for m in method] if method else None
    if methods and baseline.value not in methods:
        methods = [baseline.value, *methods]
    overrides = {k: (v.value if isinstance(v, Enum) else v) for k, v in {
        "test_problems": test_problems, "train_problems": train_problems, "replay_contexts": replay_contexts,
        "replay_student": replay_student, "replay_steps": replay_steps, "constrain": constrain}.items() if v is not None}
    chosen = PRESETS[preset.value].overridden(overrides, seed=seed, sft_epochs=sft_epochs,
                                              last_turn_weight=last_turn_weight)
    report = run_distill(task=task, teacher=teacher, student=student, out=out, preset=chosen, methods=methods,
                         rounds=rounds, data_dir=_data_dir(data_dir), progress_factory=_progress, log=console.print)
    _print_report(report)
    console.print(f"report: {out / 'report.md'}  plots: {out / 'evaluation.png'}")


@app.command("compare")
def compare_cmd(runs: Annotated[list[Path], typer.Argument(help="Distill folders, one per seed (`fcagent distill --seed N`).")],
                method: Annotated[list[MethodChoice], typer.Option("--method", help="Methods compared with the baseline; repeat.")],
                baseline: Annotated[MethodChoice, typer.Option(help="The method each one is compared with.")] = MethodChoice.sft,
                out: Annotated[Path, typer.Option("--out", help="Report folder (comparison.md/.json/.png).")] = Path("comparison")) -> None:
    """Methods vs a baseline over seeds: per-seed and pooled McNemar tests, the spread across seeds."""
    from fcagent.compare import compare_seeds, write_comparison

    for run in runs:
        if out.resolve() == run.resolve():
            raise UserError(f"`--out` {out} is one of the run folders; choose another folder")
    comparison = compare_seeds(runs, baseline=baseline.value, methods=[m.value for m in method])
    models = [comparison.baseline, *comparison.methods]
    table = Table("seed", *models, title=f"{comparison.task} · {len(runs)} seeds")
    for r in comparison.runs:
        table.add_row(str(r.seed), *[f"{r.correct[m]}/{r.n}" for m in models])
    console.print(table)
    for c in comparison.comparisons:
        console.print(f"{c.method} vs {c.baseline}: mean difference {c.mean_difference:+.1%}, wins/losses/ties "
                      f"{c.wins}/{c.losses}/{c.ties}; pooled McNemar {c.pooled.only_baseline} vs {c.pooled.only_method} "
                      f"discordant of {c.pooled_pairs}, p = {c.pooled.p_value:.3g}")
    paths = write_comparison(comparison, out)
    console.print("wrote " + ", ".join(str(p) for p in paths))


@app.command("serve")
def serve_cmd(model: Annotated[str, typer.Argument(help="The student: a run folder, bundled:NAME, any local model spec with ?settings.")],
              host: Annotated[str, typer.Option(help="Interface to listen on; anything but loopback needs an API key.")] = "127.0.0.1",
              port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
              teacher: Annotated[Optional[str], typer.Option(help="Answers when the student's reply fails validation (any model spec, provider:model).")] = None,
              store: Annotated[Optional[Path], typer.Option("--store", help="Record every request as an episode (and take /v1/feedback).")] = None,
              api_key: Annotated[Optional[str], typer.Option(envvar="FCAGENT_API_KEY", help="Required as `Authorization: Bearer KEY`.")] = None,
              validate: Annotated[ValidateChoice, typer.Option(help="How an answer in words is checked before it stands.")] = ValidateChoice.grounded,
              max_tokens: Annotated[int, typer.Option(min=1, max=32768, help="Most tokens a request may ask for.")] = 1024,
              max_body_bytes: Annotated[int, typer.Option(min=1000, help="Largest request body accepted.")] = 1_000_000) -> None:
    """Serve the student behind an OpenAI-compatible endpoint, with escalation and recording."""
    from fcagent.serve import ServeSettings, serve

    serve(model, host=host, port=port, teacher=teacher, store=str(store) if store else None, validate=validate.value,
          settings=ServeSettings(api_key=api_key, max_tokens_limit=max_tokens, max_body_bytes=max_body_bytes))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
