#!/usr/bin/env bash
# Set up (or reuse) the environment and run the whole pipeline on its offline default:
# configs/demo.yaml over the bundled samples, with a smoke teacher (tiny, random weights,
# WordPiece trained on corpora/*/sample.txt) that this script builds first. No network needed.
# Outputs under out/demo/; a re-run skips what is done (remove out/demo to start over).
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"
export HF_HUB_OFFLINE=1
if [ ! -f out/demo/teacher/model.safetensors ]; then
  polyglot-distil smoke-model --family bert --texts corpora/{en,fr,de,es,sw}/sample.txt \
    --vocab-size 2000 --out out/demo/teacher
fi
polyglot-distil run configs/demo.yaml "$@"
echo
echo "SMOKE RUN: the teacher has random weights and the data are tiny; these numbers only show"
echo "that every stage runs and connects. Real runs: configs/mbert-en-sw-bistil.yaml (README)."
