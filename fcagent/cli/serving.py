"""`fcagent serve`: the student behind an OpenAI-compatible endpoint, with escalation and recording."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from fcagent.cli.app import app
from fcagent.cli.options import DEFAULT_MODEL, MODEL_HELP


class ValidateChoice(str, Enum):
    grounded = "grounded"
    any = "any"


@app.command("serve")
def serve_cmd(student: Annotated[str, typer.Option(envvar="FCAGENT_MODEL", help="The student that answers: " + MODEL_HELP)
                                ] = DEFAULT_MODEL,
              teacher: Annotated[Optional[str], typer.Option(help="Answers when the student's reply fails the check "
                                                             "(any model spec, provider:model).")] = None,
              host: Annotated[str, typer.Option(help="Interface to listen on; anything but loopback needs an API key.")] = "127.0.0.1",
              port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
              store: Annotated[Optional[str], typer.Option(
                  "--store", envvar="FCAGENT_STORE", help="Record every request as an episode in this trace store, "
                  "and take POST /v1/feedback (default: $FCAGENT_STORE; neither set: nothing is recorded).")] = None,
              api_key: Annotated[Optional[str], typer.Option(envvar="FCAGENT_API_KEY", help="Required as `Authorization: Bearer KEY`.")] = None,
              validate: Annotated[ValidateChoice, typer.Option(help="How an answer in words is checked before it stands.")] = ValidateChoice.grounded,
              shadow: Annotated[bool, typer.Option("--shadow", help="The teacher answers every request; the student "
                                                   "answers it too, off the request path, and both are stored (with "
                                                   "--store) for `fcagent eval --store --shadow`.")] = False,
              max_tokens: Annotated[int, typer.Option(min=1, max=32768, help="Most tokens a request may ask for.")] = 1024,
              max_body_bytes: Annotated[int, typer.Option(min=1000, max=1_000_000_000, help="Largest request body accepted.")] = 1_000_000) -> None:
    """Serve the student behind an OpenAI-compatible endpoint, with escalation and recording."""
    from fcagent.serving.app import ServeSettings, serve

    serve(student, host=host, port=port, teacher=teacher, store=str(store) if store is not None else None,
          validate=validate.value, shadow=shadow,
          settings=ServeSettings(api_key=api_key, max_tokens_limit=max_tokens, max_body_bytes=max_body_bytes))
