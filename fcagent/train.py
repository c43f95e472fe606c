"""Training the student: TRL's DPOTrainer / SFTTrainer with a PEFT LoRA adapter.

Methods (`METHODS`): `sft` (the baseline: the good replies only), `dpo` (preference pairs), `rpo` (DPO
plus an NLL term on the chosen side: TRL's `loss_type=["sigmoid", "sft"]`), `sft-dpo` / `sft-rpo` (an
SFT warm start, merged, then the preference method from there), and `sft-chosen`, the matched-compute
control for those two: the same warm start, then SFT on the pairs' chosen side, one row per pair, with
the preference settings (the same rows, batches and optimizer steps; the loss differs, and so does the
default learning rate, each method's own: 2e-4 for SFT, 1e-4 for DPO). One entry point, `train()`.

What makes a step cheap here, each lever a setting so `benchmarks/training.py` can compare it with
TRL's own path on the same rows:

* **whole-chain SFT rows** (the exporter's default): one conversation per episode, the loss on every
  assistant turn (TRL's `assistant_only_loss` with fcagent's training chat template,
  `fcagent.chat_templates`), instead of a row per step that repeats the history each time;
* **the compact student prompt** (`prompt_style`, read from the export): signatures, no worked
  examples; recorded in the run folder, so the student is served with it;
* **bf16 frozen weights** (`base_dtype`): the base model in bf16 where the CPU or GPU has bf16 matrix
  units, the LoRA weights and optimizer in fp32 (bf16 *autocast* under TRL was slower here);
* **length-grouped batches** (`group_by_length`): less padding in mixed-length batches;
* **prefix-shared DPO** (`prefix_sharing`, `fcagent.trainers`): each pair's prompt runs once;
* **the compact LM head** (`compact_head`, `fcagent.trainers`): the 49k-token head runs only where a
  label is scored (TRL scores every position on a CPU).

Other defaults, set for the bundled 135M model on a 2-core CPU and the same on a GPU: gradient
checkpointing off (memory is not the limit), LoRA dropout 0 (it cost ~2 of 12 s per step here),
reference log-probs precomputed once past one epoch. `--trl-defaults` runs TRL's own (lr 1e-6,
checkpointing, per-step rows as given, no fcagent lever) for comparison.

The run folder describes itself: `fcagent_run.json` (base model, method, settings, data stats,
prompt style, the adapter's sha256), `adapter/` (safetensors), `metrics.jsonl`, `training.png`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from fcagent.errors import UserError
from fcagent.export import ExportError, load_pairs
from fcagent.models import RUN_MANIFEST, RunManifest, file_digest, save_whole_model

__all__ = ["LoraSettings", "TrainSettings", "TrainResult", "train", "train_dpo", "train_sft", "RUN_MANIFEST",
           "adapter_digest", "METHODS", "PREFERENCE_METHODS", "PAIR_METHODS", "WARM_STARTED", "Method"]

Method = Literal["sft", "dpo", "rpo", "sft-dpo", "sft-rpo", "sft-chosen"]
METHODS: tuple[str, ...] = get_args(Method)
PREFERENCE_METHODS: tuple[str, ...] = ("dpo", "rpo", "sft-dpo", "sft-rpo")
# Methods that read preference pairs (sft-chosen reads their chosen side only).
PAIR_METHODS: tuple[str, ...] = (*PREFERENCE_METHODS, "sft-chosen")
WARM_STARTED: tuple[str, ...] = ("sft-dpo", "sft-rpo", "sft-chosen")


class LoraSettings(BaseModel):
    """PEFT's LoraConfig fields (its names; fcagent's older short names still read)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, validation_alias=AliasChoices("lora_alpha", "alpha"), description="LoRA scaling alpha.")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, validation_alias=AliasChoices("lora_dropout", "dropout"),
                                description="LoRA dropout; 0 by default: on CPU it cost ~2 of 12 s per step (measured).")
    target_modules: str | list[str] = Field("all-linear", description="Modules that get adapters.")


