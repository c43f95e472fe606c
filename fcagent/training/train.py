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
  `fcagent.training.chat_templates`), instead of a row per step that repeats the history each time;
* **the compact student prompt** (`prompt_style`, read from the export): signatures, no worked
  examples; recorded in the run folder, so the student is served with it;
* **bf16 frozen weights** (`base_dtype`): the base model in bf16 where the CPU or GPU has bf16 matrix
  units, the LoRA weights and optimizer in fp32 (bf16 *autocast* under TRL was slower here);
* **length-grouped batches** (`group_by_length`): less padding in mixed-length batches;
* **prefix-shared DPO** (`prefix_sharing`, `fcagent.training.trainers`): each pair's prompt runs once;
* **the compact LM head** (`compact_head`, `fcagent.training.trainers`): the 49k-token head runs only where a
  label is scored (TRL scores every position on a CPU).

Other defaults, set for the bundled 135M model on a 2-core CPU and the same on a GPU: gradient
checkpointing off (memory is not the limit), LoRA dropout 0 (it costs step time on the CPU),
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
from typing import Any

from fcagent.core.compat import peft_trl_deprecations_silenced
from fcagent.core.errors import UserError
from fcagent.data.layout import ExportKind, ExportLayout
from fcagent.data.rows import ExportError, load_pairs
from fcagent.models.manifest import RUN_MANIFEST, save_whole_model
from fcagent.training.callbacks import (
    EpochSnapshots,
    LiveMetrics,
    adapter_digest,
    plot_metrics,
)
from fcagent.training.gguf import remove_export
from fcagent.training.settings import (
    PAIR_METHODS,
    PREFERENCE_METHODS,
    WARM_STARTED,
    LoraSettings,
    TrainResult,
    TrainSettings,
)

__all__ = ["train", "train_dpo", "train_sft"]

def _bf16_available() -> bool:
    """bf16 autocast by default on GPUs that support it, not on the CPU, where it made a DPO step
    slower under TRL although raw PyTorch forward+backward was faster with it (benchmarks/dpo_throughput.py,
    docs/performance.md). `bf16=True` keeps it one flag away."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


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
    from fcagent.models.loading import load_chat_model
    from fcagent.models.local.chat_model import LocalChatModel

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


def _read_rows(pairs: str | Path, kind: ExportKind) -> list[dict[str, Any]]:
    """The rows a method trains on: SFT rows, or the pairs. Given an export folder, its `ExportLayout`
    names the file; given a file, its columns say what it holds. SFT without SFT rows trains on the
    pairs' chosen side."""
    path = Path(pairs)
    if path.is_dir() and not (path / "dataset_info.json").exists():
        layout = ExportLayout(path)
        if kind is ExportKind.SFT and layout.rows(ExportKind.SFT).exists():
            return load_pairs(layout.rows(ExportKind.SFT), ExportKind.SFT).to_list()
        if kind is ExportKind.SFT:
            return _sft_rows_from_pairs(load_pairs(layout.rows(ExportKind.DPO), ExportKind.DPO).to_list())
        return load_pairs(layout.rows(ExportKind.DPO), ExportKind.DPO).to_list()
    holds = _file_kind(path)
    if kind is ExportKind.SFT and holds is ExportKind.DPO:
        return _sft_rows_from_pairs(load_pairs(path, ExportKind.DPO).to_list())
    return load_pairs(path, kind).to_list()


def _file_kind(path: Path) -> ExportKind:
    """What a rows file or saved dataset holds, by its columns: `messages` rows are SFT, else pairs."""
    try:
        if path.is_dir():
            from datasets import load_from_disk

            return ExportKind.SFT if "messages" in load_from_disk(str(path)).column_names else ExportKind.DPO
        with path.open(encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "{}")
        return ExportKind.SFT if "messages" in json.loads(first) else ExportKind.DPO
    except (OSError, ValueError, UnicodeDecodeError):
        return ExportKind.DPO  # load_pairs then says what is wrong with the file


def _checkpointing_argument() -> str:
    """transformers 5 renamed `gradient_checkpointing` to `activation_checkpointing` (the old name warns)."""
    from transformers import TrainingArguments

    return "activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__ \
        else "gradient_checkpointing"


def _trainer_args(settings: TrainSettings, out: Path, kind: str, *, conversational: bool = False) -> Any:
    import torch
    from trl import DPOConfig, SFTConfig

    checkpointing = _checkpointing_argument()
    # A LoRA adapter starts at zero and takes larger steps than a whole pretrained model should.
    default_lr = 5e-5 if settings.full_finetune else 2e-4 if kind in ("sft", "sft-warm") else 1e-4
    lr = settings.learning_rate or default_lr
    epochs = settings.sft_epochs if kind == "sft-warm" else settings.num_train_epochs
    common: dict[str, Any] = dict(
        output_dir=str(out / "trainer"), per_device_train_batch_size=settings.per_device_train_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps, num_train_epochs=epochs,
        max_steps=settings.max_steps, learning_rate=lr, logging_steps=1,
        save_strategy="no", report_to=[], seed=settings.seed, max_length=settings.max_length,
        use_cpu=not torch.cuda.is_available(), **{checkpointing: settings.activation_checkpointing},
        bf16=settings.bf16 if settings.bf16 is not None else _bf16_available(),
        lr_scheduler_type="constant_with_warmup", warmup_steps=0, dataloader_num_workers=0)
    if settings.trl_defaults:
        for key in ("learning_rate", checkpointing, "bf16", "lr_scheduler_type", "warmup_steps"):
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

    from fcagent.training.chat_templates import training_template

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
    live = LiveMetrics(out / "metrics.jsonl", total, label)
    callbacks = [live, *([EpochSnapshots(out, snapshot, tokenizer, full=settings.full_finetune)]
                         if snapshot is not None else [])]
    data = Dataset.from_list(data_rows)
    inference_template = tokenizer.chat_template
    with peft_trl_deprecations_silenced():
        return _construct_and_train(kind, model, tokenizer, data, args, settings, peft_config, callbacks, template,
                                    inference_template, live)


def _construct_and_train(kind: str, model: Any, tokenizer: Any, data: Any, args: Any, settings: TrainSettings,
                         peft_config: Any, callbacks: list[Any], template: Any, inference_template: Any,
                         live: Any) -> tuple[Any, list[dict[str, Any]], int]:
    from trl import DPOTrainer, SFTTrainer

    from fcagent.training.trainers import CompactHeadSFTTrainer, PrefixSharingDPOTrainer

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
                          "adapter", "sft_adapter", "merged", "gguf"})


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
    remove_export(out)  # a GGUF of the run trained before holds other weights
    torch.manual_seed(settings.seed)
    kind = ExportKind.DPO if settings.method in PAIR_METHODS else ExportKind.SFT
    prompt_style = settings.prompt_style or ExportLayout.of(pairs).prompt_style(kind)
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
        with peft_trl_deprecations_silenced():
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
    plot_metrics(metrics, out / "training.png", f"{settings.method} · {student} · {len(rows)} rows")
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
