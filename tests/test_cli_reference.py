"""The CLI's help is complete and its reference page is what the commands print."""

from pathlib import Path

import typer

from fcagent.cli import reference
from fcagent.cli.app import app

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def _commands(command, path):
    yield path, command
    if hasattr(command, "list_commands"):
        ctx = command.context_class(command, info_name=path[-1])
        for name in command.list_commands(ctx):
            yield from _commands(command.get_command(ctx, name), [*path, name])


def test_every_command_and_option_has_help():
    missing = []
    for path, command in _commands(typer.main.get_command(app), ["fcagent"]):
        if not (command.help or "").strip():
            missing.append(" ".join(path))
        for param in command.params:
            if param.name != "help" and not (getattr(param, "help", None) or "").strip():
                missing.append(f"{' '.join(path)} {param.opts[0] if param.opts else param.name}")
    assert not missing, "no help text: " + ", ".join(missing)


def test_the_reference_page_is_what_the_commands_print():
    assert DOCS.read_text() == reference.render(), \
        "docs/cli.md drifted from the commands: python -m fcagent.cli.reference > docs/cli.md"


def test_the_cli_and_the_store_agree_on_the_default_store_name():
    from fcagent.cli.options import DEFAULT_STORE
    from fcagent.tracing.store import DEFAULT_STORE as STORE_DEFAULT

    assert DEFAULT_STORE == STORE_DEFAULT
