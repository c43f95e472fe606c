"""The `fcagent` command line (also `python -m fcagent`): the app, its error handling, shared helpers.

Each command group lives in a module of its own (`traces`, `data`, `training`, `pipeline`, `serving`)
and registers on `app` when imported; every heavy import happens inside a command, so `--help` is fast.
"""

from __future__ import annotations

import errno
import functools
import os
from pathlib import Path
from typing import Any

import click
import typer
from rich.console import Console

from fcagent.core.errors import RunFailure, StoreError, StoreWriteError, UserError

__all__ = ["app", "traces_app", "console", "main"]


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
                    code, message = explain(exc)
                    if os.environ.get("FCAGENT_DEBUG"):
                        raise
                    console.print(f"[red]error:[/] {escape(message)}")
                    raise typer.Exit(code) from None

            return register(handled)

        return decorate


def explain(exc: BaseException) -> tuple[int, str]:
    """An exception as (exit code, one line): 2 for the user's input, 1 for a failed run."""
    from pydantic import ValidationError

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


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


app = _App(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
           help="Distil a function-calling agent's traces into a small model: record, label, export, train, "
                "evaluate, serve.")
traces_app = _App(no_args_is_help=True, rich_markup_mode=None, help="Read and manage the trace store.")
app.add_typer(traces_app, name="traces")
# Lines are not broken at the terminal's width (the terminal wraps them for the eye): an error or a path stays
# one line in a log, a pipe or a copy; tables still fit the width.
console = Console(soft_wrap=True)


# --- helpers the command modules share --------------------------------------------------------------


def data_dir(path: Path | None) -> Path | None:
    """`--data-dir` must exist when given (it wins over $FCAGENT_DATA, so a typo must not fall back silently)."""
    if path is not None and not path.is_dir():
        raise UserError(f"`--data-dir` {path} is not a folder")
    return path


def open_store(path: str | Path, *, create: bool = False, write: bool = False) -> Any:
    """The trace store at `path` (a file, or a PostgreSQL URL). A command that only reads it opens it
    read-only (nothing is created or migrated: a missing, empty or foreign file is an error, and a store on
    a read-only file system reads); `write`: an existing store it writes to; `create`: one it may make."""
    from fcagent.tracing.store import TraceStore, is_postgres_url

    if is_postgres_url(str(path)):  # the database exists on the server; its tables are made when written
        return TraceStore(str(path), read_only=not (create or write))
    if create or write:
        if not create and not Path(path).exists():
            raise UserError(f"`--store` {path} does not exist; record or harvest into it first")
        return TraceStore(path)
    return TraceStore(path, read_only=True)


def check_output_file(out: Path, *, force: bool, inputs: tuple[str | Path, ...]) -> None:
    """No command writes over its input or a database, nor over any existing file without `--force`."""
    from fcagent.tracing.store import is_postgres_url

    target = out.resolve()
    for source in inputs:
        if is_postgres_url(str(source)):  # a server's database is no file to write over
            continue
        src = Path(source).resolve()
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


def progress() -> Any:
    """A progress display for long stages: a live bar on a terminal; elsewhere (a log file, CI) one plain
    line per stage every 30 s and at its end, so a run left in the background still says where it is."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    if not console.is_terminal and os.environ.get("FCAGENT_PROGRESS") != "1":
        return LineProgress()
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console)


class LineProgress:
    """The part of `rich.progress.Progress` the stages use, written as plain lines to stderr."""

    def __init__(self, every_s: float = 30.0) -> None:
        self.every_s = every_s
        self.tasks: dict[int, dict[str, Any]] = {}

    def start(self) -> None:
        pass

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        import time

        task_id = len(self.tasks)
        self.tasks[task_id] = {"description": description, "total": total, "completed": 0, "fields": fields,
                               "started": time.monotonic(), "shown": time.monotonic()}
        return task_id

    def update(self, task_id: int, *, advance: float = 0, completed: float | None = None, **fields: Any) -> None:
        import time

        task = self.tasks[task_id]
        task["completed"] = completed if completed is not None else task["completed"] + advance
        task["fields"].update(fields)
        now = time.monotonic()
        if now - task["shown"] >= self.every_s or (task["total"] and task["completed"] >= task["total"]):
            task["shown"] = now
            self._show(task, now)

    def stop(self) -> None:
        pass

    @staticmethod
    def _show(task: dict[str, Any], now: float) -> None:
        import sys

        total = f"/{task['total']:g}" if task["total"] else ""
        status = task["fields"].get("status") or ""
        print(f"{task['description']}: {task['completed']:g}{total} {status} ({now - task['started']:.0f} s)".rstrip(),
              file=sys.stderr, flush=True)


def print_report(report: dict) -> None:
    """An evaluation's table and its McNemar tests."""
    from rich.table import Table

    table = Table("model", "correct", "accuracy (95% CI)", "run errors", "valid calls", "steps", "tokens/problem",
                  "s/problem", title=f"{report['task']} · {report['n_problems']} held-out problems")
    for m in report["models"].values():
        table.add_row(m["name"], f"{m['correct']}/{m['n']}", f"{m['accuracy']:.1%} ({m['ci95'][0]:.0%}–{m['ci95'][1]:.0%})",
                      str(m.get("run_errors", 0)), f"{m['valid_call_rate']:.0%}", f"{m['mean_steps']:.1f}",
                      f"{m['prompt_tokens_per_problem'] + m['completion_tokens_per_problem']:.0f}",
                      f"{m['wall_s_per_problem']:.2f}")
    console.print(table)
    for pair, t in report["mcnemar"].items():
        console.print(f"McNemar {pair}: {t['only_a']} vs {t['only_b']} discordant, p = {t['p_value']:.3g}")


def print_traffic_report(report: dict) -> None:
    """An evaluation on recorded traffic: step agreement and its companions, and the McNemar tests."""
    from rich.table import Table

    def rate(r: dict) -> str:
        return "–" if not r or r.get("rate") is None else f"{r['agree']}/{r['n']} {r['rate']:.0%} " \
            f"({r['ci95'][0]:.0%}–{r['ci95'][1]:.0%})"

    table = Table("model", "step agreement (95% CI)", "first call", "episode", "repeats rejected", "invalid",
                  "would escalate", title=f"{report['store']} · {report['good_steps']} held-out steps")
    for name, m in report["models"].items():
        table.add_row(name, rate(m["step_agreement"]), rate(m["first_call_agreement"]), rate(m["episode_agreement"]),
                      rate(m["repeats_rejected"]), f"{m['invalid_call_rate']:.0%}", f"{m['escalation_rate']:.0%}")
    console.print(table)
    for pair, t in report["mcnemar"].items():
        console.print(f"McNemar {pair}: {t['only_a']} vs {t['only_b']} discordant, p = {t['p_value']:.3g}")


# The command groups register themselves on `app` / `traces_app`.
from fcagent.cli import pipeline, data, training, serving, traces  # noqa: E402,F401,I001  (the order `--help` lists them in)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
