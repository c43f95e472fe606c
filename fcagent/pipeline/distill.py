"""`fcagent distill`: harvest → label → export → train → evaluate → report, each stage resumable.

The offline default follows what was measured (docs/results): the untrained 135M student gets
almost none of its own samples right, so self-sampling alone yields too few pairs. The default teacher is therefore `reference` (the task's gold chains
replayed through the graph), and the rejected side is the student's own sampled failures on the
teacher's contexts (`replay`: teacher-vs-student pairs). The student that samples them is the SFT
student by default, trained first: the untrained one's failures were trivially separable on BFCL
and DPO on them after SFT lost to SFT; the SFT student's are
on-policy for the methods that start from it (sft-dpo, sft-rpo). The paper's settings stay one
flag away: `--teacher bundled:smollm2-135m` (the small model as its own teacher) or any
LangChain model spec for the large-teacher setting.

Every stage writes its output into the run folder and is skipped when that output exists.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fcagent.agent.prompting import PromptStyle
from fcagent.core.errors import UserError
from fcagent.training.settings import METHODS, Method, TrainSettings

__all__ = ["DistillPreset", "PRESETS", "distill"]


class DistillPreset(BaseModel):
    """A distillation's plan: how much to harvest and replay, how to train (`sft` and `preference`, each a
    `TrainSettings`, the one place training is configured), what to evaluate."""

    model_config = ConfigDict(extra="forbid")

    name: str = "custom"
    train_problems: int | None = Field(description="Teacher problems harvested from the train split (None: all).", ge=1)
    test_problems: int = Field(description="Held-out problems every model is evaluated on.", ge=1)
    samples: int = Field(description="Student candidates per teacher context (on-policy negatives).", ge=1)
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    replay_contexts: int | None = Field(None, ge=1, description="Teacher contexts replayed (None: all).")
    replay_steps: Literal["every", "final"] = Field(
        "every", description="Which teacher contexts the student replays: every model call, or each episode's "
        "final one (where the student errs only in its conclusion, the rest yield no negatives).")
    methods: list[Method] = Field(description="Training methods; `sft` is the baseline.")
    sft: TrainSettings = Field(description="The SFT baseline's training (and the warm start of sft-dpo/sft-rpo).")
    preference: TrainSettings = Field(
        description="The preference methods' training (its `method` is set per method). A pair is two sequences, "
        "so the presets pass 2 pairs at a time and accumulate: 4 on GSM8K's long rows ran out of memory on a "
        "24 GB machine (docs/results/math).")
    prompt_style: PromptStyle = Field(
        PromptStyle.COMPACT, description="The trained student's prompt: `compact` (signatures, no worked examples; the "
        "teacher keeps the paper's prompt) or `examples`.")
    replay_student: Literal["sft", "base"] = Field(
        "sft", description="Who samples the rejected side: `sft` replays the teacher's contexts with the trained "
        "SFT student (its failures are on-policy for sft-dpo/sft-rpo, which start from it), `base` with the "
        "untrained one (on BFCL its negatives were trivially separable and DPO after SFT lost to SFT: "
        "docs/results/bfcl).")
    constrain: Literal["llguidance", "xgrammar"] | None = Field(
        None, description="Also evaluate every student with grammar-constrained decoding (`NAME+BACKEND`): "
        "each reply one schema-valid call. The same weights with and without the grammar, on the same problems.")

    def overridden(self, fields: dict[str, Any] | None = None, *, seed: int | None = None,
                   sft_epochs: float | None = None, last_turn_weight: float | None = None) -> "DistillPreset":
        """This plan with some fields replaced (checked again): `seed` for every method's training,
        `sft_epochs` for the SFT baseline and the warm start, `last_turn_weight` for SFT."""
        plan = self.model_dump()
        plan.update(fields or {})
        if seed is not None:
            plan["sft"]["seed"] = plan["preference"]["seed"] = seed
        if sft_epochs is not None:
            plan["sft"]["num_train_epochs"] = plan["sft"]["sft_epochs"] = plan["preference"]["sft_epochs"] = sft_epochs
        if last_turn_weight is not None:
            plan["sft"]["last_turn_weight"] = last_turn_weight
        return DistillPreset.model_validate(plan)


PRESETS: dict[str, DistillPreset] = {
    # A small slice of everything, for a first run (its time: benchmarks/stages.py, docs/performance.md).
    "quick": DistillPreset(name="quick", train_problems=32, test_problems=15, samples=2, replay_contexts=16,
                           methods=["sft", "sft-dpo"],  # preference from the SFT student, as "full"
                           sft=TrainSettings(method="sft", max_steps=16, per_device_train_batch_size=2),
                           preference=TrainSettings(method="dpo", max_steps=8, per_device_train_batch_size=2)),
    # What produces docs/results' tables: SFT for 3 epochs, the preference methods one epoch over all
    # their pairs (4 pairs a step: 2 per pass, 2 passes), and `sft-chosen`, their matched-compute
    # control (the same warm start, rows and steps, the SFT loss on the chosen side).
    "full": DistillPreset(name="full", train_problems=400, test_problems=100, samples=4, replay_contexts=None,
                          methods=["sft", "sft-chosen", "sft-dpo", "sft-rpo"],
                          sft=TrainSettings(method="sft", num_train_epochs=3, per_device_train_batch_size=4,
                                            save_epochs=True),
                          preference=TrainSettings(method="dpo", num_train_epochs=1, per_device_train_batch_size=2,
                                                   gradient_accumulation_steps=2)),
}


def _stage(out: Path, name: str) -> Path:
    return out / f"{name}.done.json"


def _done(out: Path, name: str) -> dict[str, Any] | None:
    marker = _stage(out, name)
    return json.loads(marker.read_text()) if marker.exists() else None


def _mark(out: Path, name: str, info: dict[str, Any]) -> dict[str, Any]:
    tmp = _stage(out, name).with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2, default=str))
    tmp.replace(_stage(out, name))
    return info


def distill(*, task: str, teacher: str = "reference", student: str = "bundled:smollm2-135m",
            out: str | Path = "runs/distill", store: str | Path | None = None, preset: Literal["quick", "full"] | DistillPreset = "quick",
            methods: list[str] | None = None, rounds: int = 1, data_dir: str | Path | None = None,
            progress_factory: Any = None,
            log: Any = print) -> dict[str, Any]:
    """Run the whole pipeline into `out`; returns the evaluation report data."""
    from fcagent.data.export import export_preference_pairs, export_sft
    from fcagent.data.rows import ExportError
    from fcagent.models.manifest import RUN_MANIFEST
    from fcagent.models.spec import ModelSpec
    from fcagent.pipeline.evaluate import evaluate, write_report
    from fcagent.pipeline.harvest import harvest
    from fcagent.pipeline.replay import replay
    from fcagent.tasks import get_task
    from fcagent.training.settings import WARM_STARTED
    from fcagent.training.train import train

    if isinstance(preset, str) and preset not in PRESETS:
        raise UserError(f"`preset` must be one of {', '.join(PRESETS)}, got {preset!r}")
    settings = PRESETS[preset] if isinstance(preset, str) else preset
    methods = methods or settings.methods
    settings = settings.model_copy(update={"methods": list(methods)})  # the report names what actually trained
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise UserError(f"unknown method(s) {', '.join(sorted(unknown))}; choose from {', '.join(METHODS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store = store if store is not None else out / "traces.db"  # a path or a PostgreSQL URL, as given
    t = get_task(task, data_dir=data_dir)
    timings: dict[str, float] = json.loads((out / "timings.json").read_text()) if (out / "timings.json").exists() else {}
    progress = progress_factory or (lambda: None)
    # Every model decodes as `ModelSpec` says for this task: `fcagent eval --task` on a run folder of this
    # distill reproduces its scores.
    spec_of = lambda text: ModelSpec.parse(text).for_task(t)  # noqa: E731
    student_model = None

    def student_chat():
        nonlocal student_model
        if student_model is None:
            student_model = spec_of(student).load()
        return student_model

    def timed(name: str, fn, redo_if: Any = None) -> dict[str, Any]:
        info = _done(out, name)
        if info is not None and not (redo_if and redo_if(info)):
            log(f"[{name}] done before, skipped ({_stage(out, name).name})")
            return info
        earlier = timings.get(name, 0.0) if info is not None else 0.0
        started = time.perf_counter()
        info = fn()
        # A stage done again (an evaluation of models trained since) adds to its time: the report's
        # stage times are the work the folder holds.
        timings[name] = round(earlier + time.perf_counter() - started, 1)
        (out / "timings.json").write_text(json.dumps(timings, indent=2))
        log(f"[{name}] {json.dumps(info, default=str)[:300]} ({timings[name]} s)")
        return _mark(out, name, info)

    # 1. The teacher's chains on the train split (the gold chains, replayed, by default).
    timed("harvest", lambda: harvest(task=task, teacher=teacher, limit=settings.train_problems, split="train",
                                     store=store, resume=True, data_dir=data_dir, progress=progress(),
                                     model=None if teacher != student else student_chat()))
    # Labelled traces → SFT rows and preference pairs (the eval split never leaves the store).

    def export_stage(folder: str = "data", pairs: bool = True) -> dict[str, Any]:
        info: dict[str, Any] = {}
        sft = export_sft(store, out / folder, tokenizer=student_chat().tokenizer, prompt_style=settings.prompt_style)
        info["sft_rows"] = sft.rows
        if not pairs:
            return info
        try:
            dpo = export_preference_pairs(store, out / folder, tokenizer=student_chat().tokenizer,
                                          prompt_style=settings.prompt_style)
            info["pairs"] = dpo.rows
            info["pairs_by_source"] = dpo.stats["by_source"]
        except ExportError as exc:
            info["pairs"] = 0
            info["pairs_error"] = str(exc)
        return info

    def train_stage(method: str, folder: str, run_dir: Path) -> dict[str, Any]:
        warm = out / "runs" / "sft"
        base = settings.sft if method == "sft" else settings.preference
        cfg = base.model_copy(update={
            "method": method, "prompt_style": settings.prompt_style,
            "warm_start": str(warm) if method in WARM_STARTED and (warm / RUN_MANIFEST).exists() else None})
        return train(out / folder, student, run_dir, settings=cfg).model_dump(mode="json")

    runs: dict[str, Path] = {}
    replayer_name, replayer = student, student_chat
    needs_pairs = any(m != "sft" for m in methods)
    exported: dict[str, Any] = {}
    if settings.replay_student == "sft" and "sft" in methods:
        # 2. SFT needs no pairs, so it trains first, and its student samples the negatives.
        exported = timed("export-sft", lambda: export_stage("data-sft", pairs=False))
        timed("train-sft", lambda: train_stage("sft", "data-sft", out / "runs" / "sft"))
        runs["sft"] = out / "runs" / "sft"
        replayer_name = str(out / "runs" / "sft")
        replayer = lambda: spec_of(replayer_name).load()  # noqa: E731
    if needs_pairs:
        # 3. The student's own candidates on the teacher's good contexts: the negatives; then the pairs.
        # (An SFT-only run skips both: sampling every train context is the costliest stage after training.)
        timed("replay", lambda: replay(store, replayer(), student_name=replayer_name, task=task,
                                       samples=settings.samples, temperature=settings.temperature,
                                       limit=settings.replay_contexts, steps=settings.replay_steps,
                                       seed=settings.preference.seed, data_dir=data_dir, progress=progress()))
    if needs_pairs or "sft" not in runs:
        # An export that made no pairs because of an error is tried again (after a fix, or more replay),
        # and so is one an SFT-only run made without pairs, once a method needs them.
        exported = timed("export", lambda: export_stage(pairs=needs_pairs),
                         redo_if=lambda info: "pairs_error" in info or (needs_pairs and "pairs" not in info))

    # 4. Train each preference method on the pairs (SFT, the baseline, on the teacher's chains).
    for method in methods:
        run_dir = out / "runs" / method
        if method in runs:
            continue
        if method != "sft" and not exported.get("pairs"):
            log(f"[train {method}] skipped: no preference pairs ({exported.get('pairs_error', '')[:200]})")
            continue

        timed(f"train-{method}", lambda method=method, run_dir=run_dir: train_stage(method, "data", run_dir))
        runs[method] = run_dir

    # 4b. Rounds: the newest preference-trained student samples on the teacher's contexts, its own
    # failures join the pairs, and the method trains again on everything: the model that trains
    # also harvests, so the negatives stay on-policy as it improves.
    preference = [m for m in methods if m != "sft" and m in runs]
    for r in range(2, rounds + 1):
        if not preference:
            break
        method = preference[-1]
        previous = runs[method if r == 2 else f"{method}-r{r - 1}"]
        # Each round re-samples the same contexts: its own seeds, or it would draw the same noise again.
        timed(f"replay-r{r}", lambda previous=previous: replay(
            store, spec_of(str(previous)).load(), student_name=str(previous), task=task,
            samples=settings.samples, temperature=settings.temperature, limit=settings.replay_contexts,
            steps=settings.replay_steps, seed=settings.preference.seed + 1000 * (r - 1), data_dir=data_dir,
            progress=progress()))
        timed(f"export-r{r}", lambda r=r: export_stage(f"data-r{r}"))
        run_dir = out / "runs" / f"{method}-r{r}"
        timed(f"train-{method}-r{r}", lambda method=method, r=r, run_dir=run_dir: train_stage(method, f"data-r{r}", run_dir))
        runs[f"{method}-r{r}"] = run_dir

    # 5. Everyone on the same held-out problems, through the same graph.
    models = {"base": student, **{m: str(p) for m, p in runs.items()}}
    if settings.constrain:
        # Parallel replies (BFCL's parallel categories) are lists of calls: a grammar that allows them.
        grammar = f"constrain={settings.constrain}" + ("" if t.one_call_replies else "&constrain_calls=many")
        models |= {f"{name}+{settings.constrain}": f"{spec}?{grammar}" for name, spec in list(models.items())}
    # The SFT student after each earlier epoch (its last epoch is `sft` itself): the learning curve.
    epochs = sorted((p for p in (out / "runs" / "sft" / "epochs").glob("*") if (p / RUN_MANIFEST).exists()),
                    key=lambda p: int(p.name)) if "sft" in runs else []
    models |= {f"sft@{p.name}": str(p) for p in epochs[:-1]}
    teacher_is_reference = teacher == "reference"
    if not teacher_is_reference:
        models = {"teacher": teacher, **models}

    def eval_stage() -> dict[str, Any]:
        report = evaluate(models, task=task, split="test", limit=settings.test_problems, out_dir=out / "eval",
                          data_dir=data_dir, progress=progress(), loaded={"base": student_chat()})
        return {"models": {k: v["accuracy"] for k, v in report["models"].items()}, "mcnemar": report["mcnemar"]}

    # Done again when the set of models changed (methods trained since, --constrain on a finished
    # folder); evaluate() reuses every model's cached results, so only the new ones run.
    timed("eval", eval_stage, redo_if=lambda info: set(info.get("models", {})) != set(models))
    report = json.loads((out / "eval" / "results.json").read_text())
    teacher_note = (" (the task's gold chains replayed: it reads the gold answer, so it is the upper bound, 100% by "
                    "construction, and is not evaluated)" if teacher_is_reference else "")
    rows = [("task", f"`{t.spec}`"), ("teacher", f"`{teacher}`{teacher_note}"), ("student", f"`{student}`"),
            ("preset", f"`{settings.name}`"), ("methods", ", ".join(settings.methods)),
            ("problems", f"{settings.train_problems} teacher (train split), {settings.test_problems} held out"),
            ("SFT training", _training_cell(settings.sft)), ("preference training", _training_cell(settings.preference)),
            ("negatives sampled by", f"`{replayer_name}`" if needs_pairs else "no preference method: no replay"),
            ("data", f"{exported.get('sft_rows', 0)} SFT rows, {exported.get('pairs', 0)} preference pairs"
                     + "".join(f"; {n} {k}" for k, n in exported.get("pairs_by_source", {}).items())),
            ("stage times", ", ".join(f"{k} {v} s" for k, v in timings.items()))]
    notes = ["| setting | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)]
    curve = _learning_curve(report, [int(p.name) for p in epochs], out / "learning_curve.png")
    if curve:
        notes.append("SFT learning curve (held-out accuracy after each epoch; epoch 0 is the untrained student): "
                     + ", ".join(f"{k}: {v:.0%}" for k, v in curve) + ". ![learning curve](learning_curve.png)")
    write_report(report, out, title=f"fcagent distill: {t.spec}", notes="\n\n".join(notes))
    return report


def _training_cell(ts: TrainSettings) -> str:
    length = f"{ts.max_steps} steps" if ts.max_steps > 0 else f"{ts.num_train_epochs:g} epochs"
    rate = f"lr {ts.learning_rate:g}" if ts.learning_rate else "the method's default lr"
    return f"{length}, batch {ts.per_device_train_batch_size}×{ts.gradient_accumulation_steps}, {rate}, seed {ts.seed}"


def _learning_curve(report: dict[str, Any], epochs: list[int], path: Path) -> list[tuple[int, float]]:
    """Held-out accuracy per SFT epoch (from `base`, `sft@k` and `sft`), plotted to `path`."""
    models = report["models"]
    if not epochs or "sft" not in models:
        return []

    def curve(accuracy: dict[str, Any]) -> list[tuple[int, float]]:
        points = [(0, accuracy["base"]["accuracy"])] if "base" in accuracy else []
        points += [(k, accuracy[f"sft@{k}"]["accuracy"]) for k in epochs[:-1] if f"sft@{k}" in accuracy]
        return points + [(epochs[-1], accuracy["sft"]["accuracy"])]

    points = curve(models)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label="all")
    for source, accuracy in (report.get("by_source") or {}).items():  # a joined task: a line per source too
        mine = curve(accuracy)
        ax.plot([p[0] for p in mine], [p[1] for p in mine], marker=".", linestyle="--", label=source)
    if report.get("by_source"):
        ax.legend(fontsize=7)
    ax.set_xlabel("SFT epochs")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(f"{report['task']}\nSFT learning curve", fontsize=8)  # a joined task's spec is long
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return points
