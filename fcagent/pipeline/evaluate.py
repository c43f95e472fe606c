"""`fcagent eval`: every model through the same graph on the same held-out problems, with statistics.

Per model: accuracy with a bootstrap 95% interval, valid-call rate (parsable, known function,
schema-valid), tool-error rate, mean steps, prompt/completion tokens and wall time per problem.
Per pair of models: McNemar's exact test on the paired outcomes. Writes `report.md`,
`results.json` and PNG plots; each model's per-problem results are kept (`results/<name>.jsonl`) so
a re-run skips models already evaluated on the same problems.
"""

from __future__ import annotations

import json
import math
import random
import re
from itertools import combinations
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from fcagent.core import keys
from fcagent.core.errors import UserError
from fcagent.models.spec import ModelSpec
from fcagent.pipeline.runner import EpisodeResult, run_problems
from fcagent.tasks import get_task
from fcagent.tasks.base import Problem

__all__ = ["mcnemar_exact", "bootstrap_ci", "ModelSummary", "evaluate", "summarize", "write_report", "model_names"]


def mcnemar_exact(a: list[bool], b: list[bool]) -> dict[str, Any]:
    """Exact (binomial) McNemar test on paired outcomes: two-sided p for 'A and B differ'."""
    if len(a) != len(b):
        raise ValueError("paired outcomes must have the same length")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    n = only_a + only_b
    if n == 0:
        return {"only_a": 0, "only_b": 0, "p_value": 1.0}
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return {"only_a": only_a, "only_b": only_b, "p_value": min(1.0, 2 * tail)}


