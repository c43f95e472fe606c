"""Methods compared across seeds: per seed, pooled, and the spread.

One `distill` folder per seed (`fcagent distill --seed N --out runs/X-seedN`) holds each model's
per-problem outcomes (`eval/results/NAME.jsonl`). `compare_seeds` pairs a method with its baseline
problem by problem in every folder, and reports:

* per seed: both accuracies and the exact McNemar test on that seed's paired outcomes;
* pooled: the McNemar test on all seeds' paired outcomes together (seeds x problems). The seeds share
  the held-out problems, so the pooled pairs are not independent draws of problems: the pooled test
  asks whether the training recipe, over its own randomness, changes outcomes on these problems; the
  per-seed spread says how much one seed can be trusted;
* the difference in accuracy per seed, its mean and sample standard deviation, and wins/losses.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from pydantic import BaseModel

from fcagent.core.errors import UserError
from fcagent.models.manifest import RUN_MANIFEST
from fcagent.pipeline.evaluate import mcnemar_exact
from fcagent.pipeline.runner import EpisodeResult

__all__ = ["SeedRun", "MethodVsBaseline", "SeedComparison", "compare_seeds", "write_comparison"]


class SeedRun(BaseModel):
    """One seed's distill folder: each compared model's correct count on its held-out problems."""

    run: str
    seed: int | None
    n: int
    correct: dict[str, int]
    accuracy: dict[str, float]


class McNemar(BaseModel):
    only_baseline: int
    only_method: int
    p_value: float


class MethodVsBaseline(BaseModel):
    method: str
    baseline: str
    per_seed: list[McNemar]
    accuracy_difference: list[float]  # method minus baseline, per seed
    mean_difference: float
    sd_difference: float | None  # sample standard deviation across seeds (None with one seed)
    wins: int
    losses: int
    ties: int
    pooled: McNemar
    pooled_pairs: int


class SeedComparison(BaseModel):
    task: str
    baseline: str
    methods: list[str]
    runs: list[SeedRun]
    mean_accuracy: dict[str, float]
    sd_accuracy: dict[str, float | None]
    comparisons: list[MethodVsBaseline]


def _outcomes(run: Path, model: str, problem_ids: list[str]) -> list[bool]:
    path = run / "eval" / "results" / f"{model}.jsonl"
    if not path.exists():
        raise UserError(f"{path} does not exist: `{model}` was not evaluated in {run}")
    by_id: dict[str, bool] = {}
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            result = EpisodeResult.model_validate_json(line)
        except ValueError as exc:
            raise UserError(f"{path}:{line_no}: not an evaluation result ({str(exc).splitlines()[0]})") from None
        by_id[result.problem_id] = result.success
    missing = [pid for pid in problem_ids if pid not in by_id]
    if missing:
        raise UserError(f"{path}: no result for {len(missing)} of the run's problems (first: {missing[0]})")
    return [by_id[pid] for pid in problem_ids]


def _seed_of(run: Path, models: list[str]) -> int | None:
    for model in models:
        manifest = run / "runs" / model / RUN_MANIFEST
        if manifest.exists():
            return json.loads(manifest.read_text()).get("settings", {}).get("seed")
    return None


def _shown(run: Path) -> str:
    """The run folder as reports name it: relative to the working folder, never a machine's absolute path."""
    if not run.is_absolute():
        return str(run)
    try:
        return str(run.relative_to(Path.cwd()))
    except ValueError:
        return run.name


def _mcnemar(baseline: list[bool], method: list[bool]) -> McNemar:
    t = mcnemar_exact(baseline, method)
    return McNemar(only_baseline=t["only_a"], only_method=t["only_b"], p_value=t["p_value"])