class TrainSettings(BaseModel):
    """One training run's settings: TRL's field names where the field is TRL's (`num_train_epochs`,
    `per_device_train_batch_size`, ...; the older short names still read), fcagent's levers after."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)  # a misspelt --config field is an error

    method: Method = Field("dpo", description="One of METHODS.")
    num_train_epochs: float = Field(3.0, gt=0, validation_alias=AliasChoices("num_train_epochs", "epochs"),
                                    description="Passes over the data (ignored when max_steps > 0).")
    max_steps: int = Field(-1, ge=-1, description="Optimizer steps; -1 means use num_train_epochs.")
    learning_rate: float | None = Field(None, gt=0, lt=1, description="Default 1e-4 for preference methods, 2e-4 for SFT.")
    beta: float = Field(0.1, gt=0, description="DPO beta.")
    rpo_alpha: float = Field(1.0, ge=0, description="Weight of the NLL term in rpo.")
    per_device_train_batch_size: int = Field(2, ge=1, validation_alias=AliasChoices("per_device_train_batch_size", "batch_size"),
                                             description="Rows per forward pass (a DPO row is a pair).")
    gradient_accumulation_steps: int = Field(1, ge=1, validation_alias=AliasChoices("gradient_accumulation_steps", "grad_accum"),
                                             description="Passes per optimizer step.")
    max_length: int = Field(2048, ge=16, description="Tokens per row; rows whose prompt is longer are dropped (reported).")
    bf16: bool | None = Field(None, description="TRL's bf16 autocast. None: on for GPUs with bf16, off on the CPU "
                              "(measured slower under TRL; `base_dtype` is the CPU's bf16 lever).")
    gradient_checkpointing: bool = Field(False, description="Off: faster here and memory is not the limit.")
    precompute_ref_log_probs: bool | None = Field(None, description="None: on when training runs more than one epoch.")
    seed: int = 0
    warm_start: str | None = Field(None, description="sft-dpo/sft-rpo/sft-chosen: an SFT run folder to start from "
                                   "instead of training one.")
    sft_epochs: float = Field(3.0, gt=0, description="Epochs of the SFT warm start when no `warm_start` is given.")
    trl_defaults: bool = Field(False, description="TRL's own defaults and path (no fcagent lever), for comparison.")
    # fcagent's levers
    base_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="The frozen base weights' dtype (LoRA weights stay fp32). auto: bfloat16 where the "
        "machine has bf16 matrix units (CUDA, or a CPU with AMX / AVX512-BF16), else float32.")
    group_by_length: bool = Field(True, description="Batch rows of similar length (less padding).")
    prefix_sharing: bool = Field(True, description="DPO: each pair's prompt runs once (fcagent.trainers).")
    compact_head: bool = Field(True, description="The LM head only at the scored positions (fcagent.trainers).")
    last_turn_weight: float = Field(
        1.0, ge=1.0, le=1000.0, description="SFT: the loss weight of each row's last assistant turn (a whole "
        "chain's final call; needs `compact_head`). Where one token decides the answer after many routine ones "
        "(ProntoQA: True/False after ~140 tokens of lookups), that token gets 1/140 of a row's loss at weight 1.")
    full_finetune: bool = Field(
        False, description="SFT: train every weight of the student instead of a LoRA adapter. The weights train in "
        "float32 (in bfloat16 most of AdamW's small updates would round away), and the run folder holds the whole "
        "model (`merged/`) instead of an adapter. Default learning rate 5e-5.")
    save_epochs: bool = Field(False, description="SFT: keep the adapter after every epoch as a run folder of its own "
                              "(`epochs/N`), so held-out accuracy can be plotted against epochs.")
    prompt_style: Literal["examples", "compact"] | None = Field(
        None, description="The prompt style the rows were exported with; None reads it from the export's stats.")


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


def _base_dtype(settings: TrainSettings) -> Any:
    """The dtype the student loads in: the frozen base weights' (see `TrainSettings.base_dtype`), or
    float32 where every weight trains (`full_finetune`)."""
    import torch

    if settings.trl_defaults or settings.full_finetune:
        return torch.float32
    if settings.base_dtype != "auto":
        return getattr(torch, settings.base_dtype)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    try:  # oneDNN's bf16 kernels need AVX512-BF16 or AMX; elsewhere bf16 matmuls are emulated (slower)
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32
    except (AttributeError, RuntimeError):
        return torch.float32


def _load_student(spec: str, dtype: Any = None):
    from fcagent.local_model import LocalChatModel
    from fcagent.models import load_chat_model

    model = load_chat_model(spec, **({"dtype": dtype} if dtype is not None else {}))
    if not isinstance(model, LocalChatModel):
        raise UserError(f"`student` must be a local model (bundled:NAME, a folder or a hub id), got {spec!r}")
    return model


def _conversations(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SFT rows with every assistant turn's `train` flag set: rows exported before the flags existed
    (a row per step, its history included) train only their last turn."""
    out = []
    for row in rows:
        messages = [dict(m) for m in row["messages"]]
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if not any(m.get("train") is not None for m in messages):
            for i in turns:
                messages[i]["train"] = i == turns[-1]
        for m in messages:
            if m["role"] == "assistant" and m.get("train") is None:
                m["train"] = True
        out.append({"messages": messages, "tools": row.get("tools", "[]")})
    return out