def bootstrap_ci(outcomes: list[bool], *, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `outcomes`."""
    if not outcomes:
        return (0.0, 0.0)
    rng = random.Random(seed)
    n = len(outcomes)
    values = [float(x) for x in outcomes]
    means = sorted(sum(rng.choice(values) for _ in range(n)) / n for _ in range(resamples))
    lo = means[int((1 - level) / 2 * resamples)]
    hi = means[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return (lo, hi)


class ModelSummary(BaseModel):
    name: str
    spec: str
    n: int
    correct: int
    accuracy: float
    ci95: tuple[float, float]
    valid_call_rate: float
    tool_error_rate: float
    mean_steps: float
    prompt_tokens_per_problem: float
    completion_tokens_per_problem: float
    wall_s_per_problem: float
    run_errors: int = 0  # problems whose run raised (a broken spec, an outage): counted as wrong


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+\-]{0,63}")


def model_names(items: list[str]) -> dict[str, str]:
    """`--model NAME=SPEC` (or a bare SPEC, named after its last path part) as {name: spec}. Names
    become file names, so they are checked, and two models never share one."""
    models: dict[str, str] = {}
    for item in items:
        name, eq, spec = item.partition("=") if "=" in item.split("?")[0] and not item.startswith(("/", ".")) else ("", "", item)
        if not eq:
            name = Path(spec.split("?")[0].rstrip("/")).name or spec
        if not spec:
            raise UserError(f"`--model {item}` names no model spec after `=`")
        if not _NAME.fullmatch(name):
            raise UserError(f"`--model {item}`: the name {name!r} must be letters, digits, `_.+-` (it names files); "
                            "write NAME=SPEC")
        if name in models:
            raise UserError(f"`--model` name {name!r} is given twice ({models[name]} and {spec}); name them NAME=SPEC")
        models[name] = spec
    if not models:
        raise UserError("give at least one `--model NAME=SPEC`")
    return models


def summarize(name: str, spec: str, results: list[EpisodeResult]) -> ModelSummary:
    n = len(results)
    calls = sum(r.calls for r in results)
    return ModelSummary(
        name=name, spec=spec, n=n, correct=sum(r.success for r in results),
        accuracy=sum(r.success for r in results) / max(1, n), ci95=bootstrap_ci([r.success for r in results]),
        valid_call_rate=sum(r.valid_calls for r in results) / max(1, calls),
        tool_error_rate=sum(r.tool_errors for r in results) / max(1, calls),
        mean_steps=sum(r.steps for r in results) / max(1, n),
        prompt_tokens_per_problem=sum(r.prompt_tokens for r in results) / max(1, n),
        completion_tokens_per_problem=sum(r.completion_tokens for r in results) / max(1, n),
        wall_s_per_problem=sum(r.wall_s for r in results) / max(1, n),
        run_errors=sum(r.status == "error" for r in results))


def _load_results(path: Path, problem_ids: list[str], key: dict[str, Any]) -> list[EpisodeResult] | None:
    """Results kept from an earlier run, if they are of the same model (the full spec, the settings)
    on the same problems."""
    key_file = path.with_suffix(".key.json")
    if not path.exists() or not key_file.exists() or json.loads(key_file.read_text()) != key:
        return None
    rows = [EpisodeResult.model_validate_json(line) for line in path.read_text().splitlines() if line.strip()]
    by_id = {r.problem_id: r for r in rows}
    if all(pid in by_id for pid in problem_ids):
        return [by_id[pid] for pid in problem_ids]
    return None


def evaluate(models: dict[str, str], *, task: str, split: str = "test", limit: int | None = 100,
             out_dir: str | Path, data_dir: str | Path | None = None, protocol: str = "auto",
             max_steps: int | None = None, progress: Any = None, loaded: dict[str, Any] | None = None,
             problems: list[Problem] | None = None, concurrency: int | None = None) -> dict[str, Any]:
    """Evaluate `models` ({name: spec}) on the same problems; returns (and writes) the report data.

    `concurrency` None: a single-step task runs as many problems at once as the local model decodes
    in one batch (`max_batch_rows`; its batcher combines their calls), a multi-step one runs one at a
    time (each step reuses the previous step's prompt cache, which batching cannot; see
    docs/performance.md).
    """
    out = Path(out_dir)
    (out / "results").mkdir(parents=True, exist_ok=True)
    t = get_task(task, data_dir=data_dir)
    problems = problems if problems is not None else t.load(split=split, limit=limit)
    ids = [p.id for p in problems]
    per_model: dict[str, list[EpisodeResult]] = {}
    for name, spec in models.items():
        cache = out / "results" / f"{name}.jsonl"
        model_spec = ModelSpec.parse(spec).for_task(t)
        key = {"spec": spec, "task_defaults": model_spec.task_defaults if _is_local(model_spec) else {},
               "protocol": protocol, "max_steps": max_steps, "task": t.spec}
        cached = _load_results(cache, ids, json.loads(json.dumps(key, default=str)))
        if cached is not None:
            per_model[name] = cached
            continue
        chat = (loaded or {}).get(name)
        if chat is None:
            chat = model_spec.load(problems)
        bar = None
        if progress is not None:
            progress.start()
            bar = progress.add_task(f"eval {name}", total=len(problems), status="")
        right = 0

        def tick(problem, result, bar=bar) -> None:
            nonlocal right
            right += result.success
            if bar is not None:
                progress.update(bar, advance=1, status=f"correct {right}")

        single_step = (max_steps or t.max_steps) == 1
        workers = concurrency or (getattr(chat, "max_batch_rows", 1) if single_step else 1)
        results = run_problems(chat, t, problems, protocol=protocol, max_steps=max_steps, on_result=tick,
                               concurrency=workers,
                               metadata={keys.MODEL: spec, keys.ROLE: keys.Role.EVAL.value})
        if progress is not None:
            progress.stop()
        cache.write_text("".join(r.model_dump_json(exclude={"transcript"}) + "\n" for r in results))
        cache.with_suffix(".key.json").write_text(json.dumps(key, default=str))
        per_model[name] = results
    summaries = {name: summarize(name, models[name], rs) for name, rs in per_model.items()}
    tests = {}
    for a, b in combinations(per_model, 2):
        tests[f"{a} vs {b}"] = mcnemar_exact([r.success for r in per_model[a]], [r.success for r in per_model[b]])
    report = {"task": t.spec, "split": split, "n_problems": len(problems), "problem_ids": ids,
              "models": {k: v.model_dump() for k, v in summaries.items()}, "mcnemar": tests}
    sources = {p.id: p.source for p in problems}
    if len(set(sources.values())) > 1:
        report["by_source"] = _by_source(per_model, sources)
    write_report(report, out)
    return report


def _is_local(spec: ModelSpec) -> bool:
    """Whether the task's decoding defaults apply (a caller's own model may be named by a mere label)."""
    try:
        return spec.is_local
    except UserError:
        return False


def _by_source(per_model: dict[str, list[EpisodeResult]], sources: dict[str, str]) -> dict[str, dict[str, Any]]:
    """{source: {model: {correct, n, accuracy}}}: a task that joins sources (BFCL categories) is read
    per source too, each by its own rules."""
    table: dict[str, dict[str, Any]] = {}
    for source in dict.fromkeys(sources.values()):
        for name, results in per_model.items():
            mine = [r.success for r in results if sources[r.problem_id] == source]
            table.setdefault(source, {})[name] = {"correct": sum(mine), "n": len(mine),
                                                  "accuracy": sum(mine) / max(1, len(mine))}
    return table


def _relative_paths(text: str, folder: Path) -> str:
    """`text` with this run folder's absolute path taken out: reports are committed and read elsewhere."""
    for prefix in {str(folder.resolve()), str(folder.absolute())}:
        text = text.replace(prefix + "/", "").replace(prefix, ".")
    return text


