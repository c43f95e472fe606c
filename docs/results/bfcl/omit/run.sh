#!/usr/bin/env bash
# Record of a past run (2026-11-26): simple_python/ (summary.md). Kept as it ran; the CLI flags it
# uses may have been renamed since (see docs/cli.md): harvest/replay --samples is now
# --candidates, --teacher/--student of harvest/replay/train/soup are now -m/--model, train
# --max-steps is now --max-optimizer-steps, run --max-steps is now --max-agent-steps, serve MODEL
# is now serve --student MODEL, export --prompt-style as_recorded is now examples.
# The joined BFCL student (docs/results/bfcl/joined) trained again with gold chains that leave out
# optional parameters whose answers accept omission (BfclTask.gold_optional = "omit"; the default,
# "write", spells them out, as for the bfcl-joined student). Same task, rows, epochs and seed.
# distill's own held-out evaluation is cut to 4 problems: the comparison is the first 100
# simple_python held-out problems, with and without the call grammar, evaluated below for both
# students in one `fcagent eval` (measured 2026-11-26: training 1,779 s, the evaluation 8 min).
set -euo pipefail
python - <<'PY'
import sys
from fcagent.tasks.bfcl import BfclTask
from fcagent.cli.app import main

BfclTask.gold_optional = "omit"
sys.argv = ["fcagent", "distill", "--task", "bfcl:simple_python+multiple+parallel+parallel_multiple", "--preset", "full",
            "--method", "sft", "--train-problems", "612", "--test-problems", "4", "--out", "runs/bfcl-omit"]
main()
PY
fcagent eval --task bfcl:simple_python --limit 100 --out docs/results/bfcl/omit/simple_python \
  --model write=runs/bfcl-joined/runs/sft --model 'write+llguidance=runs/bfcl-joined/runs/sft?constrain=llguidance' \
  --model omit=runs/bfcl-omit/runs/sft --model 'omit+llguidance=runs/bfcl-omit/runs/sft?constrain=llguidance'