def _steps_of(conversation: dict[str, Any]) -> list[dict[str, Any]]:
    """A conversation as prompt/completion rows, one per trained turn (TRL's per-step form)."""
    messages = [{k: v for k, v in m.items() if k != "train"} for m in conversation["messages"]]
    return [{"prompt": messages[:i], "completion": [messages[i]], "tools": conversation.get("tools", "[]")}
            for i, m in enumerate(conversation["messages"]) if m["role"] == "assistant" and m.get("train")]


def _export_prompt_style(pairs: str | Path, kind: str) -> str:
    """The prompt style an export folder's rows carry (its stats file says), `examples` when unknown."""
    path = Path(pairs)
    stats = path / f"stats.{kind}.json" if path.is_dir() else path.parent / f"stats.{kind}.json"
    try:
        style = json.loads(stats.read_text())["settings"].get("prompt_style")
    except (OSError, ValueError, KeyError, TypeError):
        return "examples"
    return "compact" if style == "compact" else "examples"


def _length_report(rows: list[dict[str, Any]], tokenizer: Any, max_length: int,
                   kind: str) -> tuple[list[int], dict[str, int], list[int]]:
    """Rows TRL will keep, why the others go (TRL drops them without a word), and tokens per row."""
    keep, dropped, tokens = [], {}, []

    def count(messages: list[dict[str, Any]], generation: bool) -> int:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=generation, tokenize=True)
        return len(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "input_ids") else ids)

    for i, row in enumerate(rows):
        if kind == "dpo":
            n_prompt = count(row["prompt"], True)
            total = count(row["prompt"] + row["chosen"], False) + count(row["prompt"] + row["rejected"], False)
        else:
            first = next(j for j, m in enumerate(row["messages"]) if m["role"] == "assistant")
            n_prompt, total = count(row["messages"][:first], True), count(row["messages"], False)
        if n_prompt >= max_length:
            dropped["prompt longer than max_length"] = dropped.get("prompt longer than max_length", 0) + 1
            continue
        keep.append(i)
        tokens.append(total)
    return keep, dropped, tokens


class _EpochSnapshots:
    """A TrainerCallback that saves the adapter at the end of every epoch as a loadable run folder."""

    def __new__(cls, out: Path, manifest: dict[str, Any], tokenizer: Any = None, *, full: bool = False):
        from transformers import TrainerCallback

        # Made before training swaps the training template in: a snapshot's tokenizer keeps the one
        # inference renders with.
        inference_template = getattr(tokenizer, "chat_template", None)

        class Snapshots(TrainerCallback):
            def on_epoch_end(self, args, state, control, model=None, **kw):
                epoch = max(1, round(state.epoch or 0))
                folder = out / "epochs" / str(epoch)
                if full:  # the whole model, loadable like a merged run
                    training_template, tokenizer.chat_template = tokenizer.chat_template, inference_template
                    try:
                        digest = save_whole_model(model, tokenizer, folder / "merged")
                    finally:
                        tokenizer.chat_template = training_template
                    record = RunManifest(**manifest, epoch=epoch, adapters=[], merged_sha256=digest)
                else:
                    model.save_pretrained(folder / "adapter")
                    record = RunManifest(**manifest, epoch=epoch, adapters=["adapter"],
                                         adapter_sha256={"adapter": adapter_digest(folder / "adapter")})
                (folder / RUN_MANIFEST).write_text(record.model_dump_json(indent=2, exclude_none=True))

        return Snapshots()


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