def write_report(report: dict[str, Any], out: Path, *, title: str | None = None, notes: str = "") -> None:
    """`results.json`, `report.md` and the plots into `out`; paths inside `out` are written relative to it."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(_relative_paths(json.dumps(report, indent=2), out))
    notes = _relative_paths(notes, out)
    lines = [f"# {title or 'Evaluation: ' + report['task']}", "",
             f"{report['n_problems']} held-out problems ({report['split']} split) of `{report['task']}`, every model "
             "through the same graph.", ""]
    if notes:
        lines += [notes, ""]
    lines += ["| model | spec | correct | accuracy (95% CI) | valid calls | tool errors | steps | prompt tok | completion tok | s/problem |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for m in report["models"].values():
        lines.append(f"| {m['name']} | `{m['spec']}` | {m['correct']}/{m['n']} | {m['accuracy']:.1%} "
                     f"({m['ci95'][0]:.1%}–{m['ci95'][1]:.1%}) | {m['valid_call_rate']:.1%} | {m['tool_error_rate']:.1%} | "
                     f"{m['mean_steps']:.2f} | {m['prompt_tokens_per_problem']:.0f} | "
                     f"{m['completion_tokens_per_problem']:.0f} | {m['wall_s_per_problem']:.2f} |")
    if report.get("by_source"):
        names = list(report["models"])
        lines += ["", "Per source (each checked by its own rules):", "",
                  "| source | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for source, row in report["by_source"].items():
            lines.append(f"| {source} | " + " | ".join(f"{row[n]['correct']}/{row[n]['n']} ({row[n]['accuracy']:.0%})"
                                                       for n in names) + " |")
    lines += ["", "McNemar exact test (paired, two-sided):", "", "| pair | only first right | only second right | p |",
              "|---|---|---|---|"]
    for pair, t in report["mcnemar"].items():
        lines.append(f"| {pair} | {t['only_a']} | {t['only_b']} | {t['p_value']:.3g} |")
    (out / "report.md").write_text(_relative_paths("\n".join(lines) + "\n", out))
    _plots(report, out)


def _plots(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(report["models"].values())
    if not models:
        return
    names = [m["name"] for m in models]
    # Wider with more models, taller with longer names: a dozen models' labels must not overlap.
    longest = max(len(n) for n in names)
    fig, axes = plt.subplots(1, 3, figsize=(max(13.0, 1.35 * len(names)), 3.0 + 0.07 * longest))
    acc = [m["accuracy"] for m in models]
    err = [[a - m["ci95"][0] for a, m in zip(acc, models)], [m["ci95"][1] - a for a, m in zip(acc, models)]]
    axes[0].bar(names, acc, yerr=err, capsize=4, color="#4C72B0")
    axes[0].set_ylim(0, 1)
    axes[0].set_title(f"accuracy, 95% CI ({report['task']}, n={report['n_problems']})")
    axes[1].bar(names, [m["prompt_tokens_per_problem"] for m in models], label="prompt", color="#55A868")
    axes[1].bar(names, [m["completion_tokens_per_problem"] for m in models],
                bottom=[m["prompt_tokens_per_problem"] for m in models], label="completion", color="#C44E52")
    axes[1].set_title("tokens per problem")
    axes[1].legend()
    axes[2].bar(names, [m["wall_s_per_problem"] for m in models], color="#8172B2")
    axes[2].set_title("seconds per problem")
    for ax in axes:
        plt.setp(ax.get_xticklabels(), rotation=30 if len(names) <= 6 else 55, ha="right", rotation_mode="anchor")
    fig.tight_layout()
    fig.savefig(out / "evaluation.png", dpi=110)
    plt.close(fig)