def compare_seeds(runs: list[str | Path], *, baseline: str, methods: list[str]) -> SeedComparison:
    """Compare `methods` with `baseline` over the distill folders `runs` (one per seed)."""
    if not runs:
        raise UserError("give at least one run folder")
    if baseline in methods:
        raise UserError(f"`--baseline` {baseline} is also a `--method`")
    models = [baseline, *methods]
    task, problem_ids = None, None
    outcomes: list[dict[str, list[bool]]] = []
    seed_runs: list[SeedRun] = []
    for run in map(Path, runs):
        results = run / "eval" / "results.json"
        if not results.exists():
            raise UserError(f"{run} is not an evaluated distill folder (no eval/results.json)")
        report = json.loads(results.read_text())
        if task is None:
            task, problem_ids = report["task"], report["problem_ids"]
        elif (report["task"], report["problem_ids"]) != (task, problem_ids):
            raise UserError(f"{run} was evaluated on other problems than {runs[0]} ({report['task']}, "
                            f"{len(report['problem_ids'])} problems): seeds must share the held-out set")
        per_model = {m: _outcomes(run, m, problem_ids) for m in models}
        outcomes.append(per_model)
        n = len(problem_ids)
        seed_runs.append(SeedRun(run=_shown(run), seed=_seed_of(run, models), n=n,
                                 correct={m: sum(v) for m, v in per_model.items()},
                                 accuracy={m: sum(v) / n for m, v in per_model.items()}))

    def sd(values: list[float]) -> float | None:
        return statistics.stdev(values) if len(values) > 1 else None

    comparisons = []
    for method in methods:
        diffs = [r.accuracy[method] - r.accuracy[baseline] for r in seed_runs]
        pooled_base = [x for o in outcomes for x in o[baseline]]
        pooled_method = [x for o in outcomes for x in o[method]]
        comparisons.append(MethodVsBaseline(
            method=method, baseline=baseline, per_seed=[_mcnemar(o[baseline], o[method]) for o in outcomes],
            accuracy_difference=diffs, mean_difference=statistics.fmean(diffs), sd_difference=sd(diffs),
            wins=sum(d > 0 for d in diffs), losses=sum(d < 0 for d in diffs), ties=sum(d == 0 for d in diffs),
            pooled=_mcnemar(pooled_base, pooled_method), pooled_pairs=len(pooled_base)))
    return SeedComparison(
        task=task or "", baseline=baseline, methods=list(methods), runs=seed_runs,
        mean_accuracy={m: statistics.fmean(r.accuracy[m] for r in seed_runs) for m in models},
        sd_accuracy={m: sd([r.accuracy[m] for r in seed_runs]) for m in models}, comparisons=comparisons)


def write_comparison(comparison: SeedComparison, out: str | Path, *, notes: str = "") -> list[Path]:
    """`comparison.json`, `comparison.md` and `comparison.png` into `out` (a new or a report folder)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = [comparison.baseline, *comparison.methods]
    lines = [f"# {', '.join(comparison.methods)} vs {comparison.baseline}: {comparison.task}, "
             f"{len(comparison.runs)} seeds", ""]
    if notes:
        lines += [notes, ""]
    lines += ["| seed | run | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for r in comparison.runs:
        lines.append(f"| {r.seed} | `{r.run}` | " + " | ".join(f"{r.correct[m]}/{r.n}" for m in models) + " |")
    lines.append("| mean (sd) | | " + " | ".join(
        f"{comparison.mean_accuracy[m]:.1%}" + (f" ({comparison.sd_accuracy[m]:.1%})"
                                                if comparison.sd_accuracy[m] is not None else "")
        for m in models) + " |")
    lines += ["", "McNemar exact test, two-sided, on paired outcomes (per seed, then all seeds' pairs pooled):", "",
              "| method vs baseline | seed | only baseline right | only method right | p |", "|---|---|---|---|---|"]
    for c in comparison.comparisons:
        for r, t in zip(comparison.runs, c.per_seed):
            lines.append(f"| {c.method} vs {c.baseline} | {r.seed} | {t.only_baseline} | {t.only_method} | {t.p_value:.3g} |")
        lines.append(f"| {c.method} vs {c.baseline} | pooled ({c.pooled_pairs} pairs) | {c.pooled.only_baseline} | "
                     f"{c.pooled.only_method} | **{c.pooled.p_value:.3g}** |")
    lines += ["", "| method vs baseline | accuracy difference per seed | mean | sd | wins / losses / ties |",
              "|---|---|---|---|---|"]
    for c in comparison.comparisons:
        lines.append(f"| {c.method} vs {c.baseline} | " + ", ".join(f"{d:+.1%}" for d in c.accuracy_difference)
                     + f" | {c.mean_difference:+.1%} | "
                     + (f"{c.sd_difference:.1%}" if c.sd_difference is not None else "–")
                     + f" | {c.wins} / {c.losses} / {c.ties} |")
    lines += ["", "![per-seed accuracy](comparison.png)"]
    paths = [out / "comparison.json", out / "comparison.md", out / "comparison.png"]
    paths[0].write_text(comparison.model_dump_json(indent=2))
    paths[1].write_text("\n".join(lines) + "\n")
    _plot(comparison, paths[2])
    return paths


def _plot(comparison: SeedComparison, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [comparison.baseline, *comparison.methods]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(models), 3.4))
    for i, m in enumerate(models):
        values = [r.accuracy[m] for r in comparison.runs]
        ax.bar(i, comparison.mean_accuracy[m], color="#4C72B0" if i else "#999999", alpha=0.6)
        ax.scatter([i] * len(values), values, color="black", zorder=3, s=14)
    ax.set_xticks(range(len(models)), models, rotation=20)
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"{comparison.task}: {len(comparison.runs)} seeds (bars: mean, dots: seeds)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