def _sft_rows_from_pairs(rows: list[dict[str, Any]], *, dedupe: bool = True) -> list[dict[str, Any]]:
    """The pairs' chosen side as SFT rows: each (prompt, chosen) once for a warm start; one row per pair
    for `sft-chosen`, which must see exactly what the preference method sees."""
    seen, out = set(), []
    for r in rows:
        key = json.dumps([r["prompt"], r["chosen"]], sort_keys=True)
        if not dedupe or key not in seen:
            seen.add(key)
            out.append({"messages": [*r["prompt"], *r["chosen"]], "tools": r.get("tools", "[]")})
    return out


def _read_rows(pairs: str | Path, kind: str) -> list[dict[str, Any]]:
    path = Path(pairs)
    if kind == "sft":
        sft_file = path / "sft.jsonl" if path.is_dir() else None
        if sft_file is not None and sft_file.exists():
            return load_pairs(sft_file, "sft").to_list()
        if path.is_file() and path.name.startswith("sft"):
            return load_pairs(path, "sft").to_list()
        return _sft_rows_from_pairs(load_pairs(path, "dpo").to_list())
    return load_pairs(path, "dpo").to_list()


def _trainer_args(settings: TrainSettings, out: Path, kind: str, *, conversational: bool = False) -> Any:
    import torch
    from trl import DPOConfig, SFTConfig

    # A LoRA adapter starts at zero and takes larger steps than a whole pretrained model should.
    default_lr = 5e-5 if settings.full_finetune else 2e-4 if kind in ("sft", "sft-warm") else 1e-4
    lr = settings.learning_rate or default_lr
    epochs = settings.sft_epochs if kind == "sft-warm" else settings.num_train_epochs
    common: dict[str, Any] = dict(
        output_dir=str(out / "trainer"), per_device_train_batch_size=settings.per_device_train_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps, num_train_epochs=epochs,
        max_steps=settings.max_steps, learning_rate=lr, logging_steps=1,
        save_strategy="no", report_to=[], seed=settings.seed, max_length=settings.max_length,
        use_cpu=not torch.cuda.is_available(), gradient_checkpointing=settings.gradient_checkpointing,
        bf16=settings.bf16 if settings.bf16 is not None else _bf16_available(),
        lr_scheduler_type="constant_with_warmup", warmup_steps=0, dataloader_num_workers=0)
    if settings.trl_defaults:
        for key in ("learning_rate", "gradient_checkpointing", "bf16", "lr_scheduler_type", "warmup_steps"):
            common.pop(key)
    if kind in ("sft", "sft-warm"):
        # Whole conversations train every marked assistant turn; prompt/completion rows their completion.
        loss = {"assistant_only_loss": True} if conversational else {"completion_only_loss": True}
        grouped = settings.group_by_length and not settings.trl_defaults
        return SFTConfig(**common, **loss, **({"train_sampling_strategy": "group_by_length"} if grouped else {}))
    precompute = settings.precompute_ref_log_probs
    if precompute is None:
        precompute = settings.max_steps <= 0 and settings.num_train_epochs > 1
    extra: dict[str, Any] = {"beta": settings.beta, "precompute_ref_log_probs": precompute}
    if kind == "rpo":
        extra |= {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, settings.rpo_alpha]}
    return DPOConfig(**common, **extra)


