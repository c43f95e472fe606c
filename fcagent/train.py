"""Training the student: TRL's DPOTrainer / SFTTrainer with a PEFT LoRA adapter.

Methods: `dpo` (preference pairs), `sft` (the chosen completions only, the baseline), `rpo` (DPO plus
an NLL term on the chosen side: TRL's `loss_type=["sigmoid", "sft"]`), `sft-dpo` (SFT first, merged,
then DPO from there), `sft-rpo` (the same warm start, then rpo: measured on BFCL, DPO after SFT
pushed the chosen log-prob down with the rejected one and lost to SFT; the NLL term holds it up). Defaults are set for the bundled 135M model on a 2-core CPU and are the same on
a GPU (`accelerate launch -m fcagent train ...` for several): gradient checkpointing off (memory is
not the limit), bf16 on GPUs only (on this CPU it made TRL's DPO step slower, see `_bf16_available`),
LoRA dropout 0 (it cost ~2 of 12 s per step here), reference log-probs precomputed once when
training runs more than one epoch. TRL's defaults (lr
1e-6, checkpointing on) are kept one flag away (`--trl-defaults`) for comparison.

The run folder describes itself: `fcagent_run.json` (base model, method, settings, data stats,
prompt style, the adapter's sha256), `adapter/` (safetensors), `metrics.jsonl`, `training.png`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fcagent.errors import UserError
from fcagent.export import ExportError, load_pairs
from fcagent.models import RUN_MANIFEST, file_digest

__all__ = ["LoraSettings", "TrainSettings", "TrainResult", "train", "train_dpo", "train_sft", "RUN_MANIFEST",
           "adapter_digest"]

Method = Literal["dpo", "sft", "rpo", "sft-dpo", "sft-rpo"]
WARM_STARTED = ("sft-dpo", "sft-rpo")


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA scaling alpha.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout; 0 by default: on CPU it cost ~2 of 12 s per step (measured).")
    target_modules: str | list[str] = Field("all-linear", description="Modules that get adapters.")


class TrainSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field in a --config file is an error, not ignored

    method: Method = Field("dpo", description="dpo, sft, rpo, sft-dpo or sft-rpo.")
    epochs: float = Field(3.0, gt=0, description="Passes over the data (ignored when max_steps > 0).")
    max_steps: int = Field(-1, ge=-1, description="Optimizer steps; -1 means use epochs.")
    learning_rate: float | None = Field(None, gt=0, lt=1, description="Default 1e-4 for preference methods, 2e-4 for SFT.")
    beta: float = Field(0.1, gt=0, description="DPO beta.")
    rpo_alpha: float = Field(1.0, ge=0, description="Weight of the NLL term in rpo.")
    batch_size: int = Field(2, ge=1, description="Rows per device step.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    max_length: int = Field(1024, ge=16, description="Tokens per prompt+completion; longer prompts are dropped (reported).")
    bf16: bool | None = Field(None, description="None: on for GPUs with bf16, off on the CPU (measured slower under TRL).")
    gradient_checkpointing: bool = Field(False, description="Off: faster here and memory is not the limit.")
    precompute_ref_log_probs: bool | None = Field(None, description="None: on when epochs > 1.")
    sft_epochs: float = Field(3.0, gt=0, description="SFT epochs of the sft-dpo warm start.")
    warm_start: str | None = Field(None, description="sft-dpo/sft-rpo: an SFT run folder to start from instead of training one.")
    seed: int = 0
    trl_defaults: bool = Field(False, description="Use TRL's own defaults (lr 1e-6, checkpointing) for comparison.")
    prompt_style: str = Field("examples", description="Prompt the student was trained with (recorded for eval).")


class TrainResult(BaseModel):
    run_dir: Path
    method: str
    rows: int
    dropped: dict[str, int]
    steps: int
    seconds: float
    tokens_per_second: float
    final_metrics: dict[str, float]


def _bf16_available() -> bool:
    """bf16 by default on GPUs that support it, not on the CPU: measured here under TRL, bf16 autocast
    made a DPO step slower (16.9 vs 12.7 s, benchmarks/dpo_throughput.py) although raw PyTorch
    forward+backward of the same batch was 2.2x faster with it. `bf16=True` keeps it one flag away."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def adapter_digest(adapter_dir: Path) -> str:
    return file_digest(adapter_dir / "adapter_model.safetensors")


