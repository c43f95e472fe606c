"""The laboratory's commands: `run`, `harvest`, `replay`, `eval`, `distill`, `compare`."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from fcagent.cli.app import app, console, escape, open_store, print_report, print_traffic_report, progress
from fcagent.cli.app import data_dir as checked_data_dir
from fcagent.cli.options import (
    DEFAULT_MODEL,
    DEFAULT_STORE,
    MODEL_HELP,
    CandidatesOpt,
    DataOpt,
    MaxAgentStepsOpt,
    MethodChoice,
    ProtocolChoice,
    ProtocolOpt,
    RecordStoreOpt,
    Split,
    StoreOpt,
    TaskOpt,
)
from fcagent.core.errors import RunFailure, UserError


class Unlabelled(str, Enum):
    skip = "skip"
    good = "good"


class PresetChoice(str, Enum):
    quick = "quick"
    full = "full"


class ReplayStudent(str, Enum):
    sft = "sft"
    base = "base"


class ReplaySteps(str, Enum):
    every = "every"
    final = "final"


class Backend(str, Enum):
    llguidance = "llguidance"
    xgrammar = "xgrammar"


@app.command()
def run(task: TaskOpt = "math",
        model: Annotated[str, typer.Option("--model", "-m", envvar="FCAGENT_MODEL", help=MODEL_HELP)] = DEFAULT_MODEL,
        limit: Annotated[int, typer.Option(min=1, max=1_000_000, help="Number of problems.")] = 20,
        split: Annotated[Split, typer.Option(help="Which split's problems (deterministic by id hash).")] = Split.test,
        protocol: ProtocolOpt = ProtocolChoice.auto,
        max_agent_steps: MaxAgentStepsOpt = None,
        store: RecordStoreOpt = None,
        data_dir: DataOpt = None,
        quiet: Annotated[bool, typer.Option(help="Only the summary, no chains.")] = False) -> None:
    """Solve task problems with a model, printing each chain, its verdict and the accuracy."""
    from fcagent.core import keys
    from fcagent.models.spec import ModelSpec
    from fcagent.pipeline.runner import run_problems
    from fcagent.tasks import get_task
    from fcagent.tracing.store import TraceStore

    t = get_task(task, data_dir=checked_data_dir(data_dir))
    problems = t.load(split=split.value, limit=limit)
    chat = ModelSpec.parse(model).for_task(t).load(problems)
    console.print(f"[bold]{len(problems)}[/] {t.spec} problems ({split.value}) with [bold]{model}[/]")

    def show(problem, result) -> None:
        if quiet:
            return
        mark = "[green]✔[/]" if result.success else "[red]✘[/]"
        console.rule(f"{mark} {problem.id}")
        console.print(f"[dim]user:[/] {escape(problem.question)}")
        for m in result.transcript[1:]:
            text = m["content"] or json.dumps(m["tool_calls"])
            console.print(f"[dim]{m['role']}:[/] {escape(text[:400])}")
        console.print(f"verdict: {escape(result.reason)}  ({result.steps} steps, {result.wall_s:.1f} s)")

    results = run_problems(chat, t, problems, store=TraceStore(store) if store is not None else None, protocol=protocol.value,
                           max_steps=max_agent_steps, on_result=show, metadata={keys.MODEL: model})
    right = sum(r.success for r in results)
    console.print(f"\n[bold]accuracy: {right}/{len(results)} = {right / max(1, len(results)):.1%}[/]  "
                  f"valid calls {sum(r.valid_calls for r in results)}/{sum(r.calls for r in results)}")


@app.command()
def harvest(task: TaskOpt = "math",
            model: Annotated[str, typer.Option("--model", "-m", envvar="FCAGENT_MODEL",
                                               help="The teacher: " + MODEL_HELP)] = "reference",
            candidates: CandidatesOpt = 1,
            temperature: Annotated[Optional[float], typer.Option(min=0.0, max=2.0, help="Sampling temperature when --candidates > 1.")] = None,
            limit: Annotated[Optional[int], typer.Option(min=1, max=10_000_000, help="Number of problems (default: all).")] = None,
            split: Annotated[Split, typer.Option(help="Split to harvest (train keeps evaluation problems out).")] = Split.train,
            store: StoreOpt = Path(DEFAULT_STORE),
            resume: Annotated[bool, typer.Option(help="Skip problems already complete in the store.")] = False,
            concurrency: Annotated[int, typer.Option(min=1, max=64, help="Problems in flight at once (remote teachers).")] = 1,
            protocol: ProtocolOpt = ProtocolChoice.auto,
            data_dir: DataOpt = None) -> None:
    """Run a teacher over a task split, K candidates per model call, storing every call."""
    from fcagent.pipeline.harvest import harvest as do_harvest

    summary = do_harvest(task=task, teacher=model, samples=candidates, temperature=temperature, limit=limit,
                         split=split.value, store=store, resume=resume, concurrency=concurrency,
                         protocol=protocol.value, data_dir=checked_data_dir(data_dir), progress=progress())
    console.print(summary)


@app.command("replay")
def replay_cmd(model: Annotated[str, typer.Option("--model", "-m", envvar="FCAGENT_MODEL",
                                                  help="The student that answers the teacher's contexts: " + MODEL_HELP)],
               store: StoreOpt = Path(DEFAULT_STORE), task: TaskOpt = "math",
               candidates: CandidatesOpt = 4,
               temperature: Annotated[float, typer.Option(min=0.0, max=2.0, help="Sampling temperature.")] = 0.8,
               limit: Annotated[Optional[int], typer.Option(min=1, max=10_000_000, help="Teacher contexts to replay (default: all).")] = None,
               steps: Annotated[ReplaySteps, typer.Option(help="Replay every teacher model call, or each episode's final one.")] = ReplaySteps.every,
               seed: Annotated[Optional[int], typer.Option(min=0, help="Sampling seed: context k samples with seed + k, "
                                                           "so the candidates repeat (default: unseeded).")] = None,
               data_dir: DataOpt = None) -> None:
    """Replay good teacher contexts through the student and record its failures (teacher-vs-student pairs)."""
    from fcagent.models.spec import ModelSpec
    from fcagent.pipeline.replay import replay
    from fcagent.tasks import get_task

    trace_store = open_store(store, write=True)
    t = get_task(task, data_dir=checked_data_dir(data_dir))
    chat = ModelSpec.parse(model).for_task(t).load()
    console.print(replay(trace_store, chat, student_name=model, task=task, samples=candidates, temperature=temperature,
                         limit=limit, steps=steps.value, seed=seed, data_dir=data_dir, progress=progress()))


def _given_on_command_line(ctx: typer.Context, name: str) -> bool:
    # typer vendors its own click: compare the source by name, not by click's enum
    return getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"


@app.command("eval")
def eval_cmd(ctx: typer.Context, model: Annotated[Optional[list[str]], typer.Option("--model", "-m", envvar="FCAGENT_MODEL",
                                                      help="NAME=SPEC or SPEC; repeat for each model. With --store, "
                                                      "`NAME=recorded` scores the recorded replies. " + MODEL_HELP)
                                                      ] = None,
             task: Annotated[Optional[str], typer.Option("--task", "-t", help="A task suite to evaluate on (math, "
                                                         "logic:prontoqa, bfcl:simple_python, ...); without it, the "
                                                         "held-out traffic of --store.")] = None,
             store: Annotated[Optional[str], typer.Option("--store", envvar="FCAGENT_STORE",
                                                          help="Without --task: the trace store whose held-out "
                                                           "traffic the models answer.")] = None,
             split: Annotated[Split, typer.Option(help="With --task: which split's problems.")] = Split.test,
             limit: Annotated[int, typer.Option(min=1, max=1_000_000, help="With --task: number of problems.")] = 100,
             test_fraction: Annotated[float, typer.Option(min=0.0, max=0.99, help="With --store: the share of requests "
                                                          "held out (the same split the exporter holds out).")] = 0.2,
             judge: Annotated[Optional[str], typer.Option(help="With --store: who judges answers in words: `default` "
                                                          "(same text, or the same numbers and names), a model spec, "
                                                          "or python:module:function.")] = None,
             unlabelled: Annotated[Unlabelled, typer.Option(help="With --store: episodes nobody labelled: skip them, "
                                                            "or take them as good.")] = Unlabelled.skip,
             shadow: Annotated[bool, typer.Option("--shadow", help="With --store: report the live traffic shadowed "
                                                  "by the student (StudentMiddleware mode='shadow', serve --shadow); "
                                                  "no model is run.")] = False,
             out: Annotated[Path, typer.Option("--out", help="Report folder.")] = Path("eval"),
             protocol: ProtocolOpt = ProtocolChoice.auto, max_agent_steps: MaxAgentStepsOpt = None,
             data_dir: DataOpt = None) -> None:
    """Evaluate models on held-out problems of a task, or on the held-out traffic of your own agent: accuracy
    (or step agreement) with CIs, McNemar tests, tokens, time."""
    from fcagent.pipeline.evaluate import evaluate, model_names

    if shadow:
        from fcagent.pipeline.traffic import shadow_report

        if store is None:
            raise UserError("`--shadow` reads a store: give --store")
        report = shadow_report(open_store(store), out_dir=out)
        console.print(f"{report['requests']} shadowed requests: agreement {report['agreement']['rate']:.1%} "
                      f"(95% CI {report['agreement']['ci95'][0]:.1%}–{report['agreement']['ci95'][1]:.1%}), "
                      f"would escalate {report['escalation_rate']:.1%}; wrote {out / 'report.md'}")
        return
    models = model_names(model or [])
    if task is not None and store is not None and _given_on_command_line(ctx, "store"):
        # $FCAGENT_STORE, set for the other commands, is no conflict; an explicit --store would be ignored
        raise UserError("give --task (a task suite) or --store (your agent's recorded traffic), not both")
    if task is None:
        if store is None:
            raise UserError("give --task (a task suite) or --store (your agent's recorded traffic)")
        from fcagent.pipeline.traffic import evaluate_traffic

        report = evaluate_traffic(open_store(store), models, out_dir=out, test_fraction=test_fraction, judge=judge,
                                  unlabelled=unlabelled.value, progress=progress())
        print_traffic_report(report)
        console.print(f"wrote {out / 'report.md'}, {out / 'results.json'}, {out / 'agreement.png'}")
        return
    report = evaluate(models, task=task, split=split.value, limit=limit, out_dir=out,
                      data_dir=checked_data_dir(data_dir), protocol=protocol.value, max_steps=max_agent_steps,
                      progress=progress())
    print_report(report)
    console.print(f"wrote {out / 'report.md'}, {out / 'results.json'}, {out / 'evaluation.png'}")
    failed = [m["name"] for m in report["models"].values() if m.get("run_errors") and m["run_errors"] == m["n"]]
    if failed:
        raise RunFailure(f"every problem failed to run for {', '.join(failed)} (see {out / 'results'}); "
                         "the accuracy shown is not a measurement")


@app.command()
def distill(task: Annotated[Optional[str], typer.Option("--task", "-t", help="A task suite to distil on (bfcl:simple_python, "
                                                        "logic:prontoqa, math:gsm8k, ...); without it, the labelled "
                                                        "traffic of --store.")] = None,
            teacher: Annotated[str, typer.Option(help="The teacher: `reference` (gold chains, offline), a local spec, "
                                                 "or provider:model.")] = "reference",
            student: Annotated[str, typer.Option(help="The student to train: " + MODEL_HELP)] = DEFAULT_MODEL,
            out: Annotated[Path, typer.Option("--out", help="Run folder (every stage resumes from it).")] = Path("runs/distill"),
            store: Annotated[Optional[str], typer.Option("--store", envvar="FCAGENT_STORE",
                                                         help="With --task: where the run records (default: "
                                                          "OUT/traces.db). Without: your agent's recorded, labelled "
                                                          "traffic, which the student learns from.")] = None,
            gate: Annotated[Optional[list[str]], typer.Option("--gate", help="Without --task: what the new student "
                                                              "must reach on held-out traffic to be promoted, e.g. "
                                                              "step_agreement>=0.9 (repeat, or join with commas).")] = None,
            baseline_model: Annotated[Optional[Path], typer.Option("--baseline-model", help="Without --task: the "
                                                                   "student in production; the new one must not be "
                                                                   "significantly worse.")] = None,
            promote: Annotated[Optional[Path], typer.Option("--promote", help="Without --task: point this name (a "
                                                            "link, e.g. runs/prod) at the new student when it passes.")] = None,
            test_fraction: Annotated[float, typer.Option(min=0.0, max=0.99, help="Without --task: the share of "
                                                         "requests held out for the evaluation.")] = 0.2,
            unlabelled: Annotated[Unlabelled, typer.Option(help="Without --task: episodes nobody labelled: skip, or "
                                                           "take them as good.")] = Unlabelled.skip,
            preset: Annotated[PresetChoice, typer.Option(help="quick (a small slice of everything; with --store, 40 training steps) or full (with --store, 3 epochs).")] = PresetChoice.quick,
            method: Annotated[Optional[list[MethodChoice]], typer.Option("--method", help="Methods to train (default: the preset's).")] = None,
            baseline: Annotated[MethodChoice, typer.Option(help="The baseline method; `sft` trains SFT on the same chosen completions.")] = MethodChoice.sft,
            rounds: Annotated[int, typer.Option(min=1, max=10, help="Rounds: the trained student replays the teacher's contexts for the next round's pairs.")] = 1,
            test_problems: Annotated[Optional[int], typer.Option(min=1, max=1_000_000, help="Override the preset's held-out problem count.")] = None,
            train_problems: Annotated[Optional[int], typer.Option(min=1, max=10_000_000, help="Override the preset's teacher problem count.")] = None,
            replay_contexts: Annotated[Optional[int], typer.Option(min=1, max=10_000_000, help="Override the preset's replayed teacher contexts.")] = None,
            replay_student: Annotated[Optional[ReplayStudent], typer.Option(help="Who samples the negatives: `sft` (the SFT student, on-policy for the warm-started methods) or `base`.")] = None,
            replay_steps: Annotated[Optional[ReplaySteps], typer.Option(help="Override the preset's replayed steps: every teacher model call, or each episode's final one.")] = None,
            constrain: Annotated[Optional[Backend], typer.Option(help="Also evaluate every student with grammar-constrained decoding.")] = None,
            seed: Annotated[Optional[int], typer.Option(min=0, help="Training seed of every method (LoRA init, batch order) and the replay's sampling seed; one run folder per seed.")] = None,
            sft_epochs: Annotated[Optional[float], typer.Option(min=0.01, max=1000, help="Override the preset's SFT epochs.")] = None,
            last_turn_weight: Annotated[Optional[float], typer.Option(min=1.0, max=1000.0, help="SFT: loss weight of each chain's final call (TrainSettings.last_turn_weight).")] = None,
            data_dir: DataOpt = None) -> None:
    """Task suites: harvest → label → export → train (the preference methods and the SFT baseline) → evaluate.
    Your own traffic (--store, no --task): split → export → train → evaluate on held-out traffic → gate → promote."""
    from fcagent.pipeline.distill import PRESETS
    from fcagent.pipeline.distill import distill as run_distill

    if task is None:
        if store is None:
            raise UserError("give --task (a task suite) or --store (your agent's labelled traffic)")
        from fcagent.pipeline.distill_traffic import check_traffic_options, distill_traffic
        trace_store = open_store(store)
        chosen_gate = check_traffic_options(trace_store, gate)
        methods_asked = [m.value for m in method] if method else ["sft"]
        if len(methods_asked) != 1:
            raise UserError("with --store, give one --method (the student to gate and promote)")
        from fcagent.pipeline.distill_traffic import TRAFFIC_PRESETS

        settings = TRAFFIC_PRESETS[preset.value].model_copy(
            update={"seed": seed or 0, **({"num_train_epochs": sft_epochs, "max_steps": -1} if sft_epochs else {})})
        result = distill_traffic(store=trace_store, out=out, student=student, method=methods_asked[0],
                                 settings=settings,
                                 baseline=str(baseline_model) if baseline_model else None, gate=chosen_gate,
                                 promote_to=promote, test_fraction=test_fraction, unlabelled=unlabelled.value,
                                 log=console.print, progress_factory=progress)
        if result.report:
            print_traffic_report(result.report)
        raise typer.Exit(result.exit_code)

    methods = [m.value for m in method] if method else None
    if methods and baseline.value not in methods:
        methods = [baseline.value, *methods]
    overrides = {k: (v.value if isinstance(v, Enum) else v) for k, v in {
        "test_problems": test_problems, "train_problems": train_problems, "replay_contexts": replay_contexts,
        "replay_student": replay_student, "replay_steps": replay_steps, "constrain": constrain}.items() if v is not None}
    chosen = PRESETS[preset.value].overridden(overrides, seed=seed, sft_epochs=sft_epochs,
                                              last_turn_weight=last_turn_weight)
    report = run_distill(task=task, teacher=teacher, student=student, out=out, store=store, preset=chosen,
                         methods=methods, rounds=rounds, data_dir=checked_data_dir(data_dir), progress_factory=progress,
                         log=console.print)
    print_report(report)
    console.print(f"report: {out / 'report.md'}  plots: {out / 'evaluation.png'}")


@app.command("compare")
def compare_cmd(runs: Annotated[list[Path], typer.Argument(help="Distill folders, one per seed (`fcagent distill --seed N`).")],
                method: Annotated[list[MethodChoice], typer.Option("--method", help="Methods compared with the baseline; repeat.")],
                baseline: Annotated[MethodChoice, typer.Option(help="The method each one is compared with.")] = MethodChoice.sft,
                out: Annotated[Path, typer.Option("--out", help="Report folder (comparison.md/.json/.png).")] = Path("comparison")) -> None:
    """Methods vs a baseline over seeds: per-seed and pooled McNemar tests, the spread across seeds."""
    from rich.table import Table

    from fcagent.pipeline.compare import compare_seeds, write_comparison

    for run_dir in runs:
        if out.resolve() == run_dir.resolve():
            raise UserError(f"`--out` {out} is one of the run folders; choose another folder")
    comparison = compare_seeds(runs, baseline=baseline.value, methods=[m.value for m in method])
    models = [comparison.baseline, *comparison.methods]
    table = Table("seed", *models, title=f"{comparison.task} · {len(runs)} seeds")
    for r in comparison.runs:
        table.add_row(str(r.seed), *[f"{r.correct[m]}/{r.n}" for m in models])
    console.print(table)
    for c in comparison.comparisons:
        console.print(f"{c.method} vs {c.baseline}: mean difference {c.mean_difference:+.1%}, wins/losses/ties "
                      f"{c.wins}/{c.losses}/{c.ties}; pooled McNemar {c.pooled.only_baseline} vs {c.pooled.only_method} "
                      f"discordant of {c.pooled_pairs}, p = {c.pooled.p_value:.3g}")
    paths = write_comparison(comparison, out)
    console.print("wrote " + ", ".join(str(p) for p in paths))
