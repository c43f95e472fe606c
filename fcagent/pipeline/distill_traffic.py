"""`fcagent distill --store`: from a user's recorded, labelled traffic to a promoted student, in one command.

    split → export (train split) → train → evaluate on held-out traffic → gate → promote

1. The store's requests are split (`fcagent.data.split`); only the train side is exported (SFT rows,
   and preference pairs where a method needs them).
2. Each method trains a student (`TrainSettings`; from the promoted student when one exists: a warm
   start, so each round builds on the last).
3. The base student, each new one, the baseline (`--baseline`, the student in production) and the
   recorded model are evaluated on the held-out traffic (`fcagent.pipeline.traffic`).
4. The gate (`--gate step_agreement>=0.9,...`) must hold for the new student, and it must not be
   significantly worse than the baseline (McNemar, p < 0.05). Then, with `--promote NAME`, NAME points
   at it (atomically). A failed gate exits with code 3 and says which figure fell short.
5. A second run into the same folder trains only when labelled traffic arrived since the last
   (`watermark.json`); else it says so and stops.

`report.md` opens with the verdict, then the settings as a table, then the evaluation.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from fcagent.agent.prompting import PromptStyle
from fcagent.core.errors import UserError
from fcagent.data.split import DEFAULT_TEST_FRACTION
from fcagent.pipeline.promotion import GATE_EXIT_CODE, Gate, Watermark, not_worse, promote
from fcagent.training.settings import TrainSettings

__all__ = ["TRAFFIC_PRESETS", "TrafficDistillResult", "distill_traffic"]

# `--preset` for your own traffic: `quick` is a first look (a few minutes of training on this 2-core CPU,
# the bundled demo's first run), `full` three passes over the data, what a promotion should rest on.
TRAFFIC_PRESETS: dict[str, TrainSettings] = {
    "quick": TrainSettings(method="sft", max_steps=40, per_device_train_batch_size=4),
    "full": TrainSettings(method="sft", num_train_epochs=3, per_device_train_batch_size=4),
}


class TrafficDistillResult(BaseModel):
    promoted: bool
    exit_code: int
    verdict: list[str]
    student: str | None = Field(None, description="The run folder of the new student (None: nothing trained).")
    report: dict[str, Any] = Field(default_factory=dict)


def _round_dir(out: Path) -> Path:
    taken = sorted(int(p.name.removeprefix("round-")) for p in out.glob("round-*") if p.name[6:].isdigit())
    return out / f"round-{(taken[-1] + 1) if taken else 1}"


def distill_traffic(*, store: Any, out: str | Path, student: str = "bundled:smollm2-135m", method: str = "sft",
                    settings: TrainSettings | None = None, baseline: str | None = None, gate: Gate | None = None,
                    promote_to: str | Path | None = None, test_fraction: float = DEFAULT_TEST_FRACTION,
                    unlabelled: str = "skip", judge: str | None = None, log: Any = print,
                    progress_factory: Any = None) -> TrafficDistillResult:
    """Run the loop above into `out` (see the module docs)."""
    from fcagent.data.export import export_preference_pairs, export_sft
    from fcagent.pipeline.traffic import RECORDED, evaluate_traffic, write_traffic_report
    from fcagent.training.settings import PAIR_METHODS
    from fcagent.training.train import train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gate = gate or Gate(conditions=[])
    progress = progress_factory or (lambda: None)
    mark = Watermark.of(store)
    last_file = out / "watermark.json"
    last = Watermark.model_validate_json(last_file.read_text()) if last_file.exists() else None
    if not mark.news_since(last):
        line = (f"no labelled traffic since the last run ({last.labels} labels, the newest at "
                f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(last.newest_label_at or 0))}): nothing trained")
        log(line)
        return TrafficDistillResult(promoted=False, exit_code=0, verdict=[line])
    promoted_before = Path(promote_to).resolve() if promote_to and Path(promote_to).is_symlink() else None
    # Each round builds on the student in production (a warm start), or on the base student the first time.
    start_from = str(promoted_before) if promoted_before is not None else student
    here = _round_dir(out)
    data = here / "data"
    log(f"[{here.name}] labelled traffic: {mark.labels} labels on {mark.episodes} episodes; training from {start_from}")
    export = dict(test_fraction=test_fraction, unlabelled=unlabelled, prompt_style="compact")
    rows = export_sft(store, data, **export)
    log(f"[{here.name}] exported {rows.rows} SFT rows (held-out requests kept out)")
    if method in PAIR_METHODS:
        pairs = export_preference_pairs(store, data, **export)
        log(f"[{here.name}] exported {pairs.rows} preference pairs")
    # validated, not model_copy(update=...): the method and prompt style are checked and typed as the CLI's are
    cfg = TrainSettings.model_validate({**(settings or TrainSettings(method="sft")).model_dump(),
                                        "method": method, "prompt_style": PromptStyle.COMPACT})
    trained = train(data, start_from, here / "student", settings=cfg)
    log(f"[{here.name}] trained {method}: {trained.steps} steps, {trained.seconds:.0f} s")
    models = {"base": student, "new": str(here / "student"), "recorded": RECORDED}
    if baseline:
        models["baseline"] = str(Path(baseline).resolve())
    report = evaluate_traffic(store, models, out_dir=here / "eval", test_fraction=test_fraction, judge=judge,
                              unlabelled=unlabelled, progress=progress())
    new = report["models"]["new"]
    result = gate.check(new)
    verdict = list(result.lines)
    passed = result.passed
    if baseline:
        ok, line = not_worse(report["mcnemar"]["new vs baseline"])
        verdict.append(line)
        passed &= ok
    if passed and promote_to:
        promote(here / "student", promote_to, reason="; ".join(verdict) or "no gate")
        verdict.append(f"promoted: {promote_to} -> {here / 'student'}")
    elif not passed:
        verdict.append("not promoted" + (f": {promote_to} still points at {promoted_before}" if promoted_before else ""))
    head = "**Verdict: promoted.**" if passed and promote_to else "**Verdict: the gate holds.**" if passed else \
        "**Verdict: not promoted — the gate does not hold.**"
    settings_table = "\n".join(["| setting | value |", "|---|---|",
                                f"| store | `{store.name}` |", f"| base student | `{student}` |",
                                f"| trained from | `{start_from}` |", f"| method | {method} |",
                                f"| rows | {rows.rows} SFT rows |", f"| test fraction | {test_fraction:g} |",
                                f"| gate | {', '.join(str(c) for c in gate.conditions) or 'none'} |",
                                f"| baseline | `{baseline or 'none'}` |", f"| training | {trained.steps} steps, "
                                f"{trained.seconds:.0f} s |"])
    notes = "\n".join([head, "", *[f"- {line}" for line in verdict], "", settings_table])
    write_traffic_report(report, here / "eval", title=f"fcagent distill --store: {here.name}", notes=notes)
    (here / "verdict.json").write_text(json.dumps({"promoted": passed and bool(promote_to), "passed": passed,
                                                   "verdict": verdict}, indent=2))
    last_file.write_text(mark.model_dump_json())
    for line in verdict:
        log(line)
    return TrafficDistillResult(promoted=passed and bool(promote_to), exit_code=0 if passed else GATE_EXIT_CODE,
                                verdict=verdict, student=str(here / "student"), report=report)


def check_traffic_options(store: Any, gate: list[str] | None) -> Gate:
    """A gate that parses and a store that has labels: refused before any work."""
    parsed = Gate.parse(gate)
    if store.label_watermark()[0] == 0:
        raise UserError(f"{store.location} has no labels: label episodes (`fcagent traces label`, feedback) first")
    return parsed