def _load_student(spec: str):
    from fcagent.local_model import LocalChatModel
    from fcagent.models import load_chat_model

    model = load_chat_model(spec)
    if not isinstance(model, LocalChatModel):
        raise UserError(f"`student` must be a local model (bundled:NAME, a folder or a hub id), got {spec!r}")
    return model


def _length_report(rows: list[dict[str, Any]], tokenizer: Any, max_length: int,
                   kind: str) -> tuple[list[int], dict[str, int], list[int]]:
    """Rows TRL will keep, why the others go (TRL drops them without a word), and tokens per row."""
    keep, dropped, tokens = [], {}, []

    def count(messages: list[dict[str, Any]], tools: Any, generation: bool) -> int:
        ids = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=generation, tokenize=True)
        return len(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "input_ids") else ids)

    for i, row in enumerate(rows):
        tools = json.loads(row.get("tools") or "[]") or None
        prompt = row["prompt"] if kind == "dpo" else row["messages"][:-1]
        n_prompt = count(prompt, tools, True)
        if n_prompt >= max_length:
            dropped["prompt longer than max_length"] = dropped.get("prompt longer than max_length", 0) + 1
            continue
        keep.append(i)
        if kind == "dpo":  # one forward pass each over prompt+chosen and prompt+rejected
            tokens.append(count(prompt + row["chosen"], tools, False) + count(prompt + row["rejected"], tools, False))
        else:
            tokens.append(count(row["messages"], tools, False))
    return keep, dropped, tokens


class _LiveMetrics:
    """A TrainerCallback that shows progress and DPO metrics live and appends them to metrics.jsonl."""

    def __new__(cls, path: Path, total: int, label: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        from transformers import TrainerCallback

        class Callback(TrainerCallback):
            def __init__(self) -> None:
                self.path = path
                self.rows: list[dict[str, Any]] = []
                self.progress = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                                         TextColumn("{task.fields[status]}"), TimeElapsedColumn())
                self.bar = None

            def on_train_begin(self, args, state, control, **kw):
                self.progress.start()
                self.bar = self.progress.add_task(label, total=state.max_steps or total, status="")

            def on_step_end(self, args, state, control, **kw):
                self.progress.update(self.bar, completed=state.global_step)

            def on_log(self, args, state, control, logs=None, **kw):
                if not logs:
                    return
                row = {"step": state.global_step, **{k: float(v) for k, v in logs.items() if isinstance(v, int | float)}}
                self.rows.append(row)
                with self.path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                shown = {k: row[k] for k in ("loss", "rewards/margins", "rewards/accuracies") if k in row}
                self.progress.update(self.bar, status=" ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in shown.items()))

            def on_train_end(self, args, state, control, **kw):
                self.progress.stop()

        return Callback()


def _plot(metrics: list[dict[str, Any]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected")
            if any(k in m for m in metrics)]
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(m["step"], m[key]) for m in metrics if key in m]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".")
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _sft_rows_from_pairs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen, out = set(), []
    for r in rows:
        key = json.dumps([r["prompt"], r["chosen"]], sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append({"messages": [*r["prompt"], *r["chosen"]], "tools": r.get("tools", "[]")})
    return out


def _read_rows(pairs: str | Path, kind: str) -> list[dict[str, Any]]:
    path = Path(pairs)
    if kind == "sft":
        sft_file = path / "sft.jsonl" if path.is_dir() else None
        if sft_file is not None and sft_file.exists():
            return load_pairs(sft_file, "sft").to_list()
        return _sft_rows_from_pairs(load_pairs(path, "dpo").to_list())
    return load_pairs(path, "dpo").to_list()


def _trainer_args(settings: TrainSettings, out: Path, kind: str) -> Any:
    import torch
    from trl import DPOConfig, SFTConfig

    lr = settings.learning_rate or (2e-4 if kind == "sft" else 1e-4)
    common: dict[str, Any] = dict(
        output_dir=str(out / "trainer"), per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum, num_train_epochs=settings.epochs if kind != "sft-warm" else settings.sft_epochs,
        max_steps=settings.max_steps, learning_rate=lr, logging_steps=1, save_strategy="no", report_to=[],
        seed=settings.seed, max_length=settings.max_length, use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=settings.gradient_checkpointing, bf16=settings.bf16 if settings.bf16 is not None else _bf16_available(),
        lr_scheduler_type="constant_with_warmup", warmup_steps=0, dataloader_num_workers=0)
    if settings.trl_defaults:
        for key in ("learning_rate", "gradient_checkpointing", "bf16", "lr_scheduler_type", "warmup_steps"):
            common.pop(key)
    if kind in ("sft", "sft-warm"):
        return SFTConfig(**common, completion_only_loss=True)
    precompute = settings.precompute_ref_log_probs
    if precompute is None:
        precompute = settings.max_steps <= 0 and settings.epochs > 1
    extra: dict[str, Any] = {"beta": settings.beta, "precompute_ref_log_probs": precompute}
    if kind == "rpo":
        extra |= {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, settings.rpo_alpha]}
    return DPOConfig(**common, **extra)