def _fit(kind: str, model: Any, tokenizer: Any, rows: list[dict[str, Any]], settings: TrainSettings,
         lora: LoraSettings, out: Path, label: str,
         snapshot: dict[str, Any] | None = None) -> tuple[Any, list[dict[str, Any]], int]:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOTrainer, SFTTrainer

    from fcagent.chat_templates import training_template
    from fcagent.trainers import CompactHeadSFTTrainer, PrefixSharingDPOTrainer

    peft_config = None if settings.full_finetune else LoraConfig(
        r=lora.r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout, target_modules=lora.target_modules,
        task_type="CAUSAL_LM")
    if kind in ("sft", "sft-warm"):
        conversations = _conversations(rows)
        template = None if settings.trl_defaults else training_template(tokenizer)
        if template is not None:  # whole conversations, the loss on every marked assistant turn
            data_rows = conversations
        else:  # no template that marks assistant turns: a prompt/completion row per trained turn
            data_rows = [step for c in conversations for step in _steps_of(c)]
        args = _trainer_args(settings, out, kind, conversational=template is not None)
    else:
        data_rows, template = [{k: r[k] for k in ("prompt", "chosen", "rejected", "tools")} for r in rows], None
        args = _trainer_args(settings, out, kind)
    steps_per_epoch = math.ceil(len(data_rows) / (settings.per_device_train_batch_size * settings.gradient_accumulation_steps))
    total = args.max_steps if args.max_steps > 0 else math.ceil(steps_per_epoch * args.num_train_epochs)
    live = _LiveMetrics(out / "metrics.jsonl", total, label)
    callbacks = [live, *([_EpochSnapshots(out, snapshot, tokenizer, full=settings.full_finetune)]
                         if snapshot is not None else [])]
    data = Dataset.from_list(data_rows)
    inference_template = tokenizer.chat_template
    try:
        if template is not None:
            tokenizer.chat_template = template  # renders what inference renders, assistant turns marked
        if kind in ("sft", "sft-warm"):
            compact = settings.compact_head and not settings.trl_defaults
            weighting = {"last_turn_weight": settings.last_turn_weight} if compact and kind == "sft" else {}
            trainer_class = CompactHeadSFTTrainer if compact else SFTTrainer
            trainer = trainer_class(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                                    peft_config=peft_config, callbacks=callbacks, **weighting)
        else:
            trainer_class = PrefixSharingDPOTrainer if settings.prefix_sharing and not settings.trl_defaults else DPOTrainer
            trainer = trainer_class(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                                    peft_config=peft_config, callbacks=callbacks)
        trainer.train()
    finally:
        tokenizer.chat_template = inference_template
    return trainer.model, live.rows, trainer.state.global_step


# What a run writes into its folder: a folder holding anything else is not a run folder.
_RUN_OUTPUTS = frozenset({RUN_MANIFEST, "metrics.jsonl", "metrics.json", "training.png", "trainer", "epochs",
                          "adapter", "sft_adapter", "merged"})


def _refuse_foreign_folder(out: Path) -> None:
    """Training again into a run folder replaces that run; training into any other folder (a distill
    run, an export, a model) would mix a run into it and overwrite what it shares names with."""
    if out.exists() and not out.is_dir():
        raise UserError(f"`output_dir` {out} is a file, not a run folder")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in _RUN_OUTPUTS and not p.name.startswith(".")) \
        if out.is_dir() else []
    if foreign:
        shown = ", ".join(foreign[:4]) + (f", ... ({len(foreign)} in all)" if len(foreign) > 4 else "")
        raise UserError(f"`output_dir` {out} holds files a training run does not write ({shown}): it is not a run "
                        "folder; train into a new or empty folder")


