#!/usr/bin/env bash
# Record of a past run (2026-11-26): the three seeds' runs whose reports are seed0/, seed1/ and
# seed2/ (compared in comparison.md). Kept as it ran; the CLI flags it uses may have been renamed
# since (see docs/cli.md): harvest/replay --samples is now --candidates, --teacher/--student of
# harvest/replay/train/soup are now -m/--model, train --max-steps is now --max-optimizer-steps,
# run --max-steps is now --max-agent-steps, serve MODEL is now serve --student MODEL, export
# --prompt-style as_recorded is now examples.
# ProntoQA: preference training vs SFT on the same chosen completions, three seeds (run from the
# project root, after `fcagent distill --task logic:prontoqa --preset full --method sft --test-problems
# 100 --out runs/logic-full`, the unweighted 3-epoch SFT student of the README).
#
# Every seed starts from that one SFT student (a copy of its folder: its training and its evaluation
# are reused, the evaluation cache re-keyed to the copy's path). The seed sets the replay's sampling
# and the one-pass methods' LoRA batch order. Replayed: each train chain's final call only
# (`--replay-steps final`): the SFT student makes every intermediate call the teacher's and errs only
# in the answer. Methods: `sft-chosen` (the matched-compute control) and `sft-dpo`; `sft-rpo` was
# left out to fit the session (the BFCL seeds have it).
#
# Measured 2026-11-26 with the three seeds run side by side, each `OMP_NUM_THREADS=1` (seen in this run's
# replay progress, not benchmarked: two one-thread processes replayed ~24 contexts a minute each where
# one two-thread process alone did ~40, and a two-thread process beside another nearly stalled), so
# the stage times in the reports are shared ones:
#   for s in 0 1 2; do OMP_NUM_THREADS=1 docs/results/logic/prontoqa-preference/run.sh $s & done; wait
set -euo pipefail
for seed in "$@"; do
  out=runs/logic-pref-s$seed
  if [ ! -d "$out" ]; then
    cp -r runs/logic-full "$out"
    sed -i "s#runs/logic-full/#$out/#g" "$out"/eval/results/*.key.json
  fi
  fcagent distill --task logic:prontoqa --preset full --test-problems 100 --replay-steps final --seed "$seed" \
    --method sft --method sft-chosen --method sft-dpo --out "$out"
done
