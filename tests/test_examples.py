"""The scripts in examples/ are what users copy: the quickstart must keep running end to end."""
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs the examples

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_records_both_models_and_exports_pairs(tmp_path, data_dir, smol_dir):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("teacher") and " True " in line for line in lines) == 6  # gold chains replayed
    assert sum(line.startswith("student") for line in lines) == 6
    assert (tmp_path / "sft" / "sft.jsonl").stat().st_size > 0
    assert "SFT rows: 6" in proc.stdout


def test_own_agent_records_labels_exports_trains_and_swaps_back(tmp_path, smol_dir):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "own_agent.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "recorded 11 episodes" in out
    assert "SFT rows: 5, DPO pairs: 3 ({'final reply of an episode labelled bad': 3})" in out
    assert "trained sft: 3 steps" in out and (tmp_path / "student" / "fcagent_run.json").exists()
    assert "student + escalation: 'We have 40 units of SKU-4.'" in out


def test_own_traffic_trains_measures_on_held_out_requests_and_gates(tmp_path, smol_dir, data_dir):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "own_traffic.py"), str(tmp_path), "--requests", "12",
                           "--steps", "1"], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "recorded 12 episodes" in out
    assert "recorded: step agreement" in out and "= 100%" in out.split("recorded: step agreement")[1].splitlines()[0]
    assert "     base: step agreement" in out and "      new: step agreement" in out
    # one optimizer step teaches nothing: the gate holds it back, and nothing is promoted
    assert "falls short of >= 0.3" in out and "exit code 3" in out and not (tmp_path / "prod").exists()
    assert list((tmp_path / "loop").glob("round-1/eval/report.md"))
