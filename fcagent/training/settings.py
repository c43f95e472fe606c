"""Training settings: what one run does (`TrainSettings`, TRL's field names where the field is
TRL's), its LoRA adapter (`LoraSettings`, PEFT's names), and what it reports (`TrainResult`).
A `--config` YAML file holds `TrainSettings` fields and a `lora:` mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from fcagent.agent.prompting import PromptStyle

__all__ = ["LoraSettings", "TrainSettings", "TrainResult", "Method", "METHODS", "PREFERENCE_METHODS", "PAIR_METHODS",
           "WARM_STARTED"]

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
                                description="LoRA dropout; 0 by default: dropout costs step time on the CPU (docs/performance.md).")
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
                              "(slower under TRL there, docs/performance.md; `base_dtype` is the CPU's bf16 lever).")
    activation_checkpointing: bool = Field(
        False, validation_alias=AliasChoices("activation_checkpointing", "gradient_checkpointing"),
        description="Recompute activations in the backward pass (transformers' name; `gradient_checkpointing` "
        "before 5.x, still read). Off: faster, and memory is not the limit for these students.")
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
    prefix_sharing: bool = Field(True, description="DPO: each pair's prompt runs once (fcagent.training.trainers).")
    compact_head: bool = Field(True, description="The LM head only at the scored positions (fcagent.training.trainers).")
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
    prompt_style: PromptStyle | None = Field(
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
