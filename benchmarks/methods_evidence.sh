#!/usr/bin/env bash
# The evidence of the methods issue (docs/methods.md), run alone on the machine:
#   1. every method on Financial PhraseBank and on BANKING77, same data, split, seed and epochs;
#   2. robustness: full fine-tuning plain, with FGM, with PGD and with EDA augmentation, each
#      scored on its validation split clean and perturbed (typos, casing, word drops).
# Usage: benchmarks/methods_evidence.sh [OUT]   (default runs/evidence; ~1.8 h on 2 CPU cores)
# Touch OUT/pause to hold the script between steps (e.g. to run tests without skewing timings).
set -euo pipefail
OUT=${1:-runs/evidence}
LF=${LMFORGE:-.venv/bin/lmforge}
mkdir -p "$OUT"
step() { while [ -e "$OUT/pause" ]; do sleep 10; done; echo "== $(date -u +%T) $*" >&2; }
# Learning rates per method: adapter methods start from (near) identity and want larger steps.
# Picked on Financial PhraseBank's validation split by a short sweep of LoRA (5e-4 vs 2e-3; see
# docs/methods.md); the others scaled from the methods' papers. Full fine-tuning keeps the config's rate.
RATES=(--lr lora=2e-3 --lr dora=2e-3 --lr adalora=3e-3 --lr ia3=5e-3 --lr prompt=3e-2 --lr adapter=2e-3)
METHODS=full,freeze,lora,dora,adalora,ia3,prompt,adapter

step "compare on Financial PhraseBank"
[ -e "$OUT/fpb-compare/compare.json" ] || \
  "$LF" compare examples/financial_phrasebank.yaml --methods "$METHODS" "${RATES[@]}" --output "$OUT/fpb-compare"

FPB=examples/financial_phrasebank.yaml
train() { local name=$1; shift; step "train $name"
  [ -e "$OUT/robust/$name/metrics.json" ] || "$LF" train "$FPB" --output "$OUT/robust/$name" "$@"; }
train fgm --set regularization.adversarial=fgm
train pgd --set regularization.adversarial=pgd
train augment --set "augment.operations=[swap,delete,insert,synonym]"
# A smaller radius: MiniLM's token embeddings have norm ~1, so epsilon 1.0 per sentence is strong.
train fgm-eps0.2 --set regularization.adversarial=fgm --set regularization.adversarial_epsilon=0.2
train pgd-eps0.2 --set regularization.adversarial=pgd --set regularization.adversarial_epsilon=0.2 \
  --set regularization.adversarial_alpha=0.06
for run in "$OUT/fpb-compare/full" "$OUT"/robust/*; do
  for rate in 0.1 0.2; do
    step "perturbed eval of $run at $rate"
    "$LF" eval "$run" --split validation --perturb typos,casing,word_drop --perturb-rate "$rate" \
      --json "$run/robustness-$rate.json" > /dev/null
  done
done

step "compare on BANKING77"
[ -e "$OUT/banking77-compare/compare.json" ] || \
  "$LF" compare examples/banking77.yaml --methods "$METHODS" "${RATES[@]}" --output "$OUT/banking77-compare"
step "done"
