"""Statistics against hand-computed values, the report files, and distill's stage-by-stage resume."""

import json

import pytest

from fcagent.pipeline.evaluate import (
    bootstrap_ci,
    mcnemar_exact,
    summarize,
    write_report,
)
from fcagent.pipeline.runner import EpisodeResult


def test_mcnemar_exact_matches_hand_computed_binomial_tails():
    # 6 discordant pairs, split 5/1: p = 2 * P(X <= 1 | n=6, 1/2) = 2 * (1 + 6) / 64 = 0.21875
    a = [True] * 5 + [False] + [True] * 10 + [False] * 4
    b = [False] * 5 + [True] + [True] * 10 + [False] * 4
    assert mcnemar_exact(a, b) == {"only_a": 5, "only_b": 1, "p_value": pytest.approx(0.21875)}
    # 10 vs 0: p = 2 / 2**10
    assert mcnemar_exact([True] * 10, [False] * 10)["p_value"] == pytest.approx(2 / 1024)
    # balanced or no discordance: p = 1
    assert mcnemar_exact([True, False], [False, True])["p_value"] == 1.0
    assert mcnemar_exact([True, True], [True, True])["p_value"] == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact([True], [True, False])


def test_bootstrap_interval_brackets_the_mean_and_is_deterministic():
    outcomes = [True] * 30 + [False] * 70
    lo, hi = bootstrap_ci(outcomes, seed=3)
    assert lo < 0.30 < hi and 0.19 < lo < 0.25 and 0.35 < hi < 0.41  # normal approx: 0.30 +- 0.09
    assert bootstrap_ci(outcomes, seed=3) == (lo, hi)
    assert bootstrap_ci([True] * 5) == (1.0, 1.0)


def test_summary_and_report_files(tmp_path):
    results = [EpisodeResult(problem_id=str(i), success=i < 3, reason="", status="answered", steps=2, calls=2,
                             valid_calls=1 + (i % 2), prompt_tokens=100, completion_tokens=10, wall_s=0.5) for i in range(4)]
    s = summarize("m", "spec", results)
    assert (s.correct, s.accuracy, s.valid_call_rate, s.mean_steps) == (3, 0.75, 6 / 8, 2.0)
    report = {"task": "math", "split": "test", "n_problems": 4, "problem_ids": [r.problem_id for r in results],
              "models": {"m": s.model_dump()}, "mcnemar": {}}
    write_report(report, tmp_path)
    assert "| m | `spec` | 3/4 | 75.0%" in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["models"]["m"]["correct"] == 3
    assert (tmp_path / "evaluation.png").stat().st_size > 5000


def test_a_joined_task_is_reported_per_source_too(tmp_path, data_dir):
    from langchain_core.messages import AIMessage

    from fcagent import get_task
    from fcagent.agent.testing import ScriptedChatModel
    from fcagent.pipeline.evaluate import evaluate

    task = "bfcl:simple_python+parallel"
    problems = get_task(task, data_dir=data_dir).load(split="test", limit=4)
    # A model that answers every problem with its first gold call: right on simple_python, wrong on parallel.
    first = {p.question: [AIMessage(content="", tool_calls=[{"name": c.name, "args": c.args, "id": None} for c in p.gold_chain[0][:1]])]
             for p in problems}
    scripted = ScriptedChatModel(responses=first)
    report = evaluate({"first-call": "scripted"}, task=task, limit=4, out_dir=tmp_path, data_dir=data_dir,
                      loaded={"first-call": scripted})
    assert report["by_source"] == {"simple_python": {"first-call": {"correct": 2, "n": 2, "accuracy": 1.0}},
                                   "parallel": {"first-call": {"correct": 0, "n": 2, "accuracy": 0.0}}}
    assert "| parallel | 0/2 (0%) |" in (tmp_path / "report.md").read_text()
    single = evaluate({"first-call": "scripted"}, task="bfcl:simple_python", limit=2, out_dir=tmp_path / "one",
                      data_dir=data_dir, loaded={"first-call": scripted})
    assert "by_source" not in single