def train(pairs: str | Path, student: str, output_dir: str | Path, *, settings: TrainSettings | None = None,
          lora: LoraSettings | None = None, merge: bool = False) -> TrainResult:
    """Train `student` on an export folder (`method` decides SFT rows or preference pairs); writes a
    self-describing run folder."""
    import torch

    settings = settings or TrainSettings()
    if settings.last_turn_weight != 1.0 and (not settings.compact_head or settings.trl_defaults):
        raise UserError("`last_turn_weight` needs the compact head (`compact_head` on, `trl_defaults` off)")
    if settings.full_finetune and settings.method != "sft":
        raise UserError(f"`full_finetune` trains the SFT baseline only (method sft), got method {settings.method!r}: "
                        "preference methods keep a LoRA adapter, whose base is their reference model")
    if settings.full_finetune and settings.base_dtype == "bfloat16":
        raise UserError("`full_finetune` trains the weights in float32 (in bfloat16 most of AdamW's small updates "
                        "would round away): set `base_dtype` to auto or float32")
    lora = lora or LoraSettings()
    out = Path(output_dir)
    _refuse_foreign_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    torch.manual_seed(settings.seed)
    kind = "dpo" if settings.method in PAIR_METHODS else "sft"
    prompt_style = settings.prompt_style or _export_prompt_style(pairs, kind)
    dtype = _base_dtype(settings)
    chat = _load_student(student, dtype)
    model, tokenizer = chat.hf_model, chat.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
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
    method_kind = {"dpo": "dpo", "rpo": "rpo", "sft": "sft", "sft-dpo": "dpo", "sft-rpo": "rpo",
                   "sft-chosen": "sft"}[settings.method]
    snapshot = {"base_model": student, "method": settings.method, "prompt_style": prompt_style} \
        if settings.save_epochs and settings.method == "sft" else None
    fit_rows = rows
    if settings.method == "sft-chosen":
        fit_rows = _sft_rows_from_pairs(rows, dedupe=False)
        row_tokens = _length_report(fit_rows, tokenizer, settings.max_length, "sft")[2]  # tokens it trains on
    model, m, s = _fit(method_kind, model, tokenizer, fit_rows, settings, lora, out, settings.method, snapshot)
    metrics += m
    steps += s
    seconds = time.perf_counter() - started
    merged_sha256 = None
    if settings.full_finetune:  # no adapter: the trained weights are the model (merged already)
        merged_sha256 = save_whole_model(model, tokenizer, out / "merged")
    else:
        model.save_pretrained(out / "adapter")
        stack.append("adapter")
        tokenizer.save_pretrained(out / "adapter")
        if merge:
            merged_sha256 = save_whole_model(model.merge_and_unload(), tokenizer, out / "merged")
    # Tokens the policy saw: rows per step x steps, at the mean row length (the reference pass not counted).
    per_step = settings.per_device_train_batch_size * settings.gradient_accumulation_steps
    tokens_seen = min(sum(row_tokens), sum(row_tokens) / len(row_tokens) * steps * per_step) \
        if settings.max_steps > 0 else sum(row_tokens) * (steps * per_step / max(len(rows), 1))
    manifest = {
        "base_model": student, "method": settings.method, "settings": settings.model_dump(mode="json"),
        "lora": None if settings.full_finetune else lora.model_dump(mode="json"), "adapters": stack,
        "adapter_sha256": {name: adapter_digest(out / name) for name in stack},
        "data": {"source": str(pairs), "rows": len(rows), "dropped": dropped, "tokens": sum(row_tokens)},
        "prompt_style": prompt_style, "base_dtype": str(dtype).removeprefix("torch."),
        "steps": steps, "seconds": round(seconds, 1), "tokens_per_second": round(tokens_seen / max(seconds, 1e-9), 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **({"merged_sha256": merged_sha256} if merged_sha256 else {}),
    }
    (out / RUN_MANIFEST).write_text(json.dumps(manifest, indent=2))
    step_rows = [m for m in metrics if "loss" in m]
    (out / "metrics.json").write_text(json.dumps({"last_step": step_rows[-1] if step_rows else {},
                                                  "summary": metrics[-1] if metrics else {}}, indent=2))
    _plot(metrics, out / "training.png", f"{settings.method} · {student} · {len(rows)} rows")
    final = {k: v for k, v in (step_rows[-1] if step_rows else {}).items() if isinstance(v, float)}
    return TrainResult(run_dir=out, method=settings.method, rows=len(rows), dropped=dropped, steps=steps,
                       seconds=seconds, tokens_per_second=tokens_seen / max(seconds, 1e-9),
                       final_metrics=final)


def train_dpo(pairs: str | Path, student: str, *, output_dir: str | Path, lora: LoraSettings | None = None,
              config: TrainSettings | None = None, merge: bool = False) -> TrainResult:
    """`train()` with a preference method (`dpo` unless `config` names another one)."""
    settings = config or TrainSettings(method="dpo")
    if settings.method not in PREFERENCE_METHODS:
        raise UserError(f"`train_dpo` trains a preference method ({', '.join(PREFERENCE_METHODS)}); "
                        f"got method {settings.method!r}: use `train_sft` or `train(settings=...)`")
    return train(pairs, student, output_dir, settings=settings, lora=lora, merge=merge)


def train_sft(pairs: str | Path, student: str, *, output_dir: str | Path, lora: LoraSettings | None = None,
              config: TrainSettings | None = None, merge: bool = False) -> TrainResult:
    """`train()` with the SFT baseline (whole chains, the loss on every assistant turn)."""
    settings = (config or TrainSettings()).model_copy(update={"method": "sft"})
    return train(pairs, student, output_dir, settings=settings, lora=lora, merge=merge)
