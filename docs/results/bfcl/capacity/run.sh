#!/usr/bin/env bash
# Record of a past run (2026-11-26): the LoRA r=64 and whole-model students' evaluations in
# simple_python/, simple_python-all/ and simple_python-epochs/ (summary.md). Kept as it ran; the
# CLI flags it uses may have been renamed since (see docs/cli.md): harvest/replay --samples is now
# --candidates, --teacher/--student of harvest/replay/train/soup are now -m/--model, train
# --max-steps is now --max-optimizer-steps, run --max-steps is now --max-agent-steps, serve MODEL
# is now serve --student MODEL, export --prompt-style as_recorded is now examples.
# Is the joined BFCL student (docs/results/bfcl/joined: LoRA r=16, 3 epochs, 608 SFT rows of the four
# categories' train splits) limited by its adapter's capacity? The same rows, epochs, batches and seed
# with a LoRA adapter of rank 64, and with every weight trained (full_finetune); held-out simple_python
# problems (the first 100, then all 165), official rules, with and without the one-call grammar; and
# the whole-model student after each epoch (first 100).
# Needs the joined run's SFT rows: fcagent distill --task bfcl:simple_python+multiple+parallel+parallel_multiple \
#   --preset full --method sft --train-problems 612 --test-problems 4 --out runs/bfcl-joined
# (measured 2026-11-26: training 2,102 s (r64) and 2,176 s (full); the r16 evaluation rows were copied
# from docs/results/bfcl/joined-seed1 and docs/results/bfcl/live, and full-epoch3's from simple_python/,
# same specs and settings, which `fcagent eval` reuses).
set -euo pipefail
here=docs/results/bfcl/capacity
fcagent train --pairs runs/bfcl-joined/data-sft --method sft --out runs/bfcl-r64 --config $here/lora-r64.yaml
fcagent train --pairs runs/bfcl-joined/data-sft --method sft --out runs/bfcl-fullft --config $here/full.yaml
# a fourth epoch, continued from the 3-epoch whole model (714 s)
fcagent train --pairs runs/bfcl-joined/data-sft --student runs/bfcl-fullft --method sft --out runs/bfcl-fullft-epoch4 \
  --config $here/full-epoch4.yaml
models=(--model r16=runs/bfcl-joined/runs/sft --model 'r16+llguidance=runs/bfcl-joined/runs/sft?constrain=llguidance'
        --model r64=runs/bfcl-r64 --model 'r64+llguidance=runs/bfcl-r64?constrain=llguidance'
        --model full=runs/bfcl-fullft --model 'full+llguidance=runs/bfcl-fullft?constrain=llguidance')
fcagent eval --task bfcl:simple_python --limit 100 --out $here/simple_python "${models[@]}"
fcagent eval --task bfcl:simple_python --limit 165 --out $here/simple_python-all "${models[@]}"
fcagent eval --task bfcl:simple_python --limit 100 --out $here/simple_python-epochs \
  --model 'full-epoch1=runs/bfcl-fullft/epochs/1' --model 'full-epoch1+llguidance=runs/bfcl-fullft/epochs/1?constrain=llguidance' \
  --model 'full-epoch2=runs/bfcl-fullft/epochs/2' --model 'full-epoch2+llguidance=runs/bfcl-fullft/epochs/2?constrain=llguidance' \
  --model 'full-epoch3=runs/bfcl-fullft' --model 'full-epoch3+llguidance=runs/bfcl-fullft?constrain=llguidance' \
  --model 'full-epoch4=runs/bfcl-fullft-epoch4' --model 'full-epoch4+llguidance=runs/bfcl-fullft-epoch4?constrain=llguidance'
