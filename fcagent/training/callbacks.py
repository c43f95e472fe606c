"""What a training run shows and keeps while it trains: TRL `TrainerCallback`s for live progress and
metrics (`metrics.jsonl`), a loadable run folder after every epoch, and the training plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fcagent.models.manifest import (
    RUN_MANIFEST,
    RunManifest,
    file_digest,
    save_whole_model,
)

__all__ = ["EpochSnapshots", "LiveMetrics", "plot_metrics"]


def adapter_digest(adapter_dir: Path) -> str:
    return file_digest(adapter_dir / "adapter_model.safetensors")


class EpochSnapshots:
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


class LiveMetrics:
    """A TrainerCallback that shows progress and DPO metrics live and appends them to metrics.jsonl."""

    def __new__(cls, path: Path, total: int, label: str):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )
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


def plot_metrics(metrics: list[dict[str, Any]], out: Path, title: str) -> None:
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