@pytest.mark.slow
def test_distill_runs_every_stage_then_resumes_stage_by_stage(tmp_path, tiny_model_dir):
    from fcagent.pipeline.distill import DistillPreset, distill
    from fcagent.training.settings import TrainSettings

    preset = DistillPreset(train_problems=4, test_problems=2, samples=2, replay_contexts=3, methods=["sft", "dpo"],
                           sft=TrainSettings(method="sft", max_steps=1, per_device_train_batch_size=2),
                           preference=TrainSettings(method="dpo", max_steps=1, per_device_train_batch_size=1,
                                                    gradient_accumulation_steps=2))
    logs: list[str] = []
    report = distill(task="math", student=str(tiny_model_dir), out=tmp_path, preset=preset, log=logs.append)
    assert set(report["models"]) == {"base", "sft", "dpo"} and report["n_problems"] == 2
    stages = ("harvest", "export-sft", "train-sft", "replay", "export", "train-dpo", "eval")
    for stage in stages:
        assert (tmp_path / f"{stage}.done.json").exists(), stage
    # the SFT student sampled the negatives (replay_student="sft"), so SFT trained before the replay
    assert [line.split("]")[0][1:] for line in logs] == list(stages)
    from fcagent.tracing.store import TraceStore

    replayers = {ep.model for ep in TraceStore(tmp_path / "traces.db").episodes()
                 if ep.metadata.get("fcagent_role") == "student-replay"}
    assert replayers == {str(tmp_path / "runs" / "sft")}
    # each method trained with the preset's own TrainSettings, in the compact prompt style
    manifests = {m: json.loads((tmp_path / "runs" / m / "fcagent_run.json").read_text()) for m in ("sft", "dpo")}
    recorded = {m: v["settings"] for m, v in manifests.items()}
    assert (recorded["dpo"]["per_device_train_batch_size"], recorded["dpo"]["gradient_accumulation_steps"]) == (1, 2)
    assert (recorded["sft"]["per_device_train_batch_size"], recorded["sft"]["gradient_accumulation_steps"]) == (2, 1)
    assert {v["prompt_style"] for v in manifests.values()} == {"compact"}
    assert (tmp_path / "report.md").exists() and "reference" in (tmp_path / "report.md").read_text()
    logs.clear()
    distill(task="math", student=str(tiny_model_dir), out=tmp_path, preset=preset, log=logs.append)
    assert sum("done before, skipped" in line for line in logs) == 7  # nothing was redone
    (tmp_path / "eval.done.json").unlink()
    # an export that failed to make pairs is not "done": the next run exports again
    (tmp_path / "export.done.json").write_text(json.dumps({"sft_rows": 1, "pairs": 0, "pairs_error": "simulated"}))
    logs.clear()
    distill(task="math", student=str(tiny_model_dir), out=tmp_path, preset=preset, log=logs.append)
    assert sum("done before, skipped" in line for line in logs) == 5
    assert any(line.startswith("[eval]") and "skipped" not in line for line in logs)
    assert json.loads((tmp_path / "export.done.json").read_text())["pairs"] > 0
    # a second round: the trained student replays, its failures join the pairs, dpo trains again (and
    # the evaluation, done before, runs again for the new model)
    report = distill(task="math", student=str(tiny_model_dir), out=tmp_path, preset=preset, rounds=2, log=logs.append)
    assert "dpo-r2" in report["models"]
    for stage in ("replay-r2", "export-r2", "train-dpo-r2"):
        assert (tmp_path / f"{stage}.done.json").exists(), stage
    # --constrain on the finished folder: only the constrained twins are evaluated, beside the rest
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "eval" / "results").glob("*.jsonl")}
    logs.clear()
    report = distill(task="math", student=str(tiny_model_dir), out=tmp_path, rounds=2, log=logs.append,
                     preset=preset.model_copy(update={"constrain": "llguidance"}))
    assert {"base+llguidance", "sft+llguidance", "dpo+llguidance", "dpo-r2+llguidance"} <= set(report["models"])
    assert report["models"]["sft+llguidance"]["spec"].endswith("runs/sft?constrain=llguidance")
    assert all((tmp_path / "eval" / "results" / name).stat().st_mtime_ns == mtime for name, mtime in before.items())
    assert set(json.loads((tmp_path / "eval.done.json").read_text())["models"]) == set(report["models"])


