#!/usr/bin/env bash
# Record of a past run (2026-11-26): simple_python/ and simple_python-all/ (summary.md). Kept as
# it ran; the CLI flags it uses may have been renamed since (see docs/cli.md): harvest/replay
# --samples is now --candidates, --teacher/--student of harvest/replay/train/soup are now
# -m/--model, train --max-steps is now --max-optimizer-steps, run --max-steps is now
# --max-agent-steps, serve MODEL is now serve --student MODEL, export --prompt-style as_recorded
# is now examples.
# The joined BFCL student (docs/results/bfcl/joined: simple_python + multiple + parallel +
# parallel_multiple, 612 train problems) with BFCL's live_simple train split added (178 user-written
# requests, single calls): 790 train problems, 786 SFT rows, 3 epochs, seed 0, everything else alike.
# distill's own held-out evaluation is cut to 5 problems; the comparison is simple_python's held-out
# problems (the first 100, then all 165), with and without the call grammar, against the bfcl-joined
# student in the same `fcagent eval` (measured 2026-11-26: training 2,272 s; the 100-problem
# evaluation ~4 min for the two live models: the measured run had the write rows copied in from
# docs/results/bfcl/omit, same specs and settings, which `fcagent eval` reuses; the 165-problem one
# ~14 min for four).
set -euo pipefail
fcagent distill --task bfcl:simple_python+multiple+parallel+parallel_multiple+live_simple --preset full --method sft \
  --train-problems 790 --test-problems 5 --out runs/bfcl-live
for limit in 100 165; do
  out=docs/results/bfcl/live/simple_python; [ "$limit" = 165 ] && out=$out-all
  fcagent eval --task bfcl:simple_python --limit $limit --out $out \
    --model write=runs/bfcl-joined/runs/sft --model 'write+llguidance=runs/bfcl-joined/runs/sft?constrain=llguidance' \
    --model live=runs/bfcl-live/runs/sft --model 'live+llguidance=runs/bfcl-live/runs/sft?constrain=llguidance'
done
