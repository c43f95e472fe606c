"""Every command of the CLI, every option, fed values that are wrong for it (generated from the
option's own type: below its range, not one of its choices, not a number, a missing file, a folder,
binary garbage, an SQLite store where text is expected, a model spec nobody has): each must end with
a non-zero exit and a message, never a traceback, and never succeed."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fcagent.cli.app import app
from fcagent.pipeline.harvest import harvest

pytestmark = pytest.mark.slow  # runs every command

FREE_TEXT = {"reason", "source", "seed", "project", "tags"}  # any value is a valid value


def _commands(group, prefix: tuple[str, ...] = ()):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


def _annotation(param):
    kind = param.type_descriptor.annotation
    return getattr(kind, "__args__", (kind,))[0] if getattr(kind, "__origin__", None) is list else kind


WRITES_STORE = {("run",), ("harvest",), ("distill",), ("serve",), ("traces", "import"), ("traces", "import-otlp"), ("traces", "demo")}  # a new store (and its folder) is made there


def _bad_values(param, tmp, path: tuple[str, ...]) -> list[str]:
    """Values that are wrong for `param`, from its own type (typer's parameters describe their annotation)."""
    kind = _annotation(param)
    values: list[str] = []
    if kind in (int, float):
        if param.min is not None:
            values.append(str(param.min - 1))
        if param.max is not None:
            values.append(str(param.max + 1))
        values.append("many")
    elif isinstance(kind, type) and issubclass(kind, Enum):
        values.append("bogus-choice")
    elif kind is Path or param.name in ("store", "pairs", "config", "data_dir", "file", "path", "out"):
        values.append(str(tmp["garbage"]))  # binary junk where a store, a text file or a folder belongs
        if param.name == "store" and path not in WRITES_STORE:
            values.append(str(tmp["folder"] / "missing" / "deeper.db"))
        if param.name in ("config", "file", "path", "pairs", "data_dir"):
            values.append(str(tmp["missing"]))
        if param.name in ("config", "file", "path", "pairs"):
            values.append(str(tmp["empty"]))
    elif param.name in ("model", "student", "teacher"):
        values += ["nope:zzz-model", "./no/such/run"]
    elif param.name == "task":
        values += ["chess", "math:"]
    elif param.name in ("target_ids", "episode_id"):
        values += ["zzzzzzzz"]
    return values


def _base(path: tuple[str, ...], tmp) -> list[str]:
    """Arguments that make each command quick, so that the bad value is what decides."""
    store = str(tmp["store"])
    return {
        ("run",): ["--model", "reference", "--task", "math", "--limit", "1"],
        ("harvest",): ["--task", "math", "--limit", "1", "--store", str(tmp["folder"] / "h.db")],
        ("export",): ["--store", store, "--out", str(tmp["folder"] / "exp")],
        ("train",): ["--pairs", str(tmp["missing"])],
        ("replay",): ["-m", "nope:zzz-model", "--store", store],
        ("soup",): ["-m", "nope:zzz-model", "-m", "./no/such/run", "--out", str(tmp["folder"] / "sp")],
        ("eval",): ["--model", "reference", "--task", "math", "--limit", "1", "--out", str(tmp["folder"] / "ev")],
        ("distill",): ["--out", str(tmp["folder"] / "d"), "--teacher", "nope:zzz-model"],
        ("compare",): [str(tmp["folder"]), "--method", "sft-dpo", "--out", str(tmp["folder"] / "cmp")],
        ("traces", "ls"): ["--store", store],
        ("traces", "show"): ["--store", store],
        ("traces", "stats"): ["--store", store],
        ("traces", "export"): [str(tmp["folder"] / "x.jsonl"), "--store", store],
        ("traces", "import"): [str(tmp["garbage"]), "--store", str(tmp["folder"] / "i.db")],
        ("traces", "label"): ["zzzzzzzz", "--good", "--store", store],
        ("traces", "import-langsmith"): ["--project", "p", "--store", store],
        ("traces", "import-otlp"): [str(tmp["garbage"]), "--store", str(tmp["folder"] / "io.db")],
        ("traces", "export-otlp"): [str(tmp["folder"] / "x.otlp.jsonl"), "--store", store],
        ("traces", "demo"): ["--store", str(tmp["folder"] / "demo.db"), "--limit", "1"],
        ("traces", "migrate"): ["--from", store, "--to", str(tmp["folder"] / "m.db")],
        ("export-gguf",): [str(tmp["missing"])],
        ("serve",): ["--student", "nope:zzz-model"],  # never starts: the model spec is no model
    }[path]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    garbage = root / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 8)
    store = root / "store.db"
    harvest(task="math", limit=2, store=store)
    (root / "empty").mkdir()
    return {"folder": root, "garbage": garbage, "missing": root / "missing.file", "store": store, "empty": root / "empty"}


def test_every_command_and_option_refuses_bad_values_with_a_message(tmp, monkeypatch):
    monkeypatch.chdir(tmp["folder"])
    monkeypatch.delenv("LANGSMITH_API_KEY", raising=False)
    monkeypatch.delenv("LANGCHAIN_API_KEY", raising=False)
    runner = CliRunner()
    command = typer.main.get_command(app)
    tried = 0
    for path, cmd in _commands(command):
        base = _base(path, tmp)
        # the base arguments alone: these fail fast (a missing file, a model nobody has) or succeed
        for param in cmd.params:
            if param.name in FREE_TEXT or getattr(param, "is_flag", False) or param.name == "help":
                continue
            for value in _bad_values(param, tmp, path):
                if param.param_type_name == "argument":
                    args = [*path, value, *[a for a in base if not a.startswith(str(tmp["folder"]) + "/x")]]
                    if path == ("traces", "label"):
                        args = [*path, value, "--good", "--store", str(tmp["store"])]
                    elif path == ("traces", "import"):
                        args = [*path, value, "--store", str(tmp["folder"] / "i.db")]
                    elif path == ("traces", "export"):
                        args = [*path, value, "--store", str(tmp["store"])]
                    elif path == ("traces", "show"):
                        args = [*path, value, "--store", str(tmp["store"])]
                else:
                    flag = param.opts[0]
                    args = [*path, *base, flag, value]
                result = runner.invoke(app, args, env={"COLUMNS": "300"})
                tried += 1
                where = f"{' '.join(args)}\n{result.output[-600:]}"
                assert result.exit_code not in (0, None), f"silent success: {where}"
                assert result.exception is None or isinstance(result.exception, SystemExit), \
                    f"traceback {type(result.exception).__name__}: {result.exception}: {where}"
                assert "Traceback" not in result.output, where
                assert result.output.strip(), f"no message: {where}"
    assert tried > 60