@pytest.mark.slow
def test_distill_with_only_sft_skips_the_replay_and_the_pair_export(tmp_path, tiny_model_dir):
    # Replaying every train context is the costliest stage after training; SFT needs no negatives.
    from fcagent.pipeline.distill import DistillPreset, distill
    from fcagent.training.settings import TrainSettings

    preset = DistillPreset(train_problems=3, test_problems=2, samples=2, replay_contexts=3, methods=["sft"],
                           sft=TrainSettings(method="sft", max_steps=1, per_device_train_batch_size=2),
                           preference=TrainSettings(method="dpo", max_steps=1))
    logs: list[str] = []
    report = distill(task="math", student=str(tiny_model_dir), out=tmp_path, preset=preset, log=logs.append)
    assert set(report["models"]) == {"base", "sft"}
    assert [line.split("]")[0][1:] for line in logs] == ["harvest", "export-sft", "train-sft", "eval"]
    assert not (tmp_path / "replay.done.json").exists() and not (tmp_path / "data" / "pairs.jsonl").exists()
    text = (tmp_path / "report.md").read_text()
    assert "no preference method: no replay" in text and "SFT rows, 0 preference pairs" in text
    assert "| data | 0 SFT rows" not in text and "| setting | value |" in text
    # `fcagent eval` on the run folder decodes it as distill did (ModelSpec: the task's decoding defaults,
    # the run's prompt style): the same reply, tokens, steps and verdict on every problem
    from typer.testing import CliRunner

    from fcagent.cli.app import app

    result = CliRunner().invoke(app, ["eval", "-m", f"sft={tmp_path / 'runs' / 'sft'}", "--task", "math", "--limit", "2",
                                      "--out", str(tmp_path / "again")])
    assert result.exit_code == 0, result.output

    def per_problem(folder):
        rows = [json.loads(line) for line in (folder / "results" / "sft.jsonl").read_text().splitlines()]
        return [{k: v for k, v in row.items() if k not in ("wall_s", "episode_id")} for row in rows]

    assert per_problem(tmp_path / "again") == per_problem(tmp_path / "eval")
    assert sum(row["completion_tokens"] for row in per_problem(tmp_path / "eval")) > 0
    # With the untrained student replaying, SFT trains on the pair export's folder, made without pairs;
    # a later run that asks for a preference method replays and exports again, with pairs.
    base_replay = preset.model_copy(update={"replay_student": "base"})
    other = tmp_path / "base-replay"
    distill(task="math", student=str(tiny_model_dir), out=other, preset=base_replay, log=logs.append)
    assert "pairs" not in json.loads((other / "export.done.json").read_text())
    report = distill(task="math", student=str(tiny_model_dir), out=other, log=logs.append,
                     preset=base_replay.model_copy(update={"methods": ["sft", "dpo"]}))
    assert json.loads((other / "export.done.json").read_text())["pairs"] > 0 and "dpo" in report["models"]


def test_learning_curve_reads_base_each_epoch_snapshot_and_the_final_sft(tmp_path):
    from fcagent.pipeline.distill import _learning_curve

    report = {"task": "math", "models": {"base": {"accuracy": 0.1}, "sft@1": {"accuracy": 0.4},
                                         "sft@2": {"accuracy": 0.6}, "sft": {"accuracy": 0.5}}}
    assert _learning_curve(report, [1, 2, 3], tmp_path / "curve.png") == [(0, 0.1), (1, 0.4), (2, 0.6), (3, 0.5)]
    assert (tmp_path / "curve.png").stat().st_size > 5000
    assert _learning_curve(report, [], tmp_path / "none.png") == [] and not (tmp_path / "none.png").exists()
    # A joined task draws a line per source beside the overall one; the returned curve is the overall one.
    joined = {**report, "by_source": {"parallel": {k: {"accuracy": 0.0} for k in report["models"]},
                                      "multiple": report["models"]}}
    assert _learning_curve(joined, [1, 2, 3], tmp_path / "joined.png") == [(0, 0.1), (1, 0.4), (2, 0.6), (3, 0.5)]
    assert (tmp_path / "joined.png").stat().st_size > (tmp_path / "curve.png").stat().st_size