def _fit(kind: str, model: Any, tokenizer: Any, rows: list[dict[str, Any]], settings: TrainSettings,
         lora: LoraSettings, out: Path, label: str) -> tuple[Any, list[dict[str, Any]], int]:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOTrainer, SFTTrainer

    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=lora.target_modules, task_type="CAUSAL_LM")
    args = _trainer_args(settings, out, kind)
    steps_per_epoch = math.ceil(len(rows) / (settings.batch_size * settings.grad_accum))
    total = settings.max_steps if settings.max_steps > 0 else math.ceil(steps_per_epoch * args.num_train_epochs)
    live = _LiveMetrics(out / "metrics.jsonl", total, label)
    if kind in ("sft", "sft-warm"):
        data = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:], "tools": r.get("tools", "[]")}
                                  for r in rows])
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                             peft_config=peft_config, callbacks=[live])
    else:
        data = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected", "tools")} for r in rows])
        trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                             peft_config=peft_config, callbacks=[live])
    trainer.train()
    return trainer.model, live.rows, trainer.state.global_step


def train(pairs: str | Path, student: str, output_dir: str | Path, *, settings: TrainSettings | None = None,
          lora: LoraSettings | None = None, merge: bool = False) -> TrainResult:
    """Train `student` on an export folder; writes a self-describing run folder."""
    import torch

    settings = settings or TrainSettings()
    lora = lora or LoraSettings()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    torch.manual_seed(settings.seed)
    chat = _load_student(student)
    model, tokenizer = chat.hf_model, chat.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kind = "sft" if settings.method == "sft" else "dpo"
    try:
        rows = _read_rows(pairs, kind)
    except ExportError as exc:
        raise UserError(f"`pairs` {pairs}: {exc}") from exc
    keep, dropped, row_tokens = _length_report(rows, tokenizer, settings.max_length, kind)
    rows = [rows[i] for i in keep]
    if not rows:
        raise UserError(f"no training rows left from {pairs} (dropped: {dropped}); raise `max_length` or export more data")
    started = time.perf_counter()
    stack: list[str] = []
    metrics: list[dict[str, Any]] = []
    steps = 0
    if settings.method in WARM_STARTED and settings.warm_start:
        import shutil

        from peft import PeftModel

        warm = Path(settings.warm_start)
        if not (warm / "adapter" / "adapter_model.safetensors").exists():
            raise UserError(f"`warm_start` {warm} is not an SFT run folder (no adapter/adapter_model.safetensors)")
        shutil.copytree(warm / "adapter", out / "sft_adapter", dirs_exist_ok=True)
        model = PeftModel.from_pretrained(model, out / "sft_adapter").merge_and_unload()
        stack.append("sft_adapter")
    elif settings.method in WARM_STARTED:
        sft_rows = _sft_rows_from_pairs(rows)
        model, m, s = _fit("sft-warm", model, tokenizer, sft_rows, settings, lora, out, "sft warm start")
        model.save_pretrained(out / "sft_adapter")
        stack.append("sft_adapter")
        model = model.merge_and_unload()
        metrics += [{**r, "phase": "sft"} for r in m]
        steps += s
    method_kind = {"dpo": "dpo", "rpo": "rpo", "sft": "sft", "sft-dpo": "dpo", "sft-rpo": "rpo"}[settings.method]
    model, m, s = _fit(method_kind, model, tokenizer, rows, settings, lora, out, settings.method)
    metrics += m
    steps += s
    seconds = time.perf_counter() - started
    model.save_pretrained(out / "adapter")
    stack.append("adapter")
    tokenizer.save_pretrained(out / "adapter")
    # Tokens the policy saw: rows per step x steps, at the mean row length (the reference pass not counted).
    tokens_seen = sum(row_tokens) / len(row_tokens) * steps * settings.batch_size * settings.grad_accum
    manifest = {
        "base_model": student, "method": settings.method, "settings": settings.model_dump(mode="json"),
        "lora": lora.model_dump(mode="json"), "adapters": stack,
        "adapter_sha256": {name: adapter_digest(out / name) for name in stack},
        "data": {"source": str(pairs), "rows": len(rows), "dropped": dropped}, "prompt_style": settings.prompt_style,
        "steps": steps, "seconds": round(seconds, 1), "tokens_per_second": round(tokens_seen / max(seconds, 1e-9), 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / RUN_MANIFEST).write_text(json.dumps(manifest, indent=2))
    step_rows = [m for m in metrics if "loss" in m]
    (out / "metrics.json").write_text(json.dumps({"last_step": step_rows[-1] if step_rows else {},
                                                  "summary": metrics[-1] if metrics else {}}, indent=2))
    _plot(metrics, out / "training.png", f"{settings.method} · {student} · {len(rows)} rows")
    if merge:
        merged = model.merge_and_unload()
        merged.save_pretrained(out / "merged")
        tokenizer.save_pretrained(out / "merged")
        manifest["merged_sha256"] = file_digest(out / "merged" / "model.safetensors")
        (out / RUN_MANIFEST).write_text(json.dumps(manifest, indent=2))
    final = {k: v for k, v in (step_rows[-1] if step_rows else {}).items() if isinstance(v, float)}
    return TrainResult(run_dir=out, method=settings.method, rows=len(rows), dropped=dropped, steps=steps,
                       seconds=seconds, tokens_per_second=tokens_seen / max(seconds, 1e-9),
                       final_metrics=final)


def train_dpo(pairs: str | Path, student: str, *, output_dir: str | Path, lora: LoraSettings | None = None,
              config: TrainSettings | None = None, merge: bool = False) -> TrainResult:
    """DPO + LoRA (TRL DPOTrainer) on exported preference pairs."""
    settings = (config or TrainSettings()).model_copy(update={"method": (config.method if config and config.method != "sft" else "dpo")})
    return train(pairs, student, output_dir, settings=settings, lora=lora, merge=merge)


def train_sft(pairs: str | Path, student: str, *, output_dir: str | Path, lora: LoraSettings | None = None,
              config: TrainSettings | None = None, merge: bool = False) -> TrainResult:
    """The SFT baseline (TRL SFTTrainer, completion-only loss) on the same good completions."""
    settings = (config or TrainSettings()).model_copy(update={"method": "sft"})
    return train(pairs, student, output_dir, settings=settings, lora=lora, merge=merge)
