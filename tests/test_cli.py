import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from fcagent.cli.app import app
from fcagent.tracing.store import TraceStore

runner = CliRunner()


def test_run_prints_chains_verdicts_and_accuracy(data_dir):
    result = runner.invoke(app, ["run", "--task", "logic:prontoqa", "--model", "reference", "--limit", "2",
                                 "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert "facts_about" in result.output and "correct answer" in result.output
    assert "accuracy: 2/2 = 100.0%" in result.output


def test_harvest_resume_and_traces_commands(tmp_path):
    db = tmp_path / "t.db"
    assert runner.invoke(app, ["harvest", "--task", "math", "--limit", "4", "--store", str(db)]).exit_code == 0
    result = runner.invoke(app, ["harvest", "--task", "math", "--limit", "6", "--store", str(db), "--resume"])
    assert "'skipped': 4" in result.output and "'ran': 2" in result.output
    assert TraceStore(db).count() == 6
    show = runner.invoke(app, ["traces", "show", "--store", str(db)])
    assert show.exit_code == 0 and "final_answer" in show.output and "episode label (verifier): correct answer" in show.output
    stats = runner.invoke(app, ["traces", "stats", "--store", str(db)])
    assert '"verifier:good": 6' in stats.output
    assert runner.invoke(app, ["traces", "ls", "--store", str(db)]).exit_code == 0
    out = tmp_path / "x.jsonl"
    assert runner.invoke(app, ["traces", "export", str(out), "--store", str(db)]).exit_code == 0
    assert len(out.read_text().splitlines()) == 6


@pytest.mark.slow
def test_sigkill_mid_harvest_then_resume_stores_every_problem_once(tmp_path, data_dir):
    db = tmp_path / "k.db"
    env = {**os.environ, "FCAGENT_DATA": str(data_dir)}
    cmd = [sys.executable, "-m", "fcagent", "harvest", "--task", "math:gsm8k", "--limit", "400", "--store", str(db)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:  # kill once some, but not all, episodes are in
        time.sleep(0.2)
        if db.exists():
            try:
                if TraceStore(db).count() >= 5:
                    break
            except Exception:
                pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = TraceStore(db).count()
    assert 0 < partial < 400
    subprocess.run([*cmd, "--resume"], env=env, check=True, capture_output=True)
    store = TraceStore(db)
    ids = [e.problem_id for e in store.episodes()]
    from fcagent import get_task

    expected = {p.id for p in get_task("math:gsm8k", data_dir=data_dir).load(split="train", limit=400) if p.gold_chain}
    assert len(ids) == len(set(ids)) and set(ids) == expected
    assert all(len(t.completions) == len(t.episode.outputs.get("errors", [])) + t.episode.outputs["steps"]
               for t in list(store.traces())[:20])


@pytest.mark.slow
def test_errors_are_messages_not_tracebacks(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fcagent", "run", "--task", "chess"], capture_output=True, text=True)
    assert result.returncode == 2 and "`task` must be one of" in result.stdout and "Traceback" not in result.stderr


@pytest.mark.slow
def test_distill_rejects_bad_overrides_before_any_work(tmp_path):
    for args, expected in ((["--preset", "huge"], "'huge' is not one of 'quick', 'full'"),
                           (["--replay-student", "nobody"], "--replay-student"),
                           (["--replay-steps", "last"], "--replay-steps"),
                           (["--test-problems", "many"], "Invalid value"),
                           (["--constrain", "outlines"], "constrain"),
                           (["--last-turn-weight", "0.5"], "--last-turn-weight"),
                           (["--seed", "-1"], "--seed"),
                           (["--method", "sft-chosen-twice"], "--method")):
        proc = subprocess.run([sys.executable, "-m", "fcagent", "distill", "--task", "math", "--out",
                               str(tmp_path / "run"), *args], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "COLUMNS": "200"})  # rich wraps error boxes to the width
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert expected in proc.stdout + proc.stderr
    assert not (tmp_path / "run").exists()  # nothing was started


def test_distill_overrides_reach_the_training_settings():
    from fcagent.pipeline.distill import PRESETS

    plan = PRESETS["full"].overridden({"test_problems": 7}, seed=2, sft_epochs=2, last_turn_weight=8)
    assert plan.test_problems == 7 and plan.name == "full"
    assert plan.sft.seed == plan.preference.seed == 2
    assert plan.sft.num_train_epochs == plan.preference.sft_epochs == 2 and plan.sft.last_turn_weight == 8
    assert plan.preference.last_turn_weight == 1.0 and PRESETS["full"].sft.seed == 0  # the preset itself unchanged
    assert "sft-chosen" in plan.methods  # the matched-compute control trains with every full run
