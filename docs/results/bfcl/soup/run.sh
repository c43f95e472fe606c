#!/usr/bin/env bash
# Record of a past run (2026-11-27): simple_python/ and simple_python-all/ (summary.md). Kept as
# it ran; the CLI flags it uses may have been renamed since (see docs/cli.md): harvest/replay
# --samples is now --candidates, --teacher/--student of harvest/replay/train/soup are now
# -m/--model, train --max-steps is now --max-optimizer-steps, run --max-steps is now
# --max-agent-steps, serve MODEL is now serve --student MODEL, export --prompt-style as_recorded
# is now examples.
# Model soups of the joined BFCL students (docs/results/bfcl/capacity, bfcl/joined, bfcl/joined-seed1,
# bfcl/live): students of the same base averaged weight by weight (`fcagent soup`), each soup one model
# of the same size and speed; held-out simple_python problems (all 165, and the first 100), official
# rules, with the one-call grammar (`?constrain=llguidance`), beside the students they came from.
# Needs the runs of docs/results/bfcl/capacity/run.sh, docs/results/bfcl/joined (and -seed1) and
# docs/results/bfcl/live. Measured 2026-11-27: each soup took 16-43 s to build. The soups' evaluation
# rows were first made from soups built by an ad hoc script of the same averaging; `fcagent soup`
# rebuilt them byte for byte (the same merged_sha256), so those rows were copied in, and the students'
# rows from docs/results/bfcl/capacity (same specs and settings, which `fcagent eval` reuses).
set -euo pipefail
here=docs/results/bfcl/soup
full=runs/bfcl-fullft r16=runs/bfcl-joined/runs/sft
fcagent soup --student $full/epochs/2 --student $full --out runs/bfcl-soup-ep23
fcagent soup --student $full/epochs/2 --student $full --student runs/bfcl-fullft-epoch4 --out runs/bfcl-soup-ep234
fcagent soup --student $full --student $r16 --student runs/bfcl-r64 --out runs/bfcl-soup-mix3
fcagent soup --student $full/epochs/2 --student $full --student runs/bfcl-fullft-epoch4 --student $r16 \
  --student runs/bfcl-joined-seed1/runs/sft --student runs/bfcl-r64 --student runs/bfcl-live/runs/sft --out runs/bfcl-soup-all7
fcagent soup --student $r16/epochs/2 --student $r16 --out runs/bfcl-soup-r16ep23
g='?constrain=llguidance'
models=(--model "r16+llguidance=$r16$g" --model "full+llguidance=$full$g" --model "full=$full"
        --model "soup-ep23+llguidance=runs/bfcl-soup-ep23$g" --model "soup-ep23=runs/bfcl-soup-ep23"
        --model "soup-ep234+llguidance=runs/bfcl-soup-ep234$g" --model "soup-mix3+llguidance=runs/bfcl-soup-mix3$g"
        --model "soup-all7+llguidance=runs/bfcl-soup-all7$g" --model "soup-r16ep23+llguidance=runs/bfcl-soup-r16ep23$g")
fcagent eval --task bfcl:simple_python --limit 165 --out $here/simple_python-all "${models[@]}"
fcagent eval --task bfcl:simple_python --limit 100 --out $here/simple_python "${models[@]}"
# Decided before their results were seen: does averaging epochs 2 and 3 help a second whole-model
# student (seed 1), and does a soup of both seeds' epochs 2 and 3 help more? (training 2,209 s)
fcagent train --pairs runs/bfcl-joined/data-sft --method sft --out runs/bfcl-fullft-seed1 --config $here/full-seed1.yaml
s1=runs/bfcl-fullft-seed1
fcagent soup --student $s1/epochs/2 --student $s1 --out runs/bfcl-soup-s1ep23
fcagent soup --student $full/epochs/2 --student $full --student $s1/epochs/2 --student $s1 --out runs/bfcl-soup-2seeds
models+=(--model "full-s1+llguidance=$s1$g" --model "soup-s1ep23+llguidance=runs/bfcl-soup-s1ep23$g"
         --model "soup-2seeds+llguidance=runs/bfcl-soup-2seeds$g" --model "soup-2seeds=runs/bfcl-soup-2seeds")
fcagent eval --task bfcl:simple_python --limit 165 --out $here/simple_python-all "${models[@]}"
fcagent eval --task bfcl:simple_python --limit 100 --out $here/simple_python "${models[@]}"
