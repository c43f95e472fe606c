"""`fcagent train`, `fcagent export-gguf` and `fcagent soup`: a student from exported rows, as GGUF, and
students averaged into one."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from fcagent.cli.app import app, console
from fcagent.cli.options import DEFAULT_MODEL, MODEL_HELP, MethodChoice
from fcagent.core.errors import UserError


class GgufChoice(str, Enum):
    f16 = "f16"
    q8_0 = "q8_0"


@app.command("train")
def train_cmd(pairs: Annotated[Path, typer.Option(help="Export folder (pairs.jsonl / sft.jsonl) or a saved dataset.")],
              model: Annotated[str, typer.Option("--model", "-m", envvar="FCAGENT_MODEL",
                                                 help="The student to train (its base): " + MODEL_HELP)] = DEFAULT_MODEL,
              method: Annotated[MethodChoice, typer.Option(help="What to train: sft, dpo, rpo, sft-dpo, sft-rpo, or "
                                                           "sft-chosen (the matched-compute control).")] = MethodChoice.dpo,
              out: Annotated[Path, typer.Option("--out", help="Run folder.")] = Path("runs/student"),
              epochs: Annotated[Optional[float], typer.Option(min=0.01, max=1000, help="Epochs.")] = None,
              max_optimizer_steps: Annotated[Optional[int], typer.Option(
                  "--max-optimizer-steps", min=1, max=10_000_000, help="Optimizer steps (overrides --epochs).")] = None,
              seed: Annotated[Optional[int], typer.Option(min=0, help="Training seed: the adapter's initial weights "
                                                          "and the order of the batches (default 0).")] = None,
              config: Annotated[Optional[Path], typer.Option(help="YAML file of TrainSettings fields (lora: for LoRA).")] = None,
              merge: Annotated[bool, typer.Option(help="Also write a merged model that loads with plain transformers.")] = False,
              gguf: Annotated[Optional[GgufChoice], typer.Option(
                  help="Also export the student as GGUF of this type for the llama.cpp runtime and Ollama "
                  "(as `fcagent export-gguf`).")] = None,
              trl_defaults: Annotated[bool, typer.Option(help="TRL's own defaults, for comparison.")] = False) -> None:
    """Train the student with TRL (SFT, DPO, RPO, SFT then DPO) and a LoRA adapter."""
    from fcagent.training.settings import LoraSettings, TrainSettings
    from fcagent.training.train import train

    fields, lora = read_train_config(config) if config is not None else ({}, {})
    fields["method"] = method.value
    if epochs is not None:
        fields["epochs"] = epochs
    if max_optimizer_steps is not None:
        fields["max_steps"] = max_optimizer_steps
    if seed is not None:
        fields["seed"] = seed
    if trl_defaults:
        fields["trl_defaults"] = True
    result = train(pairs, model, out, settings=TrainSettings(**fields), lora=LoraSettings(**lora), merge=merge)
    console.print(result.model_dump(mode="json"))
    if gguf is not None:
        from fcagent.training.gguf import export_gguf

        console.print(export_gguf(out, gguf.value).model_dump(mode="json"))


@app.command("export-gguf")
def export_gguf_cmd(run: Annotated[Path, typer.Argument(help="A trained run folder (fcagent_run.json).")],
                    type_: Annotated[GgufChoice, typer.Option("--type", help="f16, or q8_0 (8-bit, about half the "
                                                              "size).")] = GgufChoice.q8_0) -> None:
    """Export a trained student as GGUF (adapters merged, llama.cpp's converter) for the llama.cpp runtime
    (`-m RUN?runtime=llama.cpp`) and Ollama (the Modelfile written beside it)."""
    from fcagent.training.gguf import export_gguf

    console.print(export_gguf(run, type_.value).model_dump(mode="json"))


def read_train_config(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
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
    for where, mapping in ((path, data), (f"{path}: lora", lora)):
        odd = [k for k in mapping if not isinstance(k, str)]
        if odd:
            raise UserError(f"`--config` {where}: field names must be text, got {odd[0]!r}")
    return data, lora


@app.command("soup")
def soup_cmd(model: Annotated[list[str], typer.Option("--model", "-m", help="A student to average (a run folder or "
                                                      "local model); repeat, two or more.")],
             out: Annotated[Path, typer.Option("--out", help="Run folder for the soup (new, or an earlier soup's).")] = Path("runs/soup")) -> None:
    """Average students of one base model into one (a model soup): epoch snapshots, seeds, adapter ranks."""
    from fcagent.training.soup import average_students

    console.print(average_students(model, out).model_dump(mode="json"))
