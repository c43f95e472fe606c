"""Methods over seeds: per-seed and pooled McNemar, the spread, the report, and clear errors."""

import json

from typer.testing import CliRunner

from fcagent.cli.app import app
from fcagent.pipeline.compare import compare_seeds
from fcagent.pipeline.runner import EpisodeResult

runner = CliRunner(env={"COLUMNS": "300"})  # a message is one line; narrower terminals wrap it
IDS = [f"p{i}" for i in range(10)]


def make_run(folder, seed, outcomes, ids=IDS, task="bfcl:simple_python"):
    """A distill folder as `fcagent distill` leaves it: per-model results and the run manifests' seeds."""
    (folder / "eval" / "results").mkdir(parents=True)
    (folder / "eval" / "results.json").write_text(json.dumps({"task": task, "problem_ids": ids}))
    for model, wins in outcomes.items():
        rows = [EpisodeResult(problem_id=pid, success=pid in wins, reason="", status="answered") for pid in ids]
        (folder / "eval" / "results" / f"{model}.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in rows))
        (folder / "runs" / model).mkdir(parents=True)
        (folder / "runs" / model / "fcagent_run.json").write_text(json.dumps({"settings": {"seed": seed}}))
    return folder


def three_seeds(tmp_path):
    # sft-dpo gains 3, 3 and 3 problems over sft-chosen and never loses one: 9 vs 0 discordant pooled
    return [make_run(tmp_path / f"s{seed}", seed, {"sft-chosen": set(IDS[:4]), "sft-dpo": set(IDS[:4 + 3])})
            for seed in range(3)]


def test_per_seed_pooled_and_spread(tmp_path):
    runs = three_seeds(tmp_path)
    (runs[2] / "eval" / "results" / "sft-dpo.jsonl").write_text("".join(
        EpisodeResult(problem_id=pid, success=pid in IDS[1:5], reason="", status="answered").model_dump_json() + "\n"
        for pid in IDS))  # seed 2: loses p0, gains p4 (a tie in accuracy)
    c = compare_seeds(runs, baseline="sft-chosen", methods=["sft-dpo"])
    assert [r.seed for r in c.runs] == [0, 1, 2]
    assert [r.correct["sft-dpo"] for r in c.runs] == [7, 7, 4]
    cmp = c.comparisons[0]
    assert [(t.only_baseline, t.only_method) for t in cmp.per_seed] == [(0, 3), (0, 3), (1, 1)]
    assert (cmp.pooled.only_baseline, cmp.pooled.only_method, cmp.pooled_pairs) == (1, 7, 30)
    assert abs(cmp.pooled.p_value - 2 * (1 + 8) / 2**8) < 1e-12  # exact binomial, two-sided
    assert (cmp.wins, cmp.losses, cmp.ties) == (2, 0, 1)
    assert abs(cmp.mean_difference - 0.2) < 1e-12 and abs(cmp.sd_difference - 0.17320508) < 1e-6


def test_cli_writes_the_report_without_machine_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    three_seeds(tmp_path)
    result = runner.invoke(app, ["compare", str(tmp_path / "s0"), "s1", "s2", "--baseline", "sft-chosen",
                                 "--method", "sft-dpo", "--out", "report"])
    assert result.exit_code == 0, result.output
    assert "p = 0.00391" in result.output  # 0 vs 9 discordant
    text = (tmp_path / "report" / "comparison.md").read_text()
    assert "| sft-dpo vs sft-chosen | pooled (30 pairs) | 0 | 9 | **0.00391** |" in text
    assert str(tmp_path) not in text + (tmp_path / "report" / "comparison.json").read_text()
    assert (tmp_path / "report" / "comparison.png").stat().st_size > 1000


def test_bad_inputs_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = [r.relative_to(tmp_path) for r in three_seeds(tmp_path)]
    result = runner.invoke(app, ["compare", *map(str, runs), "--method", "sft-rpo", "--baseline", "sft-chosen",
                                 "--out", "r"])
    assert result.exit_code == 2 and "sft-rpo.jsonl does not exist" in result.output
    assert len(result.output.strip().splitlines()) == 1
    other = make_run(tmp_path / "other", 3, {"sft-chosen": set(), "sft-dpo": set()}, ids=IDS[:5])
    result = runner.invoke(app, ["compare", str(runs[0]), "other", "--method", "sft-dpo", "--baseline", "sft-chosen"])
    assert result.exit_code == 2 and "seeds must share the held-out set" in result.output
    result = runner.invoke(app, ["compare", str(runs[0]), "--method", "sft-dpo", "--baseline", "sft-chosen",
                                 "--out", str(runs[0])])
    assert result.exit_code == 2 and "is one of the run folders" in result.output
    (tmp_path / runs[1] / "eval" / "results" / "sft-dpo.jsonl").write_text("{not json\n")
    result = runner.invoke(app, ["compare", *map(str, runs), "--method", "sft-dpo", "--baseline", "sft-chosen",
                                 "--out", "r"])
    assert result.exit_code == 2 and "sft-dpo.jsonl:1: not an evaluation result" in result.output
