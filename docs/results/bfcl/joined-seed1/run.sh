#!/usr/bin/env bash
# Record of a past run (2026-11-26): simple_python/ (summary.md). Kept as it ran; the CLI flags it
# uses may have been renamed since (see docs/cli.md): harvest/replay --samples is now
# --candidates, --teacher/--student of harvest/replay/train/soup are now -m/--model, train
# --max-steps is now --max-optimizer-steps, run --max-steps is now --max-agent-steps, serve MODEL
# is now serve --student MODEL, export --prompt-style as_recorded is now examples.
# A second training seed of the joined BFCL student (docs/results/bfcl/joined, seed 0): same task,
# 612 train problems (608 SFT rows), 3 epochs; distill's own evaluation cut to 4 problems. Both seeds
# on the first 100 held-out simple_python problems, with and without the one-call grammar
# (measured 2026-11-26: training 1,716 s; evaluation ~4 min for the seed-1 models: the measured run
# had the seed-0 rows copied in from docs/results/bfcl/omit as seed0*, same specs and settings, which
# `fcagent eval` reuses).
set -euo pipefail
fcagent distill --task bfcl:simple_python+multiple+parallel+parallel_multiple --preset full --method sft \
  --train-problems 612 --test-problems 4 --seed 1 --out runs/bfcl-joined-seed1
fcagent eval --task bfcl:simple_python --limit 100 --out docs/results/bfcl/joined-seed1/simple_python \
  --model seed0=runs/bfcl-joined/runs/sft --model 'seed0+llguidance=runs/bfcl-joined/runs/sft?constrain=llguidance' \
  --model seed1=runs/bfcl-joined-seed1/runs/sft --model 'seed1+llguidance=runs/bfcl-joined-seed1/runs/sft?constrain=llguidance'
