#!/usr/bin/env bash
# Record of a past run (2026-11-27): simple_python-all/ and multiple+live_simple/ (summary.md).
# Kept as it ran; the CLI flags it uses may have been renamed since (see docs/cli.md):
# harvest/replay --samples is now --candidates, --teacher/--student of harvest/replay/train/soup
# are now -m/--model, train --max-steps is now --max-optimizer-steps, run --max-steps is now
# --max-agent-steps, serve MODEL is now serve --student MODEL, export --prompt-style as_recorded
# is now examples.
# BFCL simple_python: the soup of two whole-model seeds' epochs 2 and 3, with and without dropping
# ungrounded optional arguments. Decided before any result below was seen (2026-11-27, committed
# before training started): train seed 3 with the recipe of docs/results/bfcl/grounded (seed 2 is
# that run's student, runs/bfcl-fullft-seed2), soup s2's and s3's epochs 2 and 3 (four members, equal
# weights), and evaluate under the one-call grammar on all 165 held-out simple_python problems (the
# first 100 are its first 100 rows). The headline is `soup-s2s3+llguidance+drop`: it counts toward the
# 75% target only if it reaches 124/165 (75.2%); every other row is context.
# Why this recipe: on every earlier comparison a soup beat its members (docs/results/bfcl/soup), the
# earlier two-seed soup decided beforehand scored 116/165, and 121/165 with the option re-scored
# (docs/results/bfcl/grounded/reanalysis.md); no other lever is left untried at 135M offline.
# Needs the joined run's SFT rows and the seed-2 student: see docs/results/bfcl/grounded/run.sh.
set -euo pipefail
here=docs/results/bfcl/two-seeds
fcagent train --pairs runs/bfcl-joined/data-sft --method sft --out runs/bfcl-fullft-seed3 --config $here/full-seed3.yaml
s2=runs/bfcl-fullft-seed2 s3=runs/bfcl-fullft-seed3
fcagent soup --student $s2/epochs/2 --student $s2 --student $s3/epochs/2 --student $s3 --out runs/bfcl-soup-s2s3
fcagent soup --student $s3/epochs/2 --student $s3 --out runs/bfcl-soup-s3ep23
g='?constrain=llguidance' d='&drop_ungrounded=true'
fcagent eval --task bfcl:simple_python --limit 165 --out $here/simple_python-all \
  --model "soup-s2s3+llguidance+drop=runs/bfcl-soup-s2s3$g$d" --model "soup-s2s3+llguidance=runs/bfcl-soup-s2s3$g" \
  --model "soup-s3ep23+llguidance+drop=runs/bfcl-soup-s3ep23$g$d" --model "s3+llguidance+drop=$s3$g$d"
# Added after the rows above were seen, before this one was decoded: the two-seed soup on the held-out
# categories docs/results/bfcl/grounded checked its option on (multiple 67, live_simple 80), beside that
# run's soup of s2's epochs (67/147 with the option).
fcagent eval --task bfcl:multiple+live_simple --limit 147 --out $here/multiple+live_simple \
  --model "soup-s2s3+llguidance+drop=runs/bfcl-soup-s2s3$g$d"
